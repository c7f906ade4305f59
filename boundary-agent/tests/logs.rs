//! The event log under pressure, for real: a 1 MiB tmpfs `log_dir` that fills up, a flood of
//! denied connections from a confined process, rotation at a small size.
//!
//! What must hold: every line of every event file is one whole JSON event; every decision is
//! written, folded into a summary's `boundary.event.count`, or counted in a
//! `boundary.events_lost` event (exact accounting: written + summarised + lost = attempts);
//! the first denial of each destination is written in full; the loss is one event and one
//! stderr line, not one per event; files rotate and the cap says what it removed.
//!
//! The confined processes run as `nobody` under `boundary run` with the real eBPF programs.
//! Network rule: only loopback (denied destinations are 127.0.0.3, never reached). Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");

/// A test directory (sticky and world-writable, like /tmp: the confined `nobody` writes its
/// markers here) with a config.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(config: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        Case { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `boundary run --user nobody -- python3 -c SCRIPT`, events only in `log_dir`.
    fn python(&self, script: &str) -> Command {
        let mut c = Command::new(BOUNDARY);
        c.arg("run")
            .arg("--config")
            .arg(self.path("config.yaml"))
            .args(["--dns-server", "127.0.0.1:9", "--user", "nobody"])
            .args(["--", "python3", "-c", script])
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted (lazily, whatever holds it) on
/// drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={size},mode=0755");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .expect("mounting a tmpfs (needs root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn wait_for(p: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !p.exists() {
        assert!(Instant::now() < deadline, "waiting for {}", p.display());
        thread::sleep(Duration::from_millis(10));
    }
}

/// The session's event files in `dir` (`boundary-<id>.jsonl` and its rotated copies), the
/// current one first, then `.1`, `.2`, ...
fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("boundary-")
        })
        .collect();
    let rank = |p: &PathBuf| -> u32 {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.rsplit_once(".jsonl.")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    };
    files.sort_by_key(rank);
    files
}

/// Every line of `file`, each of which must be one whole JSON event.
fn events_of(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in half a line",
        file.display()
    );
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: not one JSON event ({e}): {l}",
                    file.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Decisions about `port` on 127.0.0.3, counted as events say (a summary stands for many).
fn denied(events: &[Value], port: u16) -> u64 {
    events
        .iter()
        .filter(|e| {
            e["event.name"] == "boundary.decision"
                && e["event.action"] == "deny"
                && e["destination.address"] == "127.0.0.3"
                && e["destination.port"] == port
        })
        .map(|e| e["boundary.event.count"].as_u64().unwrap())
        .sum()
}

fn lost_deny(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|e| e["event.name"] == "boundary.events_lost")
        .map(|e| e["boundary.events_lost.deny"].as_u64().unwrap_or(0))
        .sum()
}

fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Python that waits for `go`, then makes one denied UDP connect to 127.0.0.3 per port in
/// `ports` (a Python range expression), then touches `done`.
fn connects(go: &Path, ports: &str, done: &Path) -> String {
    format!(
        "import socket, os, time\n\
         while not os.path.exists('{go}'): time.sleep(0.01)\n\
         for port in {ports}:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         try:\n        s.connect(('127.0.0.3', port))\n    except PermissionError:\n        pass\n    s.close()\n\
         open('{done}', 'w').close()\n",
        go = go.display(),
        done = done.display(),
    )
}

