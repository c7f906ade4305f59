//! Every rule form the README documents, decided by the programs in the kernel and by
//! `boundary check`, against the expected verdict: the three must agree on every row.
//!
//! The destinations live in a private network namespace the test creates, with whole prefixes
//! routed locally (`ip route add local 10.240.0.0/16 dev lo`, and `fd00:240::/64` for IPv6):
//! every address in them is this namespace's own, so an allowed TCP connect fails with
//! ECONNREFUSED (nothing listens) and an allowed UDP datagram is sent, while a denied one fails
//! with EPERM. Nothing can leave the namespace (no other interface, no route out). Needs root.

use std::path::Path;
use std::process::{Command, Stdio};

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");

/// A network namespace with the test prefixes routed to itself; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("bnd-rules-{}", std::process::id());
        let ns = Netns { name };
        ns.ip(&["netns", "add", &ns.name]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "local", "10.240.0.0/16", "dev", "lo"],
            vec!["-6", "route", "add", "local", "fd00:240::/64", "dev", "lo"],
        ] {
            let mut full = vec!["-n", ns.name.as_str()];
            full.extend(args);
            ns.ip(&full);
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

const POLICY: &str = "\
name: rule-forms
# allow_loopback is left at its default (true).
allowlist:
  - \"cidr=10.240.0.0/16 port=443\"
  - \"cidr=10.240.1.0/24 port=8000-8100\"
  - \"ip=10.240.1.7 proto=udp port=123\"
  - \"domain=exact.test port=22\"
  - cidr: fd00:240::/64
    ports: [443]
    protocol: tcp
  - ip: fd00:240::9
    protocol: udp
";

/// (protocol, destination, expected verdict)
const CASES: &[(&str, &str, &str)] = &[
    ("tcp", "10.240.0.5:443", "allow"),
    ("tcp", "10.240.0.5:80", "deny"),
    // The longer prefix keeps the grants of the shorter one that covers it.
    ("tcp", "10.240.1.5:443", "allow"),
    ("tcp", "10.240.1.5:8000", "allow"),
    ("tcp", "10.240.1.5:8100", "allow"),
    ("tcp", "10.240.1.5:8101", "deny"),
    ("tcp", "10.240.0.5:8050", "deny"),
    // Protocol limits.
    ("udp", "10.240.1.7:123", "allow"),
    ("tcp", "10.240.1.7:123", "deny"),
    ("udp", "10.240.1.7:443", "allow"),
    ("udp", "10.240.1.8:123", "deny"),
    // Port 53, whatever the address, goes to the session's DNS proxy (README, DNS).
    ("udp", "10.241.0.1:53", "allow"),
    ("tcp", "10.241.0.1:53", "allow"),
    // A domain rule, resolved through the hosts file.
    ("tcp", "10.240.2.2:22", "allow"),
    ("tcp", "10.240.2.2:23", "deny"),
    ("tcp", "10.241.0.1:443", "deny"),
    // allow_loopback defaults to true.
    ("tcp", "127.0.0.5:9", "allow"),
    ("tcp", "[::1]:9", "allow"),
    // IPv6 beyond loopback: connect6 and sendmsg6.
    ("tcp", "[fd00:240::5]:443", "allow"),
    ("udp", "[fd00:240::5]:443", "deny"),
    ("tcp", "[fd00:240::5]:80", "deny"),
    ("udp", "[fd00:240::9]:5353", "allow"),
    ("tcp", "[fd00:240::9]:5353", "deny"),
    // IPv4-mapped IPv6 is judged by the IPv4 rules.
    ("tcp", "[::ffff:10.240.0.5]:443", "allow"),
    ("tcp", "[::ffff:10.240.0.5]:80", "deny"),
];

const PROBE: &str = r#"
import errno, socket, sys
for line in sys.argv[1:]:
    proto, dest = line.split(" ")
    host, port = dest.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(2)
    try:
        if proto == "tcp":
            s.connect((host, int(port)))
        else:
            s.sendto(b"x", (host, int(port)))
        verdict = "allow"
    except PermissionError:
        verdict = "deny"
    except ConnectionRefusedError:
        verdict = "allow"
    except OSError as e:
        verdict = "error:%s" % e
    print(proto, dest, verdict, flush=True)
"#;

fn check(dir: &Path, proto: &str, dest: &str) -> &'static str {
    let mut c = Command::new(BOUNDARY);
    c.arg("check")
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("--hosts-file")
        .arg(dir.join("hosts"))
        .args(["--dns-server", "127.0.0.1:9"]);
    if proto == "udp" {
        c.arg("--udp");
    }
    let out = c.arg(dest).output().unwrap();
    match out.status.code() {
        Some(0) => "allow",
        Some(1) => "deny",
        _ => panic!(
            "boundary check {proto} {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn every_rule_form_is_decided_alike_by_the_kernel_and_by_check() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.path().join("config.yaml"), POLICY).unwrap();
    std::fs::write(dir.path().join("hosts"), "10.240.2.2 exact.test\n").unwrap();

    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg("--")
        .arg(BOUNDARY)
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("config.yaml"))
        .arg("--hosts-file")
        .arg(dir.path().join("hosts"))
        .args(["--dns-server", "127.0.0.1:9", "--user", "nobody"])
        .arg("--events")
        .arg(dir.path().join("events.jsonl"))
        .args(["--", "python3", "-c", PROBE])
        .args(CASES.iter().map(|(p, d, _)| format!("{p} {d}")))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut wrong = Vec::new();
    for (proto, dest, expected) in CASES {
        let kernel = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{proto} {dest} ")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("missing");
        let checked = check(dir.path(), proto, dest);
        if kernel != *expected || checked != *expected {
            wrong.push(format!(
                "{proto} {dest}: expected {expected}, kernel {kernel}, check {checked}"
            ));
        }
    }
    assert!(wrong.is_empty(), "disagreements:\n{}", wrong.join("\n"));
    // Every denial is in the events with its real destination.
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    for (proto, dest, expected) in CASES {
        if *expected != "deny" {
            continue;
        }
        let (host, port) = dest.rsplit_once(':').unwrap();
        let host = host.trim_matches(|c| c == '[' || c == ']');
        let found = events.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["event.action"] == "deny"
                && e["destination.address"] == host
                && e["destination.port"] == port.parse::<u16>().unwrap()
                && e["network.transport"] == *proto
        });
        assert!(found, "no deny event for {proto} {dest}");
    }
}
