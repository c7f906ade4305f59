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

    /// Take the default policy from this control plane (`llm-bridge serve`, e.g.
    /// https://bridge.corp:8787) and ship every event to it. The agent long-polls its
    /// template's policy, keeps the last good one in --state-dir (enforced at start when the
    /// control plane is unreachable; --config until a first version arrives), applies each
    /// new version to new and running sessions within seconds, sends events through an
    /// on-disk spool (nothing lost across outages and restarts), and gives each session a
    /// credential for Bridge (BOUNDARY_SESSION_TOKEN, ANTHROPIC_CUSTOM_HEADERS).
    #[arg(long, value_name = "URL", requires = "token_file")]
    control_plane: Option<String>,

    /// The agent token (`llm-bridge agents create`), in a file only root can read and change.
    #[arg(long, value_name = "FILE", requires = "control_plane")]
    token_file: Option<PathBuf>,

    /// Also trust these CA certificates (PEM) for the control plane's TLS.
    #[arg(long, value_name = "PEM", requires = "control_plane")]
    ca_file: Option<PathBuf>,

    /// Where the agent keeps its last good policy (policy/) and its event spool (spool/).
    #[arg(long, value_name = "DIR", default_value = boundary_agent::control::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// The most the event spool may take on disk (e.g. 256MiB, 1GiB); when full, the oldest
    /// events are dropped and counted in a boundary.events_lost event.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_spool_max)]
    spool_max: u64,

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

fn parse_spool_max(text: &str) -> Result<u64, String> {
    match boundary_agent::policy::parse::parse_size(text) {
        Some(n) if n >= 4 * 1024 * 1024 => Ok(n),
        Some(_) => Err("the spool needs at least 4MiB".into()),
        None => Err(format!("`{text}`: expected a size such as 256MiB or 1GiB")),
    }
}

pub fn main(args: Args) -> i32 {
    super::init_logging(&args.log_level);
    let control = match (args.control_plane, args.token_file) {
        (Some(url), Some(token_file)) => Some(boundary_agent::control::ControlOptions {
            url,
            token_file,
            ca_file: args.ca_file,
            state_dir: args.state_dir,
            spool_max: args.spool_max,
        }),
        _ => None,
    };
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
        control,
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
