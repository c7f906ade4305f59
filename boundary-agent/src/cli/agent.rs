//! `boundary agent`: the daemon a workspace image starts once, as root.

use std::net::SocketAddr;
use std::path::PathBuf;

use boundary_agent::daemon::{self, AgentOptions};
use boundary_agent::protocol;
use boundary_agent::session::EXIT_BOUNDARY_FAILED;

/// Run the Boundary agent: the root daemon that lets unprivileged users wrap commands.
///
/// Start it once at workspace start (systemd unit or container entrypoint, see packaging/).
/// It checks its policy files (root's, writable by nobody else, valid), listens on a Unix
/// socket, and runs a session for each `boundary run -- CMD` of any user: the policy is the
/// agent's choice, the caller is identified by the kernel, and the command is moved into its
/// session's cgroup before it executes. Stopping the agent leaves running sessions confined.
#[derive(clap::Args)]
pub struct Args {
    /// The default policy every session gets.
    #[arg(short, long, env = "BOUNDARY_CONFIG", value_name = "CONFIG")]
    config: PathBuf,

    /// Also offer this policy under NAME (`boundary run --policy NAME`). Repeatable.
    #[arg(long = "policy", value_name = "NAME=FILE", value_parser = parse_named)]
    policies: Vec<(String, PathBuf)>,

    /// Where to listen.
    #[arg(long, env = "BOUNDARY_SOCKET", value_name = "PATH", default_value = protocol::DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Also write every session's events (JSON lines) here: `-` for stdout, or a file.
    #[arg(long, value_name = "-|FILE")]
    events: Option<PathBuf>,

    /// Resolve names through this nameserver instead of the policy's or /etc/resolv.conf.
    #[arg(long, value_name = "IP[:PORT]", value_parser = super::parse_dns_server)]
    dns_server: Option<SocketAddr>,

    /// Read this hosts file instead of the policy's or /etc/hosts.
    #[arg(long, value_name = "FILE")]
    hosts_file: Option<PathBuf>,

    /// The cgroup v2 mount to create sessions under (default: from /proc/self/mountinfo).
    #[arg(long, value_name = "DIR", hide_short_help = true)]
    cgroup_root: Option<PathBuf>,

    /// Whole-workspace mode: confine this existing cgroup v2 directory (a container's, a
    /// systemd slice) and every process in it, already running ones included. The programs
    /// stay attached for good; a restarted agent adopts them.
    #[arg(long, value_name = "DIR")]
    confine_cgroup: Option<PathBuf>,

    /// With --confine-cgroup: leave this cgroup (inside the confined one) unconfined, for the
    /// workspace's own control processes. Repeatable. The agent exempts itself.
    #[arg(long, value_name = "DIR", requires = "confine_cgroup")]
    exempt_cgroup: Vec<PathBuf>,

    /// Log level (error, warn, info, debug); BOUNDARY_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn parse_named(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected NAME=FILE"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{name}`: a policy name is letters, digits, '-' or '_'"
        ));
    }
    if name == "default" {
        return Err("`default` names the --config policy".into());
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

pub fn main(args: Args) -> i32 {
    super::init_logging(&args.log_level);
    let opts = AgentOptions {
        config: args.config,
        policies: args.policies,
        socket: args.socket,
        events: args.events,
        dns_server: args.dns_server,
        hosts_file: args.hosts_file,
        cgroup_root: args.cgroup_root,
        confine: args.confine_cgroup,
        exempt: args.exempt_cgroup,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boundary agent: starting the runtime: {e}");
            return EXIT_BOUNDARY_FAILED;
        }
    };
    match runtime.block_on(daemon::serve(opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("boundary agent: {e}");
            EXIT_BOUNDARY_FAILED
        }
    }
}
