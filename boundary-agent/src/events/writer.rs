//! One sink's writer: a thread with a bounded queue, so that a stalled reader or a full disk
//! never blocks enforcement, policy reloads, signal forwarding or the other sinks.
//!
//! Nothing is lost silently. An event that cannot be written is counted, by reason:
//! - `sink_slow`: the writer's queue was full (a reader of `--events -` that stopped reading);
//! - `disk_full`: the write failed with ENOSPC or EDQUOT;
//! - `write_failed`: any other write error (the message is kept).
//!
//! Once writing works again, each reason is reported as ONE `boundary.events_lost` event
//! (`boundary.events_lost.reason`, `.count` = events, `.deny` / `.allow` = the decisions those
//! events stood for, `error.message`), written before the next event; the writer retries on
//! its own every [`RETRY`] when no event comes. On stderr a failure is one line when it
//! starts and at most one every [`COMPLAIN_EVERY`] while it lasts, never one per event.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::file::EventFile;

/// How often a writer with unreported losses tries to report them when no event comes.
pub const RETRY: Duration = Duration::from_secs(1);
/// At most one stderr line per failing sink per this.
pub const COMPLAIN_EVERY: Duration = Duration::from_secs(10);
/// Lines waiting for one writer.
const WRITER_QUEUE: usize = 4096;

/// One serialised event and the decisions it stands for (what is lost if it is).
pub struct Line {
    pub bytes: Vec<u8>,
    pub deny: u64,
    pub allow: u64,
}

impl Line {
    pub fn of(event: &Map<String, Value>) -> Line {
        let mut bytes = serde_json::to_vec(event).unwrap_or_default();
        bytes.push(b'\n');
        let (mut deny, mut allow) = (0, 0);
        match event.get("event.name").and_then(Value::as_str) {
            Some("boundary.decision") => {
                let n = super::summary::event_count(event);
                if event.get("event.action").and_then(Value::as_str) == Some("allow") {
                    allow = n;
                } else {
                    deny = n;
                }
            }
            // A report of lost events that is itself lost: its counts must not vanish.
            Some("boundary.events_lost") => {
                let field = |k: &str| event.get(k).and_then(Value::as_u64).unwrap_or(0);
                deny = field("boundary.events_lost.deny");
                allow = field("boundary.events_lost.allow");
            }
            _ => {}
        }
        Line { bytes, deny, allow }
    }
}

/// Where a writer puts lines: each call writes one whole line or fails.
pub trait LineOut: Send {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
}

/// Standard output (see [`super::raw_stdout`]): one `write` for a line up to the pipe's
/// atomic size.
impl LineOut for File {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.write_all(line)
    }
}

impl LineOut for EventFile {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        EventFile::write_line(self, line)
    }
}

/// Events not written for one reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lost {
    pub events: u64,
    pub deny: u64,
    pub allow: u64,
    pub error: Option<String>,
}

impl Lost {
    fn add(&mut self, line: &Line) {
        self.events += 1;
        self.deny += line.deny;
        self.allow += line.allow;
    }

    fn take_from(&mut self, other: &mut Lost) {
        let other = std::mem::take(other);
        self.events += other.events;
        self.deny += other.deny;
        self.allow += other.allow;
    }
}

fn reason(e: &io::Error) -> &'static str {
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT) => "disk_full",
        _ => "write_failed",
    }
}

pub struct Writer {
    pub name: String,
    queue: Option<SyncSender<Arc<Line>>>,
    slow: Arc<Mutex<Lost>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(name: String, out: Box<dyn LineOut>, session: Option<String>) -> Writer {
        let (tx, rx) = sync_channel::<Arc<Line>>(WRITER_QUEUE);
        let slow = Arc::new(Mutex::new(Lost::default()));
        let mut state = WriterState {
            sink: name.clone(),
            session,
            out,
            slow: slow.clone(),
            pending: BTreeMap::new(),
            complained: None,
        };
        let thread = std::thread::Builder::new()
            .name("boundary-sink".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(RETRY) {
                        Ok(line) => state.write(&line),
                        Err(RecvTimeoutError::Timeout) => {
                            let _ = state.report();
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                if state.report().is_err() {
                    let lost: u64 = state.pending.values().map(|l| l.events).sum();
                    tracing::error!(
                        sink = %state.sink,
                        lost,
                        "audit events could not be written and the loss could not be reported in the sink"
                    );
                }
            })
            .expect("spawning a sink thread");
        Writer {
            name,
            queue: Some(tx),
            slow,
            thread: Some(thread),
        }
    }

    /// Queues a line without waiting; a full queue counts it as lost (`sink_slow`).
    pub fn offer(&self, line: &Arc<Line>) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(line.clone()).is_err() {
            self.slow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(line);
        }
    }

    /// Closes the queue; the thread writes what it holds and ends.
    pub fn close_queue(&mut self) {
        self.queue = None;
    }

    pub fn take_thread(&mut self) -> Option<std::thread::JoinHandle<()>> {
        self.thread.take()
    }
}

