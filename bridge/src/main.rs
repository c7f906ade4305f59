//! The `llm-bridge` binary (the crate is `bridge`; the binary name avoids iproute2's `bridge`): the gateway (`llm-bridge serve`) and its administration commands.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
