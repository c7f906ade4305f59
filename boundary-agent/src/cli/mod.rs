//! Subcommands of the `boundary` binary: one module each.

mod check;
mod run;
mod validate;

use clap::{Parser, Subcommand};

const ABOUT: &str = "Kernel-enforced egress allowlist for AI agents and everything they spawn";

const LONG_ABOUT: &str = "\
Boundary runs a command in a fresh cgroup v2 with eBPF programs attached (connect4/6, \
sendmsg4/6, sock_create). The command and every process it starts can reach only the \
destinations config.yaml allows; everything else fails with EPERM inside the program, and \
every decision is written as a JSON audit event.";

const EXAMPLES: &str = "\
Examples:
  boundary validate config.yaml
  boundary check --config config.yaml api.github.com:443
  sudo boundary run --config config.yaml --events - -- curl https://api.github.com/
  sudo boundary run --config config.yaml -- claude";

#[derive(Parser)]
#[command(name = "boundary", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::Args),
    Check(check::Args),
    Validate(validate::Args),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Check(args) => check::main(args),
        Command::Validate(args) => validate::main(args),
    }
}

/// Logs go to stderr (stdout may carry events); `BOUNDARY_LOG` overrides the config's level.
fn init_logging(level: &str) {
    let filter = std::env::var("BOUNDARY_LOG").unwrap_or_else(|_| level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}
