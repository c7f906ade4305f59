//! `cargo xtask demo`: the main job on a fresh machine, on loopback only.
//!
//! Two web servers listen on 127.0.0.2 and 127.0.0.3. A policy allows `allowed.test`, which a
//! private hosts file maps to 127.0.0.2. The demo starts the agent daemon (root, as a
//! workspace image would), then, as the unprivileged user `nobody`, runs curl twice through
//! it with `boundary run`: once to the allowed name (answered) and once to 127.0.0.3 (denied in
//! the kernel with EPERM). The audit events are printed, then `boundary status` and
//! `boundary events --action deny`. No traffic, DNS included, leaves the machine.

use crate::setup::{self, Scope};
use crate::shell::{self, step};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

pub fn run() -> Result<()> {
    setup::run(Scope::Demo)?;
    step("build boundary (release)")?;
    shell::cargo(&["build", "--release", "-p", "boundary-agent"])?;
    let boundary = shell::target_dir()?.join("release/boundary");

    let port = serve_on_both(Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3))?;
    let dir = std::env::temp_dir().join(format!("boundary-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    let hosts = dir.join("hosts");
    std::fs::write(
        &config,
        format!(
            "# Demo policy: only allowed.test (port {port}) is reachable.\n\
             name: demo\n\
             mode: enforce\n\
             allow_loopback: false\n\
             allowlist:\n  - \"domain=allowed.test port={port}\"\n\
             log_dir: {}\n",
            dir.join("logs").display()
        ),
    )?;
    std::fs::write(&hosts, "127.0.0.2 allowed.test\n127.0.0.3 blocked.test\n")?;
    println!(
        "\nPolicy ({}):\n{}",
        config.display(),
        std::fs::read_to_string(&config)?
    );

    let socket = dir.join("agent.sock");
    step("sudo boundary agent --config config.yaml   (the workspace image does this at boot)")?;
    let mut agent = Command::new(&boundary)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--hosts-file")
        .arg(&hosts)
        // Nothing listens there: names come from the hosts file, never from the machine's DNS.
        .args([
            "--dns-server",
            "127.0.0.1:9",
            "--log-level",
            "warn",
            "--socket",
        ])
        .arg(&socket)
        .spawn()
        .with_context(|| format!("starting {}", boundary.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if std::time::Instant::now() > deadline || agent.try_wait()?.is_some() {
            anyhow::bail!("the agent did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&boundary)
            .args(args)
            .arg("--socket")
            .arg(&socket);
        c
    };

    for (name, ip) in [("allowed.test", "127.0.0.2"), ("blocked.test", "127.0.0.3")] {
        let url = format!("http://{name}:{port}/");
        step(&format!(
            "(as nobody) boundary run --events - -- curl {url}"
        ))?;
        // --resolve keeps curl off the machine's DNS resolver: the demo stays on loopback.
        let status = as_nobody(&["run", "--events", "-"])
            .args(["--", "curl", "-sS", "--max-time", "5", "--resolve"])
            .arg(format!("{name}:{port}:{ip}"))
            .arg(&url)
            .status()
            .with_context(|| format!("running {}", boundary.display()))?;
        println!("curl exit code: {}", status.code().unwrap_or(-1));
    }
    step("(as nobody) boundary status")?;
    as_nobody(&["status"]).status()?;
    step("(as nobody) boundary events --action deny")?;
    as_nobody(&["events", "--action", "deny"]).status()?;
    let _ = nix_kill_term(agent.id());
    let _ = agent.wait();
    println!(
        "\nThe first request was answered; the second was refused by the kernel (curl exit 7,\n\
         `event.action: deny`), for an unprivileged user who needed no privileges at all.\n\
         Events are also in {}.",
        dir.join("logs").display()
    );
    Ok(())
}

/// SIGTERM without a libc dependency in xtask: `kill` is on every machine.
fn nix_kill_term(pid: u32) -> Result<()> {
    Command::new("kill").arg(pid.to_string()).status()?;
    Ok(())
}

/// Serves a one-line HTTP answer on both addresses, same port; returns the port.
fn serve_on_both(a: Ipv4Addr, b: Ipv4Addr) -> Result<u16> {
    for _ in 0..20 {
        let first = TcpListener::bind((a, 0))?;
        let port = first.local_addr()?.port();
        if let Ok(second) = TcpListener::bind((b, port)) {
            for (listener, ip) in [(first, a), (second, b)] {
                std::thread::spawn(move || answer_forever(listener, ip));
            }
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on both {a} and {b}")
}

fn answer_forever(listener: TcpListener, ip: Ipv4Addr) {
    for mut stream in listener.incoming().flatten() {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        let body = format!("hello from {ip}\n");
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
