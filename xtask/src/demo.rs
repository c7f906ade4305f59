//! `cargo xtask demo`: the whole story on one machine, on loopback only.
//!
//! 1. A fake provider (the repository's `fake-upstream`, speaking Anthropic's wire format)
//!    stands in for api.anthropic.com; `llm-bridge serve` holds its key and is the control
//!    plane. Two web servers listen on 127.0.0.2 (`allowed.test`) and 127.0.0.3
//!    (`blocked.test`), names a private hosts file maps.
//! 2. The admin enrols the workspace's agent (`llm-bridge agents create`), pushes the
//!    template's policy in audit mode, and the agent (root, as a workspace image starts it)
//!    takes it from Bridge.
//! 3. As the unprivileged user `nobody`, a command runs under Boundary: it calls the model
//!    through Bridge with its session credential, then reaches for `blocked.test`. Audit mode
//!    lets it through and reports `would_deny`; `llm-bridge policy report` lists what enforce
//!    mode would deny.
//! 4. The admin enforces; the agent applies it within about a second. The same command now gets
//!    its model answer and EPERM from the kernel for `blocked.test`.
//! 5. The security view: `llm-bridge events list --session S` (every decision, shipped by the
//!    agent) and `llm-bridge interceptions list --session S` (the LLM call): one session id;
//!    the audit page shows the two side by side at /ui/sessions/S.
//!
//! No traffic, DNS included, leaves the machine.

use crate::setup::{self, Scope};
use crate::shell::{self, step};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROVIDER_KEY: &str = "sk-ant-demo-provider-key";

/// Children killed when the demo ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