#[test]
fn a_full_log_disk_leaves_whole_lines_and_reports_the_loss_once_it_can() {
    let disk = Tmpfs::mount("1m");
    let case = Case::new(&format!(
        "name: full-disk\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\nlog_dir: {}\n",
        disk.path().display()
    ));
    // The disk is nearly full before the session starts: about 100 KiB remain.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![b'x'; 900 << 10]).unwrap();
    const FLOOD: u16 = 3000;
    const AFTER: u16 = 50;
    let (go, flooded, go2, done) = (
        case.path("go"),
        case.path("flooded"),
        case.path("go2"),
        case.path("done"),
    );
    // Distinct destinations: each first denial is written in full, none is summarised, so
    // the disk fills (3,000 events are about 2 MiB).
    let script = format!(
        "{}{}",
        connects(&go, &format!("range(20000, {})", 20000 + FLOOD), &flooded),
        connects(&go2, &format!("range(30000, {})", 30000 + AFTER), &done)
    );
    let child = case
        .python(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(&go, "").unwrap();
    wait_for(&flooded, Duration::from_secs(60));
    // Give the agent time to try (and fail) to write all of it, then free the disk.
    thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(&filler).unwrap();
    std::fs::write(&go2, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let files = event_files(disk.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let events = events_of(&files[0]);
    let written: u64 = (20000..20000 + FLOOD)
        .chain(30000..30000 + AFTER)
        .map(|p| denied(&events, p))
        .sum();
    let reports: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event.name"] == "boundary.events_lost"
                && e["boundary.events_lost.reason"] == "disk_full"
        })
        .collect();
    let lost: u64 = reports
        .iter()
        .map(|e| e["boundary.events_lost.count"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{written} decisions written, {lost} events reported lost in {} report(s), {} bytes",
        reports.len(),
        std::fs::metadata(&files[0]).unwrap().len()
    );
    // (Typically about 2,900 of the 3,000; fewer if a loaded agent was still behind when the
    // disk was freed.)
    assert!(lost > 0, "the disk never filled: {written} written");
    // Once the disk had room again, the loss was one event (a report may also slip into the
    // last free bytes of a page while the disk is full, hence not exactly one).
    assert!(
        (1..=3).contains(&reports.len()),
        "one report per recovery, not per event: {reports:#?}"
    );
    assert!(reports[0]["error.message"]
        .as_str()
        .unwrap()
        .contains("space"));
    // Every decision after the disk was freed is written.
    for port in 30000..30000 + AFTER {
        assert_eq!(denied(&events, port), 1, "port {port}");
    }
    // Exact accounting: written + reported lost = attempts (the kernel's own losses, if its
    // ring overflowed, are reported too).
    assert_eq!(
        written + lost_deny(&events),
        u64::from(FLOOD) + u64::from(AFTER),
        "{written} written + {} reported lost",
        lost_deny(&events)
    );
    // stderr heard of it once (and at most once per 10 s), not once per lost event.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints = stderr
        .lines()
        .filter(|l| l.contains("cannot write audit events"))
        .count();
    assert!(
        (1..=2).contains(&complaints),
        "{complaints} stderr lines:\n{stderr}"
    );
}

#[test]
fn a_flood_of_identical_denials_is_summarised_and_every_one_is_counted() {
    const FLOOD: u64 = 100_000;
    let logs = tempfile::tempdir().unwrap();
    let case = Case::new(&format!(
        "name: flood\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\nlog_dir: {}\n",
        logs.path().display()
    ));
    let (ready, done) = (case.path("ready"), case.path("done"));
    // 100,000 denied TCP connects to one destination, as fast as Python goes; one to a
    // second destination in the middle of the flood, and one to a third right after it.
    let script = format!(
        "import socket\n\
         def deny(port):\n    s = socket.socket()\n    try:\n        s.connect(('127.0.0.3', port))\n    \
         except PermissionError:\n        pass\n    s.close()\n\
         open('{ready}', 'w').close()\n\
         for i in range({FLOOD}):\n    deny(7001)\n    if i == {half}:\n        deny(7002)\n\
         deny(7003)\n\
         open('{done}', 'w').close()\n",
        ready = ready.display(),
        done = done.display(),
        half = FLOOD / 2,
    );
    let started = Instant::now();
    let out = case.python(&script).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(done.exists());
    let files = event_files(logs.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let events = events_of(&files[0]);
    let size = std::fs::metadata(&files[0]).unwrap().len();
    let decisions: Vec<&Value> = events
        .iter()
        .filter(|e| e["event.name"] == "boundary.decision")
        .collect();
    let summaries: Vec<&&Value> = decisions
        .iter()
        .filter(|e| e["boundary.summary"] == true)
        .collect();
    let flood = denied(&events, 7001);
    let lost = lost_deny(&events);
    eprintln!(
        "{FLOOD} denials in {took:?}: {} lines ({} summaries), {size} bytes; {flood} counted \
         in events, {lost} reported lost",
        events.len(),
        summaries.len()
    );
    // Exact accounting: every denial is a line, a summary's count, or a reported loss.
    assert_eq!(
        flood + denied(&events, 7002) + denied(&events, 7003) + lost,
        FLOOD + 2,
        "{flood} + {} + {} + {lost}",
        denied(&events, 7002),
        denied(&events, 7003)
    );
    // A few lines per second of flood, not one per denial.
    assert!(
        decisions.len() < 20 + 3 * took.as_secs() as usize,
        "{} decision lines for a {took:?} flood",
        decisions.len()
    );
    assert!(size < 200 << 10, "{size} bytes");
    // The first denial of each destination is written in full, on its own line.
    for port in [7001, 7002, 7003] {
        let first = decisions
            .iter()
            .find(|e| e["destination.port"] == port)
            .unwrap_or_else(|| panic!("no event for port {port}"));
        assert!(first.get("boundary.summary").is_none(), "{first:#}");
        assert_eq!(first["boundary.event.count"], 1, "{first:#}");
        assert_eq!(first["process.executable.name"], "python3");
        assert_eq!(first["user.name"], "nobody");
    }
    // ... and in order: 7002's denial is written before the flood's summaries after it.
    let at = |pred: &dyn Fn(&Value) -> bool| decisions.iter().position(|e| pred(e)).unwrap();
    let p7002 = at(&|e| e["destination.port"] == 7002);
    assert!(
        decisions[p7002 + 1..]
            .iter()
            .any(|e| e["destination.port"] == 7001 && e["boundary.summary"] == true),
        "the mid-flood destination waited for the flood's summary"
    );
    // Summaries say what they fold.
    assert!(!summaries.is_empty());
    for s in &summaries {
        assert!(s["boundary.event.count"].as_u64().unwrap() >= 1);
        assert!(s["boundary.summary.first"].is_string(), "{s:#}");
        assert!(s["boundary.summary.last"].is_string(), "{s:#}");
        assert!(s["boundary.summary.first"].as_str() <= s["boundary.summary.last"].as_str());
        assert_eq!(s["boundary.summary.interval_ms"], 1000);
    }
}

#[test]
fn event_files_rotate_at_their_size_and_the_cap_counts_what_it_removed() {
    // 2,000 distinct destinations are about 1.5 MB of events: more than the 1 MiB disk holds,
    // but the cap (3 files of 64 KiB) keeps the disk from ever filling.
    const PORTS: u16 = 2000;
    let logs = Tmpfs::mount("1m");
    let case = Case::new(&format!(
        "name: rotate\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\nlog_dir: {}\n\
         log_max_file_size: 64KiB\nlog_max_files: 2\n",
        logs.path().display()
    ));
    let (go, done) = (case.path("go"), case.path("done"));
    std::fs::write(&go, "").unwrap();
    let out = case
        .python(&connects(
            &go,
            &format!("range(20000, {})", 20000 + PORTS),
            &done,
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let files = event_files(logs.path());
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[1].ends_with(".jsonl.1") && names[2].ends_with(".jsonl.2"));
    let mut kept = 0;
    for f in &files {
        let meta = std::fs::metadata(f).unwrap();
        assert!(
            meta.len() <= 64 << 10,
            "{} is {} bytes",
            f.display(),
            meta.len()
        );
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o640,
            "{}",
            f.display()
        );
        let events = events_of(f);
        kept += (20000..20000 + PORTS)
            .map(|p| denied(&events, p))
            .sum::<u64>();
    }
    // The newest file starts with the note of the last rotation: what the cap removed in all.
    let newest = events_of(&files[0]);
    let note = &newest[0];
    assert_eq!(note["event.name"], "boundary.log.rotated", "{note:#}");
    assert_eq!(note["boundary.log.max_files"], 2);
    let removed = note["boundary.log.removed.total_decisions"]
        .as_u64()
        .unwrap();
    eprintln!("{kept} denials kept in 3 files, {removed} removed by the cap (counted)");
    assert!(removed > 0, "nothing was removed: {note:#}");
    let mut reasons = Vec::new();
    for f in &files {
        for e in events_of(f) {
            if e["event.name"] == "boundary.events_lost" {
                reasons.push(e["boundary.events_lost.reason"].clone());
            }
        }
    }
    assert!(reasons.is_empty(), "the disk filled: {reasons:?}");
    assert_eq!(
        kept + removed + lost_deny(&newest),
        u64::from(PORTS),
        "{kept} kept + {removed} removed"
    );
}

#[test]
fn a_flood_of_allowed_connections_is_counted_once_not_twice() {
    const FLOOD: u64 = 20_000;
    let logs = tempfile::tempdir().unwrap();
    let listener = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let case = Case::new(&format!(
        "name: allow-flood\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\nlog_dir: {}\n",
        logs.path().display()
    ));
    // The kernel already folds allowed connections of a process (per CPU, with a count); the
    // summaries must add those counts, not count records. The kernel reports the count of
    // its last window with the next allowed connection of the same key on the same CPU: the
    // process stays on one CPU and makes one more connection after the window.
    let script = format!(
        "import os, socket, time\n\
         os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})\n\
         def c():\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         s.connect(('127.0.0.2', {port}))\n    s.close()\n\
         for _ in range({FLOOD}):\n    c()\n\
         time.sleep(1.5)\n\
         c()\n"
    );
    let out = case.python(&script).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let files = event_files(logs.path());
    let events = events_of(&files[0]);
    let allowed: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event.name"] == "boundary.decision"
                && e["event.action"] == "allow"
                && e["destination.port"] == port
        })
        .collect();
    let counted: u64 = allowed
        .iter()
        .map(|e| e["boundary.event.count"].as_u64().unwrap())
        .sum();
    let lost: u64 = events
        .iter()
        .filter(|e| e["event.name"] == "boundary.events_lost")
        .map(|e| e["boundary.events_lost.allow"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "{FLOOD} allowed connects: {} lines, {counted} counted, {lost} reported lost",
        allowed.len()
    );
    assert_eq!(counted + lost, FLOOD + 1);
    assert!(allowed.len() < 50, "{} lines", allowed.len());
}
