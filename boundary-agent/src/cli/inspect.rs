//! `boundary status`, `boundary sessions`, `boundary events`: what the agent is doing, for
//! the person at the workspace (their own sessions) and for root (all of them).

use std::io::Write;
use std::path::PathBuf;

use boundary_agent::client;
use boundary_agent::protocol::{self, Request};
use serde_json::Value;

/// Show the agent: version, policies in force, sessions, events lost.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, env = "BOUNDARY_SOCKET", value_name = "PATH", default_value = protocol::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

/// List running sessions (yours; all of them for root).
#[derive(clap::Args)]
pub struct SessionsArgs {
    #[arg(long, env = "BOUNDARY_SOCKET", value_name = "PATH", default_value = protocol::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

/// Show recent events across sessions (yours; all for root), and with --follow the new ones.
#[derive(clap::Args)]
pub struct EventsArgs {
    #[arg(long, env = "BOUNDARY_SOCKET", value_name = "PATH", default_value = protocol::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// Only events with this action.
    #[arg(long, value_parser = ["allow", "deny", "would_deny"])]
    action: Option<String>,
    /// Only this session's events.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Print each event as its JSON line instead of a one-line summary.
    #[arg(long)]
    json: bool,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn status(args: StatusArgs) -> i32 {
    match runtime().block_on(client::ask(&args.socket, &Request::Status)) {
        Ok(v) if args.json => {
            println!("{v}");
            0
        }
        Ok(v) => {
            let a = &v["agent"];
            println!(
                "agent      running (pid {}, version {}, up {}s, socket {})",
                a["pid"],
                a["version"].as_str().unwrap_or(""),
                a["uptime_s"],
                a["socket"].as_str().unwrap_or("")
            );
            for p in v["policies"].as_array().into_iter().flatten() {
                match p.get("error") {
                    None => println!(
                        "policy     {:<10} {} ({} rules, {}, {}, modified {})",
                        p["name"].as_str().unwrap_or(""),
                        p["policy.name"].as_str().unwrap_or(""),
                        p["rules"],
                        p["mode"].as_str().unwrap_or(""),
                        p["source"].as_str().unwrap_or(""),
                        p["modified"].as_str().unwrap_or("?"),
                    ),
                    Some(e) => println!(
                        "policy     {:<10} INVALID on disk (sessions keep the last good one): {}",
                        p["name"].as_str().unwrap_or(""),
                        e.as_str().unwrap_or("")
                    ),
                }
            }
            println!(
                "sessions   {} running ({} yours)",
                v["sessions"]["running"], v["sessions"]["yours"]
            );
            println!(
                "events     lost so far: {} deny, {} allow; {} of no running session",
                v["events_lost"]["deny"], v["events_lost"]["allow"], v["events_unrouted"]
            );
            let cp = &v["control_plane"];
            if cp.is_object() {
                let version = match cp["policy_version"].as_u64() {
                    Some(n) => format!(
                        "template {} version {n} ({})",
                        cp["template"].as_str().unwrap_or("?"),
                        cp["mode"].as_str().unwrap_or("its own mode")
                    ),
                    None => "no version received yet: enforcing --config".into(),
                };
                println!(
                    "control    {}: {version}; events spooled {}, delivered {}, lost {}",
                    cp["url"].as_str().unwrap_or(""),
                    cp["events_spooled"],
                    cp["events_delivered"],
                    cp["events_lost"]
                );
            }
            println!("landlock   ABI {}", v["landlock_abi"]);
            0
        }
        Err(e) => client::failed(&e),
    }
}

pub fn sessions(args: SessionsArgs) -> i32 {
    match runtime().block_on(client::ask(&args.socket, &Request::Sessions)) {
        Ok(v) if args.json => {
            println!("{v}");
            0
        }
        Ok(v) => {
            let list = v["sessions"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<38} {:<10} {:<10} {:>5} {:<20} COMMAND",
                "SESSION", "POLICY", "USER", "PROCS", "STARTED"
            );
            for s in &list {
                println!(
                    "{:<38} {:<10} {:<10} {:>5} {:<20} {}",
                    s["session.id"].as_str().unwrap_or(""),
                    s["policy"].as_str().unwrap_or(""),
                    s["user.name"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| s["user.id"].to_string()),
                    s["processes"],
                    s["started"].as_str().unwrap_or("").get(..19).unwrap_or(""),
                    sanitize(s["command"].as_str().unwrap_or("")),
                );
            }
            0
        }
        Err(e) => client::failed(&e),
    }
}

pub fn events(args: EventsArgs) -> i32 {
    let json = args.json;
    let mut stdout = std::io::stdout();
    let print = |v: &Value| {
        let line = if json {
            v.to_string()
        } else {
            sanitize(&client::summarize(v))
        };
        // A closed pipe (`| head`) ends the command quietly.
        writeln!(stdout, "{line}")
            .and_then(|_| stdout.flush())
            .is_ok()
    };
    match runtime().block_on(client::events(
        &args.socket,
        args.follow,
        args.action,
        args.session,
        print,
    )) {
        Ok(()) => 0,
        Err(e) => client::failed(&e),
    }
}

/// Command lines and names come from confined programs: never let them drive the terminal.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
