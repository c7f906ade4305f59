//! The client side of the agent daemon: `boundary run` for unprivileged users, and the
//! inspection commands (`status`, `sessions`, `events`).
//!
//! The command is the client's own child, so the terminal, job control, signals and the exit
//! status work as for any command; the daemon only decides the policy and moves the child into
//! the session cgroup before it execs (see [`crate::confine`]).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::BufReader;
use tokio::net::UnixStream;

use crate::confine::{Confinement, RunAs};
use crate::error::{Error, Result};
use crate::protocol::{self, Request};
use crate::session::{self, EXIT_BOUNDARY_FAILED};

/// How long the client waits for the daemon to write the session's last events.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct ClientRun {
    pub socket: PathBuf,
    pub policy: Option<String>,
    pub command: Vec<OsString>,
    pub session_id: Option<String>,
    pub deny_events_only: bool,
    /// Print the session's events (JSON lines) on stdout.
    pub events_to_stdout: bool,
}

/// Connects to the agent, or says clearly that it is not there.
pub async fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).await.map_err(|e| {
        Error::Agent(format!(
            "the boundary agent is not running (cannot connect to {}: {e}). Ask an admin to \
             start it (`boundary agent --config /etc/boundary/config.yaml`, or the \
             boundary-agent systemd unit)",
            socket.display()
        ))
    })
}

/// Whether an agent answers on `socket`.
pub fn agent_listening(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Runs the command in a session of the agent; returns the exit code to exit with.
pub async fn run(opts: ClientRun) -> Result<i32> {
    let stream = connect(&opts.socket).await?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let command: Vec<String> = opts
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    protocol::write_json(
        &mut write,
        &Request::Start {
            policy: opts.policy.clone(),
            command,
            session_id: opts.session_id.clone(),
            deny_events_only: opts.deny_events_only,
            events: opts.events_to_stdout,
        },
    )
    .await?;
    let reply: Value = protocol::read_json(&mut reader)
        .await?
        .ok_or_else(|| Error::Agent("the agent closed the connection".into()))?;
    if reply["ok"] != Value::Bool(true) {
        return Err(Error::Agent(
            reply["error"]
                .as_str()
                .unwrap_or("the agent refused the session")
                .to_string(),
        ));
    }
    let session = reply["session"].as_str().unwrap_or_default().to_string();
    let token = reply["token"].as_str().unwrap_or_default().to_string();
    let mut env: Vec<(&str, String)> = Vec::new();
    for key in [
        "BOUNDARY_SESSION_ID",
        "BOUNDARY_POLICY",
        "BOUNDARY_SESSION_TOKEN",
    ] {
        if let Some(v) = reply["env"][key].as_str() {
            env.push((key, v.to_string()));
        }
    }
    // The session's credential headers for Claude Code, after the user's own (only the
    // client knows the user's environment).
    let headers: Vec<(String, String)> = reply["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    if !headers.is_empty() {
        let user = std::env::var("ANTHROPIC_CUSTOM_HEADERS").ok();
        env.push((
            "ANTHROPIC_CUSTOM_HEADERS",
            crate::control::credential::merge_custom_headers(user.as_deref(), &headers),
        ));
    }
    let mut join = serde_json::to_vec(&Request::Join { session, token })
        .map_err(|e| Error::Agent(e.to_string()))?;
    join.push(b'\n');
    let confinement = Confinement::new(&RunAs::Caller)?.join_through_agent(&opts.socket, join)?;

    // Events streamed back by the agent, printed as they come.
    let printer = tokio::spawn(async move {
        // One write per line: the command writes to the same stdout (see raw_stdout).
        let mut stdout = crate::events::raw_stdout();
        loop {
            match protocol::read_json::<_, Value>(&mut reader).await {
                Ok(Some(v)) => {
                    if let Some(event) = v.get("event") {
                        let _ = stdout.write_all(format!("{event}\n").as_bytes());
                    } else if v.get("done").is_some() {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    });

    let signals = session::ForwardedSignals::install();
    let (code, signal) = match session::spawn(&opts.command, &env, confinement) {
        Ok(child) => {
            let pid = Pid::from_raw(child.id().map(|p| p as i32).unwrap_or(0));
            let status = session::wait_forwarding_signals(child, pid, signals).await;
            (session::exit_code(&status), status.signal())
        }
        Err((code, message)) => {
            eprintln!("boundary: {message}");
            (code, None)
        }
    };
    let _ = protocol::write_json(&mut write, &Request::Exited { code, signal }).await;
    // Printing events: wait for the session's last ones. Otherwise the agent ends the
    // session on its own (the command's exit status is already known here).
    if opts.events_to_stdout && tokio::time::timeout(FINISH_TIMEOUT, printer).await.is_err() {
        tracing::warn!("the agent did not confirm the end of the session in time");
    }
    Ok(code)
}

/// Sends one request and returns the answer (for `status` and `sessions`).
pub async fn ask(socket: &Path, request: &Request) -> Result<Value> {
    let stream = connect(socket).await?;
    let (read, mut write) = stream.into_split();
    protocol::write_json(&mut write, request).await?;
    let mut reader = BufReader::new(read);
    let reply: Value = protocol::read_json(&mut reader)
        .await?
        .ok_or_else(|| Error::Agent("the agent closed the connection".into()))?;
    if reply["ok"] != Value::Bool(true) {
        return Err(Error::Agent(
            reply["error"].as_str().unwrap_or("refused").to_string(),
        ));
    }
    Ok(reply)
}

/// Streams events (JSON lines) to `out` until the agent closes or, without `follow`, the
/// backlog is done.
pub async fn events(
    socket: &Path,
    follow: bool,
    action: Option<String>,
    session: Option<String>,
    mut out: impl FnMut(&Value) -> bool,
) -> Result<()> {
    let stream = connect(socket).await?;
    let (read, mut write) = stream.into_split();
    protocol::write_json(
        &mut write,
        &Request::Events {
            follow,
            action,
            session,
        },
    )
    .await?;
    let mut reader = BufReader::new(read);
    while let Some(v) = protocol::read_json::<_, Value>(&mut reader).await? {
        if !out(&v) {
            break;
        }
    }
    Ok(())
}

/// The exit code for a failure of the client itself: the command did not run.
pub fn failed(e: &Error) -> i32 {
    eprintln!("boundary: {e}");
    EXIT_BOUNDARY_FAILED
}

/// A one-line human summary of an event for `boundary events` without `--json`.
pub fn summarize(e: &Value) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let time = s("timestamp");
    let name = s("event.name");
    if name == "boundary.decision" {
        let dest = match (e.get("destination.address"), e.get("destination.port")) {
            (Some(a), Some(p)) => format!("{}:{}", a.as_str().unwrap_or(""), p),
            _ => s("boundary.socket.type").to_string(),
        };
        let domains = e
            .get("boundary.destination.domains")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        format!(
            "{time} {:<10} {:<8} {dest}{} {} pid={} {} session={}",
            s("event.action"),
            s("boundary.hook"),
            if domains.is_empty() {
                String::new()
            } else {
                format!(" ({domains})")
            },
            s("process.executable.name"),
            e.get("process.pid").unwrap_or(&json!(null)),
            s("user.name"),
            s("session.id"),
        )
    } else {
        format!("{time} {name} session={}", s("session.id"))
    }
}
