//! The `sessiond` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sessiond::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sessiond-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessiond: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(sessiond::cli::run(cli))
}
