//! The on-disk spool: every event the agent produces waits here until the control plane has
//! acknowledged it, across network cuts, Bridge restarts and agent restarts.
//!
//! Layout of `<state>/spool/`:
//! - segment files `<seq>.jsonl` (20 digits, oldest first), one event per line, each at most
//!   [`SEGMENT_BYTES`]; an agent only ever appends to the segment it created itself, so a
//!   line torn by a crash is at the end of an older segment, where it is skipped and counted;
//! - `cursor`: the first byte not yet acknowledged (`{"segment": seq, "offset": bytes}`),
//!   replaced atomically (temporary file, fsync, rename) after each acknowledgement. A crash
//!   between the answer and the rename resends one batch; the server stores by `event.id`, so
//!   it is stored once;
//! - `rejected/`: batches the server refused as malformed (400), kept for a person to read.
//!
//! Each event gets its `event.id` (a UUIDv7, time-ordered) when it enters the spool, so a
//! batch resent after a timeout or a restart carries the same ids.
//!
//! Bounded: when the segments would exceed `--spool-max`, the oldest segment is dropped and
//! its unacknowledged events are counted in a `boundary.events_lost` event with
//! `boundary.events_lost.reason: "spool_full"`, itself spooled. Nothing is lost silently.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::managed::write_atomically;

/// A segment file is at most this big (a line longer than this gets a segment of its own).
pub const SEGMENT_BYTES: u64 = 1024 * 1024;
/// Default `--spool-max`.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Events per batch (the contract's limit).
pub const BATCH_EVENTS: usize = 1000;
/// Bytes of events per batch: under the contract's 4 MiB with room for the envelope.
pub const BATCH_BYTES: usize = 3 * 1024 * 1024;

/// A position in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

