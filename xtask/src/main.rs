//! Developer tasks: `cargo xtask setup | demo | test | bench`.
//!
//! Every task installs what it needs first, idempotently, so that the README's two commands work
//! on a fresh machine (`cargo xtask demo`, `cargo xtask test`) and are cheap on a prepared one.

mod bench;
mod demo;
mod readme;
mod setup;
mod shell;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test, demo and benchmark Boundary and Bridge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and packages the project needs (idempotent).
    ///
    /// rust-src for the nightly, bpf-linker built against the nightly's own LLVM, Debian
    /// packages (curl, iproute2, PostgreSQL for the store tests) and the Python venv with the
    /// official `anthropic` and `openai` SDKs used by Bridge's end-to-end tests.
    Setup {
        /// Also install what only the tests need (PostgreSQL, the Python SDK venv).
        #[arg(long)]
        for_tests: bool,
    },
    /// Show Boundary allowing and denying real connections on loopback, with the audit events.
    Demo,
    /// Run every check and test: fmt, clippy, unit, kernel end-to-end, Bridge SDK end-to-end.
    Test {
        /// Skip `cargo fmt --check` and clippy (quicker local iterations).
        #[arg(long)]
        no_lint: bool,
    },
    /// Run the README's marked snippets against freshly built binaries (part of `test`).
    Readme,
    /// Run a benchmark and print its markdown table (figures go into BENCHMARKS.md).
    Bench {
        #[arg(value_enum)]
        target: bench::Target,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup { for_tests } => setup::run(setup::Scope::from_flag(for_tests)),
        Command::Demo => demo::run(),
        Command::Test { no_lint } => test(no_lint),
        Command::Readme => {
            shell::cargo(&["build", "-p", "boundary-agent", "-p", "bridge", "--bins"])?;
            readme::run(&shell::workspace_root().join("target/debug"))
        }
        Command::Bench { target } => bench::run(target),
    }
}

fn test(no_lint: bool) -> Result<()> {
    setup::run(setup::Scope::Tests)?;
    let root = shell::workspace_root();
    if !no_lint {
        shell::step("cargo fmt --check")?;
        shell::cargo(&["fmt", "--all", "--check"])?;
        shell::step("cargo clippy")?;
        shell::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    shell::step("cargo test (unit and kernel end-to-end; needs root)")?;
    shell::cargo(&["test", "--workspace", "--no-fail-fast"])?;
    shell::step("Bridge end-to-end with the official Python SDKs")?;
    shell::cargo(&["build", "-p", "bridge", "--bins"])?;
    let target = root.join("target/debug");
    let python = root.join(".venv/bin/python");
    shell::run(
        std::process::Command::new(python)
            .args(["-m", "pytest", "-q", "bridge/tests/sdk"])
            .current_dir(&root)
            .env("BRIDGE_BIN", target.join("llm-bridge"))
            .env("FAKE_UPSTREAM_BIN", target.join("fake-upstream")),
    )?;
    shell::step("the README's snippets")?;
    readme::run(&target)?;
    eprintln!("\nall tests passed");
    Ok(())
}
