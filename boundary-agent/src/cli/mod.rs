//! Subcommands of the `boundary` binary: one module each.

mod agent;
mod check;
mod inspect;
mod run;
mod validate;

use clap::{Parser, Subcommand};

/// Exit code of `run` for bad arguments (see `boundary_agent::session::EXIT_BOUNDARY_FAILED`).
const EXIT_USAGE: i32 = boundary_agent::session::EXIT_BOUNDARY_FAILED;

const ABOUT: &str = "Kernel-enforced egress allowlist for AI agents and everything they spawn";

const LONG_ABOUT: &str = "\
Boundary runs a command in a fresh cgroup v2 with eBPF programs attached. The command and \
every process it starts can reach only the destinations the policy (config.yaml) allows; \
everything else fails with EPERM inside the program, and every decision is written as a JSON \
audit event. The command runs unprivileged (no_new_privs, no capabilities, a Landlock domain).

In a workspace, root starts `boundary agent` once; users then run `boundary run -- CMD` with \
no privileges. Without an agent, root can run single-shot sessions with --config.";

const EXAMPLES: &str = "\
Examples:
  sudo boundary agent --config /etc/boundary/config.yaml     # once, at workspace start
  boundary run -- claude                                     # any user, through the agent
  boundary status; boundary sessions; boundary events --follow --action deny
  boundary validate config.yaml
  boundary check --config config.yaml api.github.com:443
  sudo boundary run --config config.yaml --events - -- curl https://api.github.com/";

#[derive(Parser)]
#[command(name = "boundary", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::Args),
    Agent(agent::Args),
    Status(inspect::StatusArgs),
    Sessions(inspect::SessionsArgs),
    Events(inspect::EventsArgs),
    Check(check::Args),
    Validate(validate::Args),
}

pub fn main() -> i32 {
    // Bad arguments to `run` are boundary failing before the command could start: 125, like
    // every other such failure, so that a wrapper can tell them from the command's own codes.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match (e.use_stderr(), std::env::args().nth(1).as_deref()) {
                (false, _) => 0,
                // `run` stands in front of a command: its own failures are 125.
                (true, Some("run")) => EXIT_USAGE,
                // `check` documents 0/1 for the answer and 2 for an error.
                (true, _) => 2,
            };
        }
    };
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Agent(args) => agent::main(args),
        Command::Status(args) => inspect::status(args),
        Command::Sessions(args) => inspect::sessions(args),
        Command::Events(args) => inspect::events(args),
        Command::Check(args) => check::main(args),
        Command::Validate(args) => validate::main(args),
    }
}

/// Logs go to stderr (stdout may carry events); `BOUNDARY_LOG` overrides the config's level.
fn init_logging(level: &str) {
    let filter = std::env::var("BOUNDARY_LOG").unwrap_or_else(|_| level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

/// `--dns-server IP[:PORT]` (port 53 when omitted).
fn parse_dns_server(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(addr);
    }
    text.trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{text}` is not an IP address or IP:PORT"))
}
