//! Developer tasks: `cargo xtask setup | demo | test | bench | dist`.
//!
//! Every task installs what it needs first, idempotently, so that the README's two commands work
//! on a fresh machine (`cargo xtask demo`, `cargo xtask test`) and are cheap on a prepared one.
//! Nothing assumes `./target`: built files are found where cargo put them (`CARGO_TARGET_DIR`,
//! `build.target-dir`), as `cargo metadata` reports.

mod bench;
mod demo;
mod dist;
mod install_test;
mod readme;
mod setup;
mod shell;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test, demo, benchmark and package Boundary and Bridge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and packages the project needs (idempotent).
    ///
    /// The pinned nightly (boundary-ebpf/rust-toolchain.toml) with rust-src, bpf-linker built
    /// against that nightly's own LLVM (rebuilt when the pin moves), Debian packages (curl,
    /// iproute2, PostgreSQL for the store tests) and the Python venv with the official
    /// `anthropic` and `openai` SDKs used by Bridge's end-to-end tests. See docs/TOOLCHAIN.md.
    Setup {
        /// Also install what only the tests need (PostgreSQL, Chromium for the audit page, the
        /// Python SDK venv with playwright).
        #[arg(long)]
        for_tests: bool,
    },
    /// Show Boundary allowing and denying real connections on loopback, with the audit events.
    Demo,
    /// Run every check and test: fmt, clippy, unit, kernel end-to-end, Bridge SDK end-to-end,
    /// and the packages' install test.
    Test {
        /// Skip `cargo fmt --check` and clippy (quicker local iterations).
        #[arg(long)]
        no_lint: bool,
        /// Skip building the Debian packages and their install test (a release build).
        #[arg(long)]
        no_dist: bool,
    },
    /// Run the README's marked snippets against freshly built binaries (part of `test`).
    Readme,
    /// Run a benchmark and print its markdown table (figures go into BENCHMARKS.md).
    Bench {
        #[arg(value_enum)]
        target: bench::Target,
        /// bridge only: also run LiteLLM's proxy (PyPI `litellm[proxy]`, pinned, in its own
        /// venv under <target dir>/peers/) against the same fake upstream and load, on loopback
        /// only, with its telemetry and cost-map fetch off.
        #[arg(long)]
        peers: bool,
    },
    /// Build release binaries without debug info and the Debian packages `boundary` and
    /// `llm-bridge` into <target dir>/dist/.
    Dist {
        /// Then install both in a private copy of this machine (overlay root, private network)
        /// and start both services from the installed files (root needed).
        #[arg(long)]
        install_test: bool,
    },
    /// The install test's half that runs inside its namespaces (started by `dist`).
    #[command(hide = true)]
    InstallTestInside {
        #[arg(long)]
        release_dir: PathBuf,
        packages: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup { for_tests } => setup::run(setup::Scope::from_flag(for_tests)),
        Command::Demo => demo::run(),
        Command::Test { no_lint, no_dist } => test(no_lint, no_dist),
        Command::Readme => {
            shell::cargo(&["build", "-p", "boundary-agent", "-p", "bridge", "--bins"])?;
            readme::run(&shell::target_dir()?.join("debug"))
        }
        Command::Bench { target, peers } => bench::run(target, peers),
        Command::Dist { install_test } => {
            let dist = dist::run()?;
            if install_test {
                install_test::run(&dist)?;
            }
            Ok(())
        }
        Command::InstallTestInside {
            release_dir,
            packages,
        } => install_test::inside(&release_dir, &packages),
    }
}

fn test(no_lint: bool, no_dist: bool) -> Result<()> {
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
    let target = shell::target_dir()?.join("debug");
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
    if !no_dist {
        let dist = dist::run()?;
        install_test::run(&dist)?;
    }
    eprintln!("\nall tests passed");
    Ok(())
}
