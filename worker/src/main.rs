//! fleming-worker: the process that links libtorch (see model/README.md).

fn main() -> anyhow::Result<()> {
    Ok(())
}
