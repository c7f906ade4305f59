//! `cargo xtask bench boundary|bridge`: runs a benchmark in release mode and prints its table.

use crate::setup::{self, Scope};
use crate::shell::{self, step};
use anyhow::Result;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Target {
    /// connect() cost outside/inside a boundary, 1 vs 10,000 rules, egress throughput, agent
    /// RSS; wall time of a wrapped command through the agent and single-shot; DNS proxy
    /// latency and queries/s against the same upstream asked directly.
    Boundary,
    /// Latency added by Bridge, throughput ratio, RSS with 1,000 open streams.
    Bridge,
}

pub fn run(target: Target) -> Result<()> {
    setup::run(Scope::Demo)?;
    match target {
        Target::Boundary => {
            step("cargo bench -p boundary-agent --bench connect")?;
            shell::cargo(&["bench", "-p", "boundary-agent", "--bench", "connect"])?;
            step("cargo bench -p boundary-agent --bench startup")?;
            shell::cargo(&["bench", "-p", "boundary-agent", "--bench", "startup"])?;
            step("cargo bench -p boundary-agent --bench dns")?;
            shell::cargo(&["bench", "-p", "boundary-agent", "--bench", "dns"])
        }
        Target::Bridge => {
            step("cargo bench -p bridge --bench gateway")?;
            shell::cargo(&["bench", "-p", "bridge", "--bench", "gateway"])
        }
    }
}
