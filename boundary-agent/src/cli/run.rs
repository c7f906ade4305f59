//! `boundary run`: run a command under the policy.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use boundary_agent::client::{self, ClientRun};
use boundary_agent::confine::RunAs;
use boundary_agent::error::Error;
use boundary_agent::policy::Mode;
use boundary_agent::protocol;
use boundary_agent::session::{self, RunOptions, SessionSpec, EXIT_BOUNDARY_FAILED};

/// Run COMMAND (and everything it starts) in a new cgroup where only the destinations the
/// policy allows can be reached.
///
/// Two modes. Through the agent daemon (the normal case in a workspace; no privileges
/// needed): `boundary run -- claude`; the agent chooses the policy (its default, or one the
/// admin named, picked with --policy). Single-shot (root, no daemon): `sudo boundary run
/// --config config.yaml -- CMD` loads the programs itself.
///
/// The command never holds privileges: it runs as the calling user (`sudo` drops to
/// SUDO_UID/SUDO_GID; root callers may name --user), with no_new_privs, no capabilities and a
/// Landlock domain that keeps it from ptracing or signalling processes outside its session.
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
    /// Single-shot mode (root): the policy file to load. Without it, the agent daemon runs
    /// the session with the policy it chooses.
    #[arg(short, long, env = "BOUNDARY_CONFIG", value_name = "CONFIG")]
    config: Option<PathBuf>,

    /// Through the agent: one of the policies the admin named (`boundary agent --policy
    /// NAME=FILE`) instead of the default.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    policy: Option<String>,

    /// The agent's socket.
    #[arg(long, env = "BOUNDARY_SOCKET", value_name = "PATH", default_value = protocol::DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Root callers: run the command as this user (name or uid). Default: the user who
    /// invoked sudo (SUDO_UID).
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// Run the command as root. Root keeps its capabilities and could detach its own
    /// programs: this is NOT a security boundary, only an egress policy for trusted tools.
    #[arg(long, conflicts_with = "user")]
    root: bool,

    /// Also write the audit events (JSON lines) here: `-` for stdout, or a file to append to,
    /// rotated and capped as the config's `log_max_file_size` and `log_max_files` say.
    /// (They always go to `log_dir` when the config sets one.)
    #[arg(long, value_name = "-|FILE")]
    events: Option<PathBuf>,

    /// Override the config's mode: `audit` lets everything through and reports what enforce
    /// mode would deny as `would_deny`.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,

    /// Resolve names through this nameserver (IP or IP:PORT) instead of the config's
    /// `dns.nameservers` or /etc/resolv.conf: boundary's own lookups and the upstream of the
    /// session's DNS proxy (the command's queries, to whatever nameserver, go to the proxy).
    #[arg(long, value_name = "IP[:PORT]", value_parser = super::parse_dns_server)]
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

pub fn main(args: Args) -> i32 {
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
    let Some(config) = args.config.clone() else {
        return through_agent(args, &runtime);
    };
    // The config's log_level applies once it is read; until then, warnings only.
    let level = boundary_agent::policy::load(&config)
        .map(|p| p.log_level)
        .unwrap_or_else(|_| "warn".into());
    super::init_logging(&level);
    let run_as = match RunAs::decide(args.user.as_deref(), args.root) {
        Ok(r) => r,
        Err(e) => return client::failed(&e),
    };
    let opts = RunOptions {
        session: SessionSpec {
            config,
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
            ..SessionSpec::default()
        },
        command: args.command,
        run_as: Some(run_as),
    };
    match runtime.block_on(session::run(opts)) {
        Ok(code) => code,
        Err(Error::Config(e)) => {
            eprintln!("{e}");
            eprintln!("boundary: invalid config; the command was not started");
            EXIT_BOUNDARY_FAILED
        }
        Err(e) => client::failed(&e),
    }
}

/// No --config: the agent daemon runs the session.
fn through_agent(args: Args, runtime: &tokio::runtime::Runtime) -> i32 {
    super::init_logging("warn");
    let refuse = |what: &str| {
        eprintln!(
            "boundary: {what} applies to single-shot mode (--config); through the agent, the \
             agent's policy and settings apply. The command was not started"
        );
        EXIT_BOUNDARY_FAILED
    };
    if args.mode.is_some() {
        return refuse("--mode");
    }
    if args.dns_server.is_some() || args.hosts_file.is_some() || args.cgroup_root.is_some() {
        return refuse("--dns-server/--hosts-file/--cgroup-root");
    }
    if args.user.is_some() || args.root {
        return refuse("--user/--root");
    }
    let events_to_stdout = match args.events.as_deref() {
        None => false,
        Some(p) if p == std::path::Path::new("-") => true,
        Some(_) => {
            eprintln!(
                "boundary: through the agent, --events takes only `-` (the agent writes the \
                 files; read them with `boundary events`). The command was not started"
            );
            return EXIT_BOUNDARY_FAILED;
        }
    };
    if !client::agent_listening(&args.socket) && nix::unistd::geteuid().is_root() {
        eprintln!(
            "boundary: no agent is listening on {} and no --config was given: start the agent \
             (`boundary agent --config FILE`) or pass --config for a single-shot session",
            args.socket.display()
        );
        return EXIT_BOUNDARY_FAILED;
    }
    let opts = ClientRun {
        socket: args.socket,
        policy: args.policy,
        command: args.command,
        session_id: args.session_id,
        deny_events_only: args.deny_events_only,
        events_to_stdout,
    };
    match runtime.block_on(client::run(opts)) {
        Ok(code) => code,
        Err(e) => client::failed(&e),
    }
}
