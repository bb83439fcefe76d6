//! The `fleming` command. Everything lives in the library (`fleming::cli`).

fn main() {
    std::process::exit(fleming::cli::main());
}
