//! The `llm-bridge` binary (the crate is `bridge`; the binary name avoids iproute2's `bridge`): the gateway (`llm-bridge serve`) and its administration commands.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Everything Bridge writes (store, spool, journal) holds prompts: owner-only by default,
    // also for files a library creates behind our back (SQLite's temporary files).
    #[cfg(unix)]
    // SAFETY: umask(2) only sets this process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
