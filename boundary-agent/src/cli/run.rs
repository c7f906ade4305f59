//! `boundary run`: run a command under the policy.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use boundary_agent::error::Error;
use boundary_agent::policy::Mode;
use boundary_agent::session::{self, RunOptions, EXIT_BOUNDARY_FAILED};

/// Run COMMAND (and everything it starts) in a new cgroup where only the destinations
/// allowed by CONFIG can be reached. Needs root.
///
/// Exit status: the command's own, or 128+N if signal N killed it; 125 if boundary itself
/// failed (bad config, missing privileges, kernel refused the programs) and the command was
/// not started; 126/127 if the command cannot be executed / is not found. SIGTERM, SIGINT,
/// SIGHUP, SIGQUIT, SIGUSR1/2 and SIGWINCH are forwarded to the command. When the command
/// exits, whatever it left running in its cgroup is killed and the cgroup removed.
///
/// Edits of CONFIG are picked up within a second; an invalid edit is reported and the last
/// good policy stays in force. The command sees BOUNDARY_SESSION_ID and BOUNDARY_POLICY in
/// its environment (pass the session id on to Bridge to correlate).
#[derive(clap::Args)]
pub struct Args {
    /// The policy (config.yaml).
    #[arg(short, long, env = "BOUNDARY_CONFIG", value_name = "CONFIG")]
    config: PathBuf,

    /// Also write the audit events (JSON lines) here: `-` for stdout, or a file to append to.
    /// (They always go to `log_dir` when the config sets one.)
    #[arg(long, value_name = "-|FILE")]
    events: Option<PathBuf>,

    /// Override the config's mode: `audit` lets everything through and reports what enforce
    /// mode would deny as `would_deny`.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,

    /// Resolve names through this nameserver (IP or IP:PORT) instead of the config's
    /// `dns.nameservers` or /etc/resolv.conf.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_dns_server)]
    dns_server: Option<SocketAddr>,

    /// Read this hosts file instead of the config's `dns.hosts_file` or /etc/hosts.
    #[arg(long, value_name = "FILE")]
    hosts_file: Option<PathBuf>,

    /// Session id for the events and the cgroup name (default: a random UUID).
    #[arg(long, value_name = "ID")]
    session_id: Option<String>,

    /// Report denied connections only, not allowed ones.
    #[arg(long)]
    deny_events_only: bool,

    /// The cgroup v2 mount to create the session under (default: found in /proc/self/mountinfo).
    #[arg(long, value_name = "DIR", hide_short_help = true)]
    cgroup_root: Option<PathBuf>,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Enforce,
    Audit,
}

fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{text}` is not an IP address or IP:PORT"))
}

pub fn main(args: Args) -> i32 {
    // The config's log_level applies once it is read; until then, warnings only.
    let level = boundary_agent::config::load(&args.config)
        .map(|p| p.log_level)
        .unwrap_or_else(|_| "warn".into());
    super::init_logging(&level);
    let opts = RunOptions {
        config: args.config,
        command: args.command,
        events: args.events,
        hosts_file: args.hosts_file,
        dns_server: args.dns_server,
        session_id: args.session_id,
        cgroup_root: args.cgroup_root,
        mode: args.mode.map(|m| match m {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Audit => Mode::Audit,
        }),
        deny_events_only: args.deny_events_only,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boundary: starting the runtime: {e}");
            return EXIT_BOUNDARY_FAILED;
        }
    };
    match runtime.block_on(session::run(opts)) {
        Ok(code) => code,
        Err(Error::Config(e)) => {
            eprintln!("{e}");
            eprintln!("boundary: invalid config; the command was not started");
            EXIT_BOUNDARY_FAILED
        }
        Err(e) => {
            eprintln!("boundary: {e}");
            EXIT_BOUNDARY_FAILED
        }
    }
}
