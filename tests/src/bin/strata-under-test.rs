//! The `strata` command, built inside this package so that end-to-end tests can start it as a
//! child process (`CARGO_BIN_EXE_strata-under-test`). It runs exactly `strata`'s own entry point.

fn main() -> std::process::ExitCode {
    strata::cli::main()
}
