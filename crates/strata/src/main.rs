//! The `strata` binary; see the `strata` library for what it does.

/// mimalloc keeps freed memory for reuse: megabyte fetch answers do not fault fresh pages in each
/// time, as they do with the system allocator's mmap threshold.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    strata::cli::main()
}
