//! Flood summaries: a confined process that repeats the same refused (or allowed) connection
//! a million times must not write a million lines, yet no decision may go uncounted.
//!
//! Decisions (and refused DNS queries) are grouped by everything that makes them "the same
//! decision" (session, process, executable, hook, destination address, port and transport,
//! verdict, reason, rule; the name asked): every field of the event except its time, its
//! count, the thread that acted and a DNS query's source port. The first decision
//! of a group is written in full at once and opens a window of `interval`; the identical ones
//! that follow within the window are only counted, and when the window ends they are written
//! as ONE event: the same decision with `boundary.event.count` = how many it stands for,
//! `boundary.summary: true`, and the time of the first and last one it folds
//! (`boundary.summary.first`, `boundary.summary.last`). The next identical decision after
//! that is written in full again and opens a new window.
//!
//! So the first denial of every destination is always written in full and immediately (no
//! window can exist for a destination not seen before), a flood costs at most two lines per
//! group and interval, and the sum of `boundary.event.count` over the decisions written is
//! exactly the number of decisions made. Records that already stand for several decisions
//! (the kernel's per-CPU dedup of allowed connections) add their own count, never one.
//!
//! It happens in two places with the same rule: [`RecordFold`] in the ring reader, on raw
//! kernel records before they are enriched (cheap, so that the reader keeps up with a flood
//! and the kernel ring does not overflow), and [`Summarizer`] in the sink, on finished events
//! (for decisions that do not come from the ring, such as syscall-filter refusals).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use boundary_common::Event;
use serde_json::{Map, Value};

/// Fields that differ between decisions that are otherwise the same (a DNS query comes from
/// a new source port every time).
const VOLATILE: &[&str] = &[
    "timestamp",
    "boundary.event.count",
    "thread.id",
    "thread.name",
    "source.port",
];

/// At most this many groups are tracked at once; beyond it every open window is closed early
/// (its summary written), so memory stays bounded whatever a process connects to.
const MAX_WINDOWS: usize = 4096;

/// Decisions folded into one group's current window.
struct Window {
    /// The decision that opened the window: the group is every decision equal to it but for
    /// the volatile fields.
    opener: Map<String, Value>,
    opened: Instant,
    /// The first folded decision: the summary is this event with the totals.
    template: Option<Map<String, Value>>,
    count: u64,
    first: Value,
    last: Value,
}