struct WriterState {
    sink: String,
    session: Option<String>,
    out: Box<dyn LineOut>,
    slow: Arc<Mutex<Lost>>,
    /// Losses not yet reported in the sink, by reason.
    pending: BTreeMap<&'static str, Lost>,
    /// When stderr last heard of this sink's failure (None: no failure going on).
    complained: Option<Instant>,
}

impl WriterState {
    fn write(&mut self, line: &Line) {
        // Reports first, so that they precede what comes after the gap.
        let result = self
            .report()
            .and_then(|()| self.out.write_line(&line.bytes));
        if let Err(e) = result {
            let lost = self.pending.entry(reason(&e)).or_default();
            lost.add(line);
            lost.error = Some(e.to_string());
            self.complain(&e);
        }
    }

    /// Writes one `boundary.events_lost` line per reason with losses.
    fn report(&mut self) -> io::Result<()> {
        {
            let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
            if slow.events > 0 {
                self.pending
                    .entry("sink_slow")
                    .or_default()
                    .take_from(&mut slow);
            }
        }
        while let Some((&reason, lost)) = self.pending.iter().next() {
            let note = lost_line(&self.sink, self.session.as_deref(), reason, lost);
            if let Err(e) = self.out.write_line(&note) {
                self.complain(&e);
                return Err(e);
            }
            self.pending.remove(reason);
        }
        if self.complained.take().is_some() {
            tracing::warn!(sink = %self.sink, "audit events are written again; what was lost is reported as boundary.events_lost");
        }
        Ok(())
    }

    fn complain(&mut self, e: &io::Error) {
        if self
            .complained
            .is_some_and(|at| at.elapsed() < COMPLAIN_EVERY)
        {
            return;
        }
        self.complained = Some(Instant::now());
        let lost: u64 = self.pending.values().map(|l| l.events).sum();
        tracing::error!(
            sink = %self.sink,
            error = %e,
            lost_so_far = lost,
            "cannot write audit events; counting them until writing works again (one report per {}s)",
            COMPLAIN_EVERY.as_secs()
        );
    }
}

/// The line a writer writes for the events it could not write.
pub fn lost_line(sink: &str, session: Option<&str>, reason: &str, lost: &Lost) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("timestamp".into(), super::now_rfc3339().into());
    m.insert("event.name".into(), "boundary.events_lost".into());
    m.insert("service.name".into(), "boundary".into());
    if let Some(s) = session {
        m.insert("session.id".into(), s.into());
    }
    m.insert("boundary.events_lost.reason".into(), reason.into());
    m.insert("boundary.events_lost.sink".into(), sink.into());
    m.insert("boundary.events_lost.count".into(), lost.events.into());
    m.insert("boundary.events_lost.deny".into(), lost.deny.into());
    m.insert("boundary.events_lost.allow".into(), lost.allow.into());
    if let Some(e) = &lost.error {
        m.insert("error.message".into(), e.clone().into());
    }
    let mut line = serde_json::to_vec(&m).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails while `full` is set, like a full disk.
    struct Flaky {
        full: Arc<Mutex<bool>>,
        written: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl LineOut for Flaky {
        fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
            if *self.full.lock().unwrap() {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.written.lock().unwrap().push(line.to_vec());
            Ok(())
        }
    }

    fn deny() -> Arc<Line> {
        let serde_json::Value::Object(m) = serde_json::json!({
            "event.name": "boundary.decision", "event.action": "deny", "boundary.event.count": 3
        }) else {
            unreachable!()
        };
        Arc::new(Line::of(&m))
    }

    #[test]
    fn a_full_disk_is_one_events_lost_event_with_the_count_once_writing_works() {
        let full = Arc::new(Mutex::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut w = Writer::start(
            "f".into(),
            Box::new(Flaky {
                full: full.clone(),
                written: written.clone(),
            }),
            Some("s".into()),
        );
        let wait_for = |n: usize| {
            let t = Instant::now();
            while written.lock().unwrap().len() < n {
                assert!(t.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        w.offer(&deny());
        wait_for(1);
        *full.lock().unwrap() = true;
        for _ in 0..100 {
            w.offer(&deny());
        }
        std::thread::sleep(Duration::from_millis(200));
        *full.lock().unwrap() = false;
        w.offer(&deny());
        wait_for(3);
        w.close_queue();
        w.take_thread().unwrap().join().unwrap();
        let lines: Vec<Value> = written
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(lines[1]["event.name"], "boundary.events_lost");
        assert_eq!(lines[1]["boundary.events_lost.reason"], "disk_full");
        assert_eq!(lines[1]["boundary.events_lost.count"], 100);
        assert_eq!(lines[1]["boundary.events_lost.deny"], 300);
        assert_eq!(lines[1]["session.id"], "s");
        assert!(lines[1]["error.message"]
            .as_str()
            .unwrap()
            .contains("space"));
        assert_eq!(lines[2]["event.name"], "boundary.decision");
    }

    #[test]
    fn a_lost_report_of_lost_events_keeps_its_counts() {
        let serde_json::Value::Object(m) = serde_json::json!({
            "event.name": "boundary.events_lost", "boundary.events_lost.deny": 7,
            "boundary.events_lost.allow": 2
        }) else {
            unreachable!()
        };
        let l = Line::of(&m);
        assert_eq!((l.deny, l.allow), (7, 2));
    }
}
