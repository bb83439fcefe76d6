//! The `fleming` command. Everything lives in the library (`fleming::cli`).

/// mimalloc: the operators allocate many small strings (titles, names, ids), and glibc's
/// malloc took a third of the time of some benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(fleming::cli::main());
}