/// Events read from the spool, to be sent as one request.
#[derive(Debug)]
pub struct Batch {
    /// The request body: `{"events": [...]}`.
    pub body: Vec<u8>,
    pub events: usize,
    /// Lines the batch covers (its events and the unreadable lines between them).
    lines: u64,
    /// Where the spool resumes once this batch is acknowledged.
    start: Cursor,
    end: Cursor,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    /// Complete lines not yet acknowledged.
    unacked: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// The segment this process appends to (always the last of `segments`).
    active: Option<File>,
    cursor: Cursor,
    /// Events counted lost (spool full, torn or unreadable lines) since the start.
    lost: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`, resuming what an earlier agent left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        Spool::open_with(dir, max_bytes, SEGMENT_BYTES)
    }

    /// [`Spool::open`] with a given segment size (tests use small ones).
    pub fn open_with(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Result<Spool> {
        // Events hold command lines and destinations: root's eyes only.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("rejected"))
            .map_err(io_err(dir))?;
        let mut seqs: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".jsonl")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let cursor_path = dir.join("cursor");
        let mut cursor: Cursor = fs::read(&cursor_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut segments = VecDeque::new();
        for seq in seqs {
            let path = segment_path(dir, seq);
            if seq < cursor.segment {
                // Acknowledged before a crash could delete it.
                let _ = fs::remove_file(&path);
                continue;
            }
            let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
            let from = if seq == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let unacked = count_lines(&path, from).map_err(io_err(&path))?;
            segments.push_back(Segment {
                seq,
                bytes,
                unacked,
            });
        }
        match segments.front() {
            Some(first) if first.seq > cursor.segment => {
                cursor = Cursor {
                    segment: first.seq,
                    offset: 0,
                }
            }
            None => cursor.offset = 0,
            _ => {}
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(2 * segment_bytes),
            segment_bytes,
            segments,
            active: None,
            cursor,
            lost: 0,
        })
    }

    /// Events waiting for an acknowledgement.
    pub fn pending(&self) -> u64 {
        self.segments.iter().map(|s| s.unacked).sum()
    }

    /// Events counted lost since the start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Flushes the segment being written to the disk (appends are not synced one by one: a
    /// crash of the agent loses nothing, the page cache has them; this bounds what a power
    /// loss could take).
    pub fn sync(&mut self) {
        if let Some(f) = &self.active {
            let _ = f.sync_data();
        }
    }

    /// Counts events that never made it into the spool (a write failed).
    pub fn count_lost(&mut self, n: u64) {
        self.lost += n;
    }

    /// Bytes the segments take.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Adds one event, giving it its `event.id`; makes room by dropping the oldest segment
    /// (and reporting it) when the spool is full.
    pub fn append(&mut self, mut event: Map<String, Value>) -> Result<()> {
        event.insert("event.id".into(), uuid::Uuid::now_v7().to_string().into());
        let mut line = serde_json::to_vec(&event).map_err(|e| Error::Agent(e.to_string()))?;
        line.push(b'\n');
        let dropped = self.make_room(line.len() as u64)?;
        self.write_line(&line)?;
        if let Some(lost) = dropped {
            let mut report = lost_event(&lost);
            report.insert("event.id".into(), uuid::Uuid::now_v7().to_string().into());
            let mut line = serde_json::to_vec(&report).map_err(|e| Error::Agent(e.to_string()))?;
            line.push(b'\n');
            // Its own room: a report that pushes out more events is followed by another.
            let more = self.make_room(line.len() as u64)?;
            self.write_line(&line)?;
            if let Some(more) = more {
                let mut again = lost_event(&more);
                again.insert("event.id".into(), uuid::Uuid::now_v7().to_string().into());
                let mut l = serde_json::to_vec(&again).map_err(|e| Error::Agent(e.to_string()))?;
                l.push(b'\n');
                self.write_line(&l)?;
            }
        }
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) -> Result<()> {
        let need_new = match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(last)) => {
                last.bytes > 0 && last.bytes + line.len() as u64 > self.segment_bytes
            }
            _ => true,
        };
        if need_new {
            if let Some(old) = self.active.take() {
                // A full segment is on disk before the next one begins.
                let _ = old.sync_data();
            }
            let seq = self.segments.back().map(|s| s.seq + 1).unwrap_or(1).max(
                // Never reuse an acknowledged segment's number (the cursor is past it).
                self.cursor.segment,
            );
            let path = segment_path(&self.dir, seq);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            self.segments.push_back(Segment {
                seq,
                bytes: 0,
                unacked: 0,
            });
            if self.segments.len() == 1 {
                self.cursor = Cursor {
                    segment: seq,
                    offset: 0,
                };
            }
            self.active = Some(file);
        }
        let file = self.active.as_mut().expect("opened above");
        file.write_all(line).map_err(|source| Error::File {
            path: self.dir.clone(),
            source,
        })?;
        let last = self.segments.back_mut().expect("pushed above");
        last.bytes += line.len() as u64;
        last.unacked += 1;
        Ok(())
    }

    /// Drops oldest segments until `incoming` more bytes fit; what was dropped, if anything.
    fn make_room(&mut self, incoming: u64) -> Result<Option<Dropped>> {
        let mut dropped: Option<Dropped> = None;
        while self.bytes() + incoming > self.max_bytes && self.segments.len() > 1 {
            let seg = self.segments.pop_front().expect("len > 1");
            let path = segment_path(&self.dir, seg.seq);
            let from = if seg.seq == self.cursor.segment {
                self.cursor.offset
            } else {
                0
            };
            let counts = tally(&path, from).unwrap_or(Dropped {
                events: seg.unacked,
                ..Dropped::default()
            });
            let _ = fs::remove_file(&path);
            let d = dropped.get_or_insert_with(Dropped::default);
            d.events += counts.events;
            d.deny += counts.deny;
            d.allow += counts.allow;
            self.lost += counts.events;
            let next = self.segments.front().expect("len was > 1").seq;
            if self.cursor.segment <= seg.seq {
                self.cursor = Cursor {
                    segment: next,
                    offset: 0,
                };
                self.save_cursor()?;
            }
        }
        if let Some(d) = &dropped {
            tracing::warn!(
                events = d.events,
                "the event spool is full (--spool-max); its oldest events were dropped"
            );
        }
        Ok(dropped)
    }

    /// The next batch to send (up to [`BATCH_EVENTS`] events, [`BATCH_BYTES`] bytes), or
    /// `None` when everything is acknowledged. Lines that are not events (torn by a crash)
    /// are skipped and counted lost.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        loop {
            let Some(seg) = self.segments.front() else {
                return Ok(None);
            };
            let (seq, bytes) = (seg.seq, seg.bytes);
            let is_active = self.segments.len() == 1 && self.active.is_some();
            // The cursor is always in the oldest segment.
            let start = self.cursor;
            debug_assert_eq!(start.segment, seq);
            if start.offset >= bytes {
                if is_active {
                    return Ok(None);
                }
                // A finished segment, all acknowledged (or a torn tail): done with it.
                self.finish_front()?;
                continue;
            }
            let path = segment_path(&self.dir, seq);
            let mut file = File::open(&path).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(start.offset))
                .map_err(io_err(&path))?;
            let mut reader = BufReader::new(file.take(bytes - start.offset));
            let mut body = b"{\"events\":[".to_vec();
            let (mut events, mut skipped) = (0usize, 0u64);
            let mut offset = start.offset;
            let mut line = Vec::new();
            while events < BATCH_EVENTS && body.len() < BATCH_BYTES {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(io_err(&path))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    // End, or a line torn by a crash (only an old segment can end so).
                    if n > 0 && !is_active {
                        offset += n as u64;
                        skipped += 1;
                    }
                    break;
                }
                offset += n as u64;
                let text = &line[..n - 1];
                let ok = serde_json::from_slice::<Value>(text)
                    .ok()
                    .is_some_and(|v| v.get("event.id").is_some_and(Value::is_string));
                if !ok {
                    skipped += 1;
                    continue;
                }
                if events > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(text);
                events += 1;
            }
            body.extend_from_slice(b"]}");
            let end = Cursor {
                segment: seq,
                offset,
            };
            if skipped > 0 {
                tracing::warn!(
                    segment = seq,
                    lines = skipped,
                    "unreadable lines in the event spool (torn by a crash?) are skipped"
                );
                self.lost += skipped;
            }
            let lines = events as u64 + skipped;
            if events == 0 {
                // Only unreadable lines: step over them.
                self.advance(start, end, lines)?;
                continue;
            }
            return Ok(Some(Batch {
                body,
                events,
                lines,
                start,
                end,
            }));
        }
    }

    /// The server stored the batch: it leaves the spool.
    pub fn acknowledge(&mut self, batch: &Batch) -> Result<()> {
        self.advance(batch.start, batch.end, batch.lines)
    }

    /// The server refused the batch as malformed (400): it is kept in `rejected/` for a
    /// person to read, and leaves the spool (resending it would fail forever).
    pub fn reject(&mut self, batch: &Batch, why: &str) -> Result<PathBuf> {
        let path = self.dir.join("rejected").join(format!(
            "{:020}-{:010}.json",
            batch.start.segment, batch.start.offset
        ));
        let mut text = batch.body.clone();
        text.push(b'\n');
        write_atomically(&path, &text)?;
        let _ = fs::write(path.with_extension("reason"), why);
        self.lost += batch.events as u64;
        self.advance(batch.start, batch.end, batch.lines)?;
        Ok(path)
    }

    /// Moves the cursor from `start` to `end` (`lines` lines), if the spool is still there
    /// (a batch whose segment was dropped meanwhile changes nothing).
    fn advance(&mut self, start: Cursor, end: Cursor, lines: u64) -> Result<()> {
        if self.cursor != start {
            return Ok(());
        }
        let Some(seg) = self.segments.iter_mut().find(|s| s.seq == end.segment) else {
            return Ok(());
        };
        seg.unacked = seg.unacked.saturating_sub(lines);
        self.cursor = end;
        let finished = self.segments.len() > 1 || self.active.is_none();
        let front = self.segments.front().expect("found above");
        if finished && front.seq == end.segment && end.offset >= front.bytes {
            self.finish_front()?;
        } else {
            self.save_cursor()?;
        }
        Ok(())
    }

    /// Removes the oldest segment (fully acknowledged) and points the cursor at the next.
    fn finish_front(&mut self) -> Result<()> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(());
        };
        if seg.unacked > 0 {
            // Lines counted but unreadable (a torn tail): lost.
            self.lost += seg.unacked;
        }
        self.cursor = Cursor {
            segment: self.segments.front().map(|s| s.seq).unwrap_or(seg.seq + 1),
            offset: 0,
        };
        // The cursor first: a crash in between leaves a file the next start deletes.
        self.save_cursor()?;
        let _ = fs::remove_file(segment_path(&self.dir, seg.seq));
        Ok(())
    }

    fn save_cursor(&self) -> Result<()> {
        let bytes = serde_json::to_vec(&self.cursor).map_err(|e| Error::Agent(e.to_string()))?;
        write_atomically(&self.dir.join("cursor"), &bytes)
    }
}

/// What a full spool dropped.
#[derive(Debug, Default, Clone, PartialEq)]
struct Dropped {
    events: u64,
    deny: u64,
    allow: u64,
}

/// The report of events the full spool dropped.
fn lost_event(d: &Dropped) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("timestamp".into(), crate::events::now_rfc3339().into());
    m.insert("event.name".into(), "boundary.events_lost".into());
    m.insert("service.name".into(), "boundary".into());
    m.insert("boundary.events_lost.reason".into(), "spool_full".into());
    m.insert("boundary.events_lost.count".into(), d.events.into());
    m.insert("boundary.events_lost.deny".into(), d.deny.into());
    m.insert("boundary.events_lost.allow".into(), d.allow.into());
    m
}

/// Complete lines in `path` from `from` on.
fn count_lines(path: &Path, from: u64) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file);
    let mut n = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let got = reader.read_until(b'\n', &mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        // A torn last line counts too: it is either skipped (and reported) or read later.
        n += 1;
    }
}

/// The events (and the decisions they stand for) in `path` from `from` on.
fn tally(path: &Path, from: u64) -> std::io::Result<Dropped> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut d = Dropped::default();
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        d.events += 1;
        if let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(&line) {
            let l = crate::events::writer::Line::of(&event);
            d.deny += l.deny;
            d.allow += l.allow;
        }
    }
    Ok(d)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(i: u64) -> Map<String, Value> {
        let Value::Object(m) = json!({
            "event.name": "boundary.decision", "event.action": "deny", "n": i,
            "boundary.event.count": 1, "pad": "x".repeat(100),
        }) else {
            unreachable!()
        };
        m
    }

    fn ids(batch: &Batch) -> Vec<(String, u64)> {
        let v: Value = serde_json::from_slice(&batch.body).unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event.id"].as_str().unwrap().to_string(),
                    e["n"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    #[test]
    fn events_get_time_ordered_ids_and_leave_only_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open_with(dir.path(), 1 << 20, 4096).unwrap();
        for i in 0..2500 {
            spool.append(event(i)).unwrap();
        }
        assert_eq!(spool.pending(), 2500);
        let mut seen = Vec::new();
        while let Some(batch) = spool.next_batch().unwrap() {
            assert!(batch.events <= BATCH_EVENTS);
            // Not acknowledged: the same batch again, same ids.
            let again = spool.next_batch().unwrap().unwrap();
            assert_eq!(ids(&batch), ids(&again));
            seen.extend(ids(&batch));
            spool.acknowledge(&batch).unwrap();
        }
        assert_eq!(seen.len(), 2500);
        assert!(seen.iter().enumerate().all(|(i, (_, n))| *n == i as u64));
        let mut sorted: Vec<&String> = seen.iter().map(|(id, _)| id).collect();
        sorted.dedup();
        assert_eq!(sorted.len(), 2500, "ids are unique");
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "UUIDv7 ids sort by time"
        );
        assert_eq!(spool.pending(), 0);
        assert_eq!(spool.lost(), 0);
        // Only the segment still being written remains.
        let files = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "jsonl")
            })
            .count();
        assert_eq!(files, 1);
    }

    #[test]
    fn a_restarted_agent_resumes_where_the_acknowledgements_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let first_ids;
        {
            let mut spool = Spool::open_with(dir.path(), 1 << 20, 8192).unwrap();
            for i in 0..300 {
                spool.append(event(i)).unwrap();
            }
            let batch = spool.next_batch().unwrap().unwrap();
            first_ids = ids(&batch);
            spool.acknowledge(&batch).unwrap();
            // The next batch is read but never acknowledged: the agent dies.
            let _ = spool.next_batch().unwrap().unwrap();
        }
        let mut spool = Spool::open_with(dir.path(), 1 << 20, 8192).unwrap();
        assert_eq!(spool.pending(), 300 - first_ids.len() as u64);
        spool.append(event(300)).unwrap();
        let mut rest = Vec::new();
        while let Some(b) = spool.next_batch().unwrap() {
            rest.extend(ids(&b));
            spool.acknowledge(&b).unwrap();
        }
        let numbers: Vec<u64> = first_ids.iter().chain(&rest).map(|(_, n)| *n).collect();
        assert_eq!(
            numbers,
            (0..=300).collect::<Vec<_>>(),
            "each event once, in order"
        );
    }

    #[test]
    fn a_torn_line_from_a_crash_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open_with(dir.path(), 1 << 20, 1 << 16).unwrap();
            for i in 0..3 {
                spool.append(event(i)).unwrap();
            }
        }
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"event.name\":\"torn").unwrap();
        drop(f);
        let mut spool = Spool::open_with(dir.path(), 1 << 20, 1 << 16).unwrap();
        spool.append(event(3)).unwrap();
        let mut got = Vec::new();
        while let Some(b) = spool.next_batch().unwrap() {
            got.extend(ids(&b).into_iter().map(|(_, n)| n));
            spool.acknowledge(&b).unwrap();
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert_eq!(spool.lost(), 1);
        assert_eq!(spool.pending(), 0);
    }

    #[test]
    fn a_full_spool_drops_its_oldest_segment_and_says_how_many_events() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 4 KiB, at most 16 KiB: about 25 events per segment.
        let mut spool = Spool::open_with(dir.path(), 16 * 1024, 4096).unwrap();
        for i in 0..400 {
            spool.append(event(i)).unwrap();
        }
        assert!(spool.bytes() <= 16 * 1024, "{}", spool.bytes());
        let lost = spool.lost();
        assert!(lost > 300, "{lost}");
        let (mut reported, mut kept) = (0, Vec::new());
        while let Some(b) = spool.next_batch().unwrap() {
            let v: Value = serde_json::from_slice(&b.body).unwrap();
            for e in v["events"].as_array().unwrap() {
                if e["event.name"] == "boundary.events_lost" {
                    assert_eq!(e["boundary.events_lost.reason"], "spool_full");
                    // A dropped report passes its decisions on to the next one.
                    let n = |k: &str| e[k].as_u64().unwrap();
                    assert!(n("boundary.events_lost.deny") >= n("boundary.events_lost.count"));
                    reported += e["boundary.events_lost.count"].as_u64().unwrap();
                } else {
                    kept.push(e["n"].as_u64().unwrap());
                }
            }
            spool.acknowledge(&b).unwrap();
        }
        // The newest events stay, in order; every older one is counted lost (the counts of
        // reports dropped with their segments are in `lost` too, not in a kept report).
        let first = 400 - kept.len() as u64;
        assert_eq!(kept, (first..400).collect::<Vec<_>>());
        assert!(reported > 0 && reported <= lost);
        assert!(lost >= first, "{lost} >= {first}");
    }

    #[test]
    fn a_rejected_batch_is_kept_aside_and_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open_with(dir.path(), 1 << 20, 1 << 16).unwrap();
        spool.append(event(0)).unwrap();
        let batch = spool.next_batch().unwrap().unwrap();
        let kept = spool
            .reject(&batch, "400: event 0 has no event.id")
            .unwrap();
        assert!(kept.starts_with(dir.path().join("rejected")));
        assert!(fs::read_to_string(&kept).unwrap().contains("\"n\":0"));
        assert!(spool.next_batch().unwrap().is_none());
        assert_eq!(spool.lost(), 1);
    }
}
