//! `cargo xtask bench boundary|bridge`: runs a benchmark in release mode and prints its table.

use crate::setup::{self, Scope};
use crate::shell::{self, step};
use anyhow::Result;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Target {
    /// connect() cost outside/inside a boundary, 1 vs 10,000 rules, start-up time, agent RSS.
    Boundary,
    /// Latency added by Bridge, throughput ratio, RSS with 1,000 open streams.
    Bridge,
}

pub fn run(target: Target) -> Result<()> {
    setup::run(Scope::Demo)?;
    match target {
        Target::Boundary => {
            step("cargo bench -p boundary-agent --bench connect")?;
            shell::cargo(&["bench", "-p", "boundary-agent", "--bench", "connect"])
        }
        Target::Bridge => {
            step("cargo bench -p bridge --bench gateway")?;
            shell::cargo(&["bench", "-p", "bridge", "--bench", "gateway"])
        }
    }
}