/// Groups identical decisions per interval (see the module documentation).
pub struct Summarizer {
    interval: Duration,
    /// By a hash of the group's fields (hashing is a fraction of the cost of serialising them,
    /// and this runs for every event of a flood); equal hashes are told apart by comparing.
    windows: HashMap<u64, Vec<Window>>,
    open: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl Summarizer {
    pub fn new(interval: Duration) -> Summarizer {
        Summarizer {
            interval,
            windows: HashMap::new(),
            open: 0,
            hasher: Default::default(),
        }
    }

    /// How often [`Summarizer::due`] should be asked: a summary is late by at most this.
    pub fn tick(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    /// Takes one event. Returns the events to write now: the event itself when it is not
    /// folded into an open window (preceded by the summaries of every open window when the
    /// table was full), nothing when it is.
    pub fn admit(&mut self, event: &Map<String, Value>, now: Instant) -> Vec<Map<String, Value>> {
        let Some(hash) = self.group_hash(event) else {
            return vec![event.clone()];
        };
        let interval = self.interval;
        let mut out = Vec::new();
        if let Some(bucket) = self.windows.get_mut(&hash) {
            if let Some(i) = bucket.iter().position(|w| same_group(&w.opener, event)) {
                let w = &mut bucket[i];
                if now.duration_since(w.opened) < interval {
                    if w.template.is_none() {
                        w.template = Some(event.clone());
                        w.first = event.get("timestamp").cloned().unwrap_or(Value::Null);
                    }
                    w.count += event_count(event);
                    w.last = event.get("timestamp").cloned().unwrap_or(Value::Null);
                    return out;
                }
                // Not folded: the window is over. Its summary goes first, so that lines stay
                // in time order within a group.
                let ended = bucket.swap_remove(i);
                self.open -= 1;
                out.extend(summary(ended, interval));
            }
        }
        if self.open >= MAX_WINDOWS {
            out.extend(self.flush());
        }
        self.windows.entry(hash).or_default().push(Window {
            opener: event.clone(),
            opened: now,
            template: None,
            count: 0,
            first: Value::Null,
            last: Value::Null,
        });
        self.open += 1;
        out.push(event.clone());
        out
    }

    /// The summaries of the windows that have ended by `now` (closing them).
    pub fn due(&mut self, now: Instant) -> Vec<Map<String, Value>> {
        let interval = self.interval;
        let mut ended = Vec::new();
        self.windows.retain(|_, bucket| {
            let mut i = 0;
            while i < bucket.len() {
                if now.duration_since(bucket[i].opened) >= interval {
                    ended.push(bucket.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            !bucket.is_empty()
        });
        self.open -= ended.len();
        ended.sort_by_key(|w| w.opened);
        ended
            .into_iter()
            .filter_map(|w| summary(w, interval))
            .collect()
    }

    /// Closes every window: their summaries (at the end of a session, or when full).
    pub fn flush(&mut self) -> Vec<Map<String, Value>> {
        let mut all: Vec<Window> = self.windows.drain().flat_map(|(_, b)| b).collect();
        self.open = 0;
        all.sort_by_key(|w| w.opened);
        all.into_iter()
            .filter_map(|w| summary(w, self.interval))
            .collect()
    }

    /// A hash of the group of a decision; `None` for events that are never summarised
    /// (session events, answered DNS queries, losses).
    fn group_hash(&self, event: &Map<String, Value>) -> Option<u64> {
        if !summarised(event) {
            return None;
        }
        let mut h = self.hasher.build_hasher();
        for field in group_fields(event) {
            field.hash(&mut h);
        }
        Some(h.finish())
    }
}

/// Decisions, and refused DNS queries (a loop asking for a denied name is a flood too;
/// answered ones are already reported once per name and TTL).
fn summarised(event: &Map<String, Value>) -> bool {
    match event.get("event.name").and_then(Value::as_str) {
        Some("boundary.decision") => true,
        Some("boundary.dns") => event.get("event.action").and_then(Value::as_str) != Some("allow"),
        _ => false,
    }
}

/// The fields that make a decision what it is (in key order: the map is sorted).
fn group_fields(event: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    event
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
}

fn same_group(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    group_fields(a).eq(group_fields(b))
}

/// How many decisions an event stands for: a record may already fold several (never < 1).
pub(crate) fn event_count(event: &Map<String, Value>) -> u64 {
    event
        .get("boundary.event.count")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1)
}

fn summary(w: Window, interval: Duration) -> Option<Map<String, Value>> {
    let mut m = w.template?;
    mark(&mut m, w.count, w.first, w.last, interval);
    Some(m)
}

/// Makes `m` (one of the decisions folded) the summary of `count` of them.
pub fn mark(m: &mut Map<String, Value>, count: u64, first: Value, last: Value, interval: Duration) {
    m.insert("timestamp".into(), last.clone());
    m.insert("boundary.event.count".into(), count.into());
    m.insert("boundary.summary".into(), true.into());
    m.insert("boundary.summary.first".into(), first);
    m.insert("boundary.summary.last".into(), last);
    m.insert(
        "boundary.summary.interval_ms".into(),
        (interval.as_millis() as u64).into(),
    );
}

/// The same grouping one step earlier, on the kernel's records as the ring reader takes them,
/// before they are enriched: enriching (reading /proc, building the event) costs far more
/// than comparing two records, and a reader that falls behind a flood lets the kernel ring
/// overflow, which drops records (counted), first denials of other destinations included.
/// The first record of a group is enriched and written at once; the rest of the interval is
/// one [`FoldedRecords`], enriched once. The [`Summarizer`] after it sees these summaries as
/// decisions of their own and writes them as they are.
#[derive(Default)]
pub struct RecordFold {
    windows: HashMap<RecordKey, RecordWindow>,
}

/// Identical records of one interval, after the first.
#[derive(Debug, Clone, Copy)]
pub struct FoldedRecords {
    /// The last one (its process, thread and rule are the summary's).
    pub last: Event,
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub interval: Duration,
}

struct RecordWindow {
    opened: Instant,
    interval: Duration,
    folded: Option<FoldedRecords>,
}

/// What makes two records the same decision: all but the time, the count and the thread id.
/// The thread's name is in: it changes when a process execs another program.
#[derive(PartialEq, Eq, Hash)]
struct RecordKey(
    (u32, u64, u64, u32, u16),
    (u8, u8, u8, u8, u8, u8),
    (u32, [u8; 16], u32, [u8; 16]),
);

impl RecordKey {
    fn of(e: &Event) -> RecordKey {
        RecordKey(
            (
                (e.pid_tgid >> 32) as u32,
                e.uid_gid,
                e.cgroup_id,
                e.rule_id,
                e.port,
            ),
            (
                e.action,
                e.protocol,
                e.family,
                e.hook,
                e.sock_type,
                e.reason,
            ),
            (e.ip_protocol, e.addr, e.detail, e.comm),
        )
    }
}

impl RecordFold {
    /// Takes one record: returns the folds to write first (the window it ends, or every
    /// window when the table is full) and whether to write the record itself.
    pub fn admit(
        &mut self,
        e: &Event,
        interval: Duration,
        now: Instant,
    ) -> (Vec<FoldedRecords>, bool) {
        if interval.is_zero() {
            return (Vec::new(), true);
        }
        let key = RecordKey::of(e);
        let mut ended = Vec::new();
        if let Some(w) = self.windows.get_mut(&key) {
            if now.duration_since(w.opened) < w.interval {
                let count = u64::from(e.count.max(1));
                match &mut w.folded {
                    Some(f) => {
                        f.count += count;
                        f.last = *e;
                        f.last_ns = e.ktime_ns;
                    }
                    None => {
                        w.folded = Some(FoldedRecords {
                            last: *e,
                            count,
                            first_ns: e.ktime_ns,
                            last_ns: e.ktime_ns,
                            interval: w.interval,
                        })
                    }
                }
                return (ended, false);
            }
            ended.extend(self.windows.remove(&key).and_then(|w| w.folded));
        }
        if self.windows.len() >= MAX_WINDOWS {
            ended.extend(self.flush());
        }
        self.windows.insert(
            key,
            RecordWindow {
                opened: now,
                interval,
                folded: None,
            },
        );
        (ended, true)
    }

    /// The folds of the windows that have ended by `now`.
    pub fn due(&mut self, now: Instant) -> Vec<FoldedRecords> {
        let mut ended = Vec::new();
        self.windows.retain(|_, w| {
            if now.duration_since(w.opened) < w.interval {
                return true;
            }
            ended.extend(w.folded.take());
            false
        });
        ended.sort_by_key(|f| f.first_ns);
        ended
    }

    /// Every window's fold.
    pub fn flush(&mut self) -> Vec<FoldedRecords> {
        let mut all: Vec<FoldedRecords> =
            self.windows.drain().filter_map(|(_, w)| w.folded).collect();
        all.sort_by_key(|f| f.first_ns);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decision(port: u16, at: &str, count: u64) -> Map<String, Value> {
        let Value::Object(m) = json!({
            "timestamp": at, "event.name": "boundary.decision", "event.action": "deny",
            "destination.address": "127.0.0.3", "destination.port": port, "process.pid": 7,
            "thread.id": 8, "boundary.event.count": count,
        }) else {
            unreachable!()
        };
        m
    }

    #[test]
    fn a_flood_is_one_full_line_and_one_summary_with_the_exact_count() {
        let mut s = Summarizer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let first = s.admit(&decision(80, "t0", 1), t0);
        assert_eq!(first.len(), 1, "the first deny is written in full at once");
        assert!(first[0].get("boundary.summary").is_none());
        for i in 1..1000u64 {
            let at = t0 + Duration::from_micros(i);
            assert!(s.admit(&decision(80, &format!("t{i}"), 1), at).is_empty());
        }
        // A new destination inside the flood is written at once.
        assert_eq!(
            s.admit(&decision(81, "new", 1), t0 + Duration::from_millis(1))
                .len(),
            1
        );
        assert!(s.due(t0 + Duration::from_millis(500)).is_empty());
        let due = s.due(t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 1, "port 81 had nothing folded: no summary");
        assert_eq!(due[0]["boundary.event.count"], 999);
        assert_eq!(due[0]["boundary.summary.first"], "t1");
        assert_eq!(due[0]["boundary.summary.last"], "t999");
        assert_eq!(due[0]["destination.port"], 80);
        // After the window, the same decision is written in full again.
        assert_eq!(
            s.admit(&decision(80, "later", 1), t0 + Duration::from_secs(2))
                .len(),
            1
        );
    }

    fn record(port: u16, at: u64, count: u32) -> Event {
        Event {
            ktime_ns: at,
            port,
            count,
            pid_tgid: 7 << 32 | 8,
            ..Event::default()
        }
    }

    #[test]
    fn records_fold_before_enrichment_with_exact_counts() {
        let mut f = RecordFold::default();
        let second = Duration::from_secs(1);
        let t0 = Instant::now();
        let (ended, write) = f.admit(&record(80, 1, 1), second, t0);
        assert!(ended.is_empty() && write);
        for i in 2..=1000 {
            let (ended, write) = f.admit(&record(80, i, 1), second, t0);
            assert!(ended.is_empty() && !write);
        }
        // Allowed connections the kernel already folded add their count.
        f.admit(&record(80, 1001, 5), second, t0);
        // Another destination is written at once; another thread of the process folds.
        assert!(f.admit(&record(81, 1002, 1), second, t0).1);
        let mut other_thread = record(80, 1003, 1);
        other_thread.pid_tgid = 7 << 32 | 9;
        assert!(!f.admit(&other_thread, second, t0).1);
        assert!(f.due(t0 + Duration::from_millis(999)).is_empty());
        let due = f.due(t0 + second);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].count, due[0].first_ns, due[0].last_ns),
            (1005, 2, 1003)
        );
        assert_eq!(due[0].last.pid_tgid as u32, 9);
        // Zero: nothing is folded.
        assert!(f.admit(&record(80, 2000, 1), Duration::ZERO, t0).1);
        assert!(f.admit(&record(80, 2001, 1), Duration::ZERO, t0).1);
    }

    #[test]
    fn records_that_already_count_several_decisions_add_their_count() {
        let mut s = Summarizer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        s.admit(&decision(80, "a", 5), t0);
        s.admit(&decision(80, "b", 7), t0);
        s.admit(&decision(80, "c", 0), t0);
        let all = s.flush();
        assert_eq!(all[0]["boundary.event.count"], 8);
    }

    #[test]
    fn a_window_ended_by_a_new_decision_writes_its_summary_first() {
        let mut s = Summarizer::new(Duration::from_millis(100));
        let t0 = Instant::now();
        s.admit(&decision(80, "a", 1), t0);
        s.admit(&decision(80, "b", 1), t0);
        let out = s.admit(&decision(80, "c", 1), t0 + Duration::from_millis(200));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["boundary.summary"], true);
        assert_eq!(out[1]["timestamp"], "c");
    }

    #[test]
    fn other_events_and_other_processes_are_never_folded() {
        let mut s = Summarizer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let Value::Object(start) = json!({"event.name": "boundary.session.start"}) else {
            unreachable!()
        };
        assert_eq!(s.admit(&start, t0).len(), 1);
        assert_eq!(s.admit(&start, t0).len(), 1);
        let mut other = decision(80, "x", 1);
        s.admit(&other, t0);
        other.insert("process.pid".into(), 9.into());
        assert_eq!(s.admit(&other, t0).len(), 1);
        other.insert("event.action".into(), "allow".into());
        assert_eq!(s.admit(&other, t0).len(), 1);
    }

    #[test]
    fn refused_dns_queries_are_summarised_whatever_their_source_port() {
        let mut s = Summarizer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let query = |port: u16, action: &str| {
            let Value::Object(m) = json!({
                "event.name": "boundary.dns", "event.action": action,
                "dns.question.name": "evil.test", "source.port": port, "process.pid": 7,
            }) else {
                unreachable!()
            };
            m
        };
        assert_eq!(s.admit(&query(1000, "deny"), t0).len(), 1);
        for port in 1001..1100 {
            assert!(s.admit(&query(port, "deny"), t0).is_empty());
        }
        // Answered queries are never folded here.
        assert_eq!(s.admit(&query(2000, "allow"), t0).len(), 1);
        assert_eq!(s.admit(&query(2001, "allow"), t0).len(), 1);
        let all = s.flush();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["boundary.event.count"], 99);
        assert_eq!(all[0]["event.name"], "boundary.dns");
    }

    #[test]
    fn the_table_is_bounded_and_flushing_it_loses_nothing() {
        let mut s = Summarizer::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut total = 0u64;
        for round in 0..3 {
            for port in 0..(MAX_WINDOWS as u16 + 10) {
                for out in s.admit(&decision(port, &format!("{round}"), 1), t0) {
                    total += event_count(&out);
                }
            }
        }
        for out in s.flush() {
            total += event_count(&out);
        }
        assert!(s.windows.is_empty());
        assert_eq!(s.open, 0);
        assert_eq!(total, 3 * (MAX_WINDOWS as u64 + 10));
    }
}
