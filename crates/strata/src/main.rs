//! The `strata` binary; see the `strata` library for what it does.

fn main() -> std::process::ExitCode {
    strata::cli::main()
}