pub fn run() -> Result<()> {
    setup::run(Scope::Demo)?;
    let release = shell::build_release_binaries()?;
    let boundary = release.join("boundary");
    let bridge = release.join("llm-bridge");

    let web_port = serve_on_both(Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3))?;
    let dir = std::env::temp_dir().join(format!("boundary-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // `nobody` reads nothing here; root-only files stay root-only.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let mut children = Children(Vec::new());

    // 1. The provider stand-in and Bridge.
    let upstream_port = free_port()?;
    children.0.push(
        Command::new(release.join("fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{upstream_port}")])
            .args(["--anthropic-key", PROVIDER_KEY])
            .stderr(Stdio::null())
            .spawn()
            .context("starting fake-upstream")?,
    );
    wait_listening(upstream_port, "fake-upstream")?;
    let bridge_port = free_port()?;
    let admin_token = format!("demo-admin-{:x}", std::process::id() as u64 * 2654435761);
    private_file(&dir.join("admin-token"), &format!("{admin_token}\n"))?;
    let bridge_yaml = dir.join("bridge.yaml");
    std::fs::write(
        &bridge_yaml,
        format!(
            "listen: 127.0.0.1:{bridge_port}\n\
             store: {store}\n\
             spool_dir: {spool}\n\
             providers:\n  anthropic:\n    base_url: http://127.0.0.1:{upstream_port}\n    api_key: {PROVIDER_KEY}\n\
             limits: {{ record_wait_ms: 5000 }}\n\
             control_plane:\n  admin_token_file: {admin}\n",
            store = dir.join("bridge.db").display(),
            spool = dir.join("bridge-spool").display(),
            admin = dir.join("admin-token").display(),
        ),
    )?;
    println!(
        "\nBridge config ({}):\n{}",
        bridge_yaml.display(),
        std::fs::read_to_string(&bridge_yaml)?
    );
    let llm_bridge = |args: &[&str]| {
        let mut c = Command::new(&bridge);
        c.args(args)
            .arg("--config")
            .arg(&bridge_yaml)
            .current_dir(&dir);
        c
    };
    step(
        "llm-bridge serve --config bridge.yaml   (Bridge: the LLM gateway and the control plane)",
    )?;
    children.0.push(
        Command::new(&bridge)
            .args(["serve", "--config"])
            .arg(&bridge_yaml)
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(dir.join("bridge.log"))?)
            .spawn()
            .context("starting llm-bridge serve")?,
    );
    wait_listening(bridge_port, "llm-bridge serve")?;
    let bridge_url = format!("http://127.0.0.1:{bridge_port}");

    // 2. The admin: a user key, the agent's enrolment, the template's policy in audit mode.
    step("llm-bridge keys create --user alice")?;
    let user_key = shell::capture(&mut llm_bridge(&["keys", "create", "--user", "alice"]))?
        .trim()
        .to_string();
    println!(
        "{}…  (shown once; the store keeps its hash)",
        &user_key[..12.min(user_key.len())]
    );
    step("llm-bridge agents create --template demo --workspace ws-demo")?;
    let agent_token = shell::capture(&mut llm_bridge(&[
        "agents",
        "create",
        "--template",
        "demo",
        "--workspace",
        "ws-demo",
    ]))?
    .trim()
    .to_string();
    let token_file = dir.join("agent-token");
    private_file(&token_file, &format!("{agent_token}\n"))?;
    println!(
        "agent token written to {} (mode 0600)",
        token_file.display()
    );

    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "# The demo template: Bridge, and allowed.test on port {web_port}. Nothing else.\n\
             name: demo\n\
             allow_loopback: false\n\
             allowlist:\n  - \"ip=127.0.0.1 port={bridge_port}\"   # Bridge\n  - \"domain=allowed.test port={web_port}\"\n\
             log_dir: {}\n",
            dir.join("logs").display()
        ),
    )?;
    println!(
        "\nPolicy ({}):\n{}",
        policy.display(),
        std::fs::read_to_string(&policy)?
    );
    step("llm-bridge policy push --template demo policy.yaml --mode audit")?;
    shell::run(&mut llm_bridge(&[
        "policy",
        "push",
        "--template",
        "demo",
        policy.to_str().unwrap(),
        "--mode",
        "audit",
        "--comment",
        "demo: try it first",
    ]))?;

    // The agent's own file is only the fallback before the first version arrives: deny all.
    let fallback = dir.join("fallback.yaml");
    std::fs::write(
        &fallback,
        "name: fallback\nallow_loopback: false\nallowlist: []\n",
    )?;
    std::fs::write(
        dir.join("hosts"),
        "127.0.0.2 allowed.test\n127.0.0.3 blocked.test\n",
    )?;
    let socket = dir.join("agent.sock");
    step(&format!(
        "sudo boundary agent --control-plane {bridge_url} --token-file agent-token   (the workspace image does this at boot)"
    ))?;
    children.0.push(
        Command::new(&boundary)
            .args(["agent", "--config"])
            .arg(&fallback)
            .args(["--control-plane", &bridge_url, "--token-file"])
            .arg(&token_file)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--hosts-file")
            .arg(dir.join("hosts"))
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
            .with_context(|| format!("starting {}", boundary.display()))?,
    );
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&boundary)
            .args(args)
            .arg("--socket")
            .arg(&socket);
        c
    };
    wait_until("the agent to apply the template's policy", || {
        shell::output(&mut as_nobody(&["status"])).is_some_and(|s| s.contains("version 1"))
    })?;

    // 3. A session in audit mode.
    let session = |round: &str| -> Result<String> {
        step(&format!(
            "(as nobody) boundary run -- sh -c 'curl Bridge; curl blocked.test'   [{round}]"
        ))?;
        // The session credential comes from the agent (BOUNDARY_SESSION_TOKEN; Claude Code
        // reads the same from ANTHROPIC_CUSTOM_HEADERS, which the agent fills in for it).
        let script = format!(
            "echo \"session $BOUNDARY_SESSION_ID\"; \
             curl -sS --max-time 10 {bridge_url}/anthropic/v1/messages \
               -H \"x-api-key: $DEMO_KEY\" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
               -H \"x-bridge-session-token: $BOUNDARY_SESSION_TOKEN\" \
               -d '{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"messages\":[{{\"role\":\"user\",\"content\":\"Summarise this repository\"}}]}}' \
               | head -c 300; echo; \
             curl -sS --max-time 5 --resolve blocked.test:{web_port}:127.0.0.3 http://blocked.test:{web_port}/; \
             echo \"curl blocked.test exit code: $?\""
        );
        let out = as_nobody(&["run"])
            .args(["--", "sh", "-c", &script])
            .env("DEMO_KEY", &user_key)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", boundary.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("session "))
            .map(str::to_string)
            .context("the session printed no id")
    };
    let audit_session = session("audit mode")?;
    wait_until("the agent to ship the session's events", || {
        shell::output(&mut llm_bridge(&[
            "events",
            "list",
            "--session",
            &audit_session,
            "--format",
            "json",
        ]))
        .is_some_and(|s| s.contains("boundary.session.end"))
    })?;
    step("llm-bridge policy report --template demo --since 1h   (what enforce mode would deny)")?;
    shell::run(&mut llm_bridge(&[
        "policy",
        "report",
        "--template",
        "demo",
        "--since",
        "1h",
    ]))?;

    // 4. Enforce.
    step("llm-bridge policy enforce --template demo")?;
    shell::run(&mut llm_bridge(&[
        "policy",
        "enforce",
        "--template",
        "demo",
    ]))?;
    wait_until("the agent to apply version 2", || {
        shell::output(&mut as_nobody(&["status"])).is_some_and(|s| s.contains("version 2"))
    })?;
    let enforced = session("enforce mode")?;
    wait_until("the agent to ship the session's events", || {
        shell::output(&mut llm_bridge(&[
            "events",
            "list",
            "--session",
            &enforced,
            "--format",
            "json",
        ]))
        .is_some_and(|s| s.contains("boundary.session.end"))
    })?;

    // 5. The security view.
    step("llm-bridge policy history --template demo")?;
    shell::run(&mut llm_bridge(&[
        "policy",
        "history",
        "--template",
        "demo",
    ]))?;
    step(&format!("llm-bridge events list --session {enforced}"))?;
    shell::run(&mut llm_bridge(&["events", "list", "--session", &enforced]))?;
    step("llm-bridge events list --action deny --template demo --since 1h")?;
    shell::run(&mut llm_bridge(&[
        "events",
        "list",
        "--action",
        "deny",
        "--template",
        "demo",
        "--since",
        "1h",
    ]))?;
    step(&format!(
        "llm-bridge interceptions list --session {enforced}   (its LLM calls: the same session id)"
    ))?;
    shell::run(&mut llm_bridge(&[
        "interceptions",
        "list",
        "--session",
        &enforced,
    ]))?;
    let json = shell::capture(&mut llm_bridge(&[
        "interceptions",
        "list",
        "--session",
        &enforced,
        "--format",
        "json",
    ]))?;
    if !json.contains("\"alice\"") {
        bail!("Bridge did not record the session's LLM call under session {enforced}:\n{json}");
    }
    step("llm-bridge agents list   (the fleet)")?;
    shell::run(&mut llm_bridge(&["agents", "list"]))?;
    println!(
        "\nThe same command, as an unprivileged user, in two rounds:\n\
         - audit mode: blocked.test was reached and reported `would_deny`; the report listed it;\n\
         - enforce mode: the kernel refused it (curl exit 7, `event.action: deny`), while the\n\
           model call through Bridge was answered and recorded under Boundary session\n\
           {enforced}, the id its network events carry.\n\
         The audit page shows both at {bridge_url}/ui/ (admin token in {}) while the demo runs.",
        dir.join("admin-token").display()
    );
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("Press Enter to stop Bridge and the agent.");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    drop(children);
    Ok(())
}

/// A file only root can read: tokens.
fn private_file(path: &Path, text: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn wait_listening(port: u16, what: &str) -> Result<()> {
    wait_until(&format!("{what} to listen on 127.0.0.1:{port}"), || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
    })
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    bail!("no port free on both {a} and {b}")
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
