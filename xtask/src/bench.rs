//! `cargo xtask bench boundary|bridge [--peers]`: runs a benchmark in release mode and prints
//! its table.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::setup::{self, Scope};
use crate::shell::{self, step};
use anyhow::{bail, Context, Result};

/// The LiteLLM release the peer comparison runs (pinned, so runs compare like with like).
/// Newer releases' `[proxy]` extra needs a `litellm-proxy` package that PyPI does not serve.
const LITELLM_VERSION: &str = "1.106.12";

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Target {
    /// connect() cost outside/inside a boundary, 1 vs 10,000 rules, egress throughput, agent
    /// RSS; wall time of a wrapped command through the agent and single-shot; DNS proxy
    /// latency and queries/s against the same upstream asked directly.
    Boundary,
    /// Latency added by Bridge, throughput ratio, RSS with 1,000 open streams.
    Bridge,
}

pub fn run(target: Target, peers: bool) -> Result<()> {
    setup::run(Scope::Demo)?;
    match target {
        Target::Boundary => {
            if peers {
                bail!("--peers compares Bridge with other gateways: use `cargo xtask bench bridge --peers`");
            }
            step("cargo bench -p boundary-agent --bench connect")?;
            shell::cargo(&["bench", "-p", "boundary-agent", "--bench", "connect"])?;
            step("cargo bench -p boundary-agent --bench startup")?;
            shell::cargo(&["bench", "-p", "boundary-agent", "--bench", "startup"])?;
            step("cargo bench -p boundary-agent --bench dns")?;
            shell::cargo(&["bench", "-p", "boundary-agent", "--bench", "dns"])
        }
        Target::Bridge => {
            step("cargo bench -p bridge --bench gateway")?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut bench = Command::new(cargo);
            bench
                .args(["bench", "-p", "bridge", "--bench", "gateway"])
                .current_dir(shell::workspace_root());
            if peers {
                // The bench takes no arguments of its own: it reads where LiteLLM is.
                bench.env(
                    "BENCH_LITELLM",
                    litellm_venv(&shell::target_dir()?.join("peers"))?,
                );
            }
            shell::run(&mut bench)
        }
    }
}

/// Makes `dir/litellm-venv` with `litellm[proxy]==LITELLM_VERSION` (once: an existing venv
/// with that version is kept) and returns its `litellm` executable.
fn litellm_venv(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("litellm-venv");
    let (python, litellm) = (venv.join("bin/python"), venv.join("bin/litellm"));
    let installed = shell::output(Command::new(&python).args([
        "-c",
        "import importlib.metadata as m; print(m.version('litellm'))",
    ]));
    if litellm.exists() && installed.as_deref().map(str::trim) == Some(LITELLM_VERSION) {
        return Ok(litellm);
    }
    step(&format!(
        "LiteLLM {LITELLM_VERSION} into {} (once)",
        venv.display()
    ))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    shell::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    shell::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("litellm[proxy]=={LITELLM_VERSION}"),
    ]))
    .context("pip could not install LiteLLM's proxy; run without --peers to skip it")?;
    Ok(litellm)
}
