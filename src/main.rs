//! The `sessiond` binary: hands the command line over to the library.

fn main() -> std::process::ExitCode {
    sessiond::cli::main()
}
