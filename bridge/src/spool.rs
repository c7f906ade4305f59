//! The spool: a bounded, durable on-disk queue of records the store could not take yet.
//!
//! Records are appended as JSON lines to segment files (`segment-<seq>.jsonl`) and fsynced, so
//! a crash loses nothing that was acknowledged to the spool. The recorder drains the spool by
//! sealing the segment being written (new records go to a fresh one), inserting each sealed
//! segment into the store, and deleting it only after the insert committed. Inserts are
//! idempotent by record id, so a crash between commit and delete at worst replays records
//! the store then ignores. The total size is bounded; when full, records are dropped with a
//! warning and counted (`bridge_spool_dropped_total`) rather than filling the disk.
//!
//! The same format serves as the recorder's *journal* of intercept-start entries
//! ([`Spool::open_journal`]): appended before a request goes upstream, and written without
//! fsync, the durability SQLite gives the store itself (WAL, `synchronous=NORMAL`): it
//! survives the process being killed, not the machine losing power.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Error;
use crate::private_files;
use crate::record::InterceptionRecord;

/// Default bound on the spool's size.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// A segment is sealed and a new one started beyond this size.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

struct Current {
    seq: u64,
    file: File,
    bytes: u64,
}

struct State {
    current: Option<Current>,
    next_seq: u64,
    records: u64,
    bytes: u64,
}

/// Told the spool's depth `(records, bytes)` each time it changes.
pub type DepthObserver = Box<dyn Fn(u64, u64) + Send + Sync>;

/// The spool directory and its bookkeeping.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// fsync each append (the outage spool) or not (the start-entry journal).
    sync: bool,
    state: Mutex<State>,
    /// Called under the state lock, so whoever sees a depth through [`Spool::depth`] also
    /// sees it in the observer's copy (the metrics), and updates never land out of order.
    observer: Option<DepthObserver>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub written: u64,
    pub dropped: u64,
}

fn spool_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Spool {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn segment_seq(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("segment-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, counting what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, Error> {
        Self::open_with(dir, max_bytes, true, None)
    }

    /// [`Spool::open`], telling `observer` every change of depth (and the depth found now).
    pub fn open_observed(
        dir: &Path,
        max_bytes: u64,
        observer: DepthObserver,
    ) -> Result<Spool, Error> {
        Self::open_with(dir, max_bytes, true, Some(observer))
    }

    /// A journal: like a spool, but appends are not fsynced (see the module docs).
    pub fn open_journal(dir: &Path, max_bytes: u64) -> Result<Spool, Error> {
        Self::open_with(dir, max_bytes, false, None)
    }

    fn open_with(
        dir: &Path,
        max_bytes: u64,
        sync: bool,
        observer: Option<DepthObserver>,
    ) -> Result<Spool, Error> {
        private_files::create_dir_all(dir).map_err(|e| spool_err(dir, e))?;
        let mut records = 0;
        let mut bytes = 0;
        let mut next_seq = 0;
        for seg in list_segments(dir)? {
            let meta = std::fs::metadata(&seg).map_err(|e| spool_err(&seg, e))?;
            bytes += meta.len();
            records += count_lines(&seg)?;
            next_seq = next_seq.max(segment_seq(&seg).unwrap_or(0) + 1);
        }
        if let Some(o) = &observer {
            o(records, bytes);
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            sync,
            state: Mutex::new(State {
                current: None,
                next_seq,
                records,
                bytes,
            }),
            observer,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(records, bytes)` waiting.
    pub fn depth(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.records, s.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.depth().0 == 0
    }

    /// Appends records durably (written, and for a spool fsynced, before returning). Records
    /// that do not fit under the size bound are dropped and counted in the result.
    pub fn append(&self, records: &[InterceptionRecord]) -> Result<Appended, Error> {
        self.append_in_segment(records).map(|(a, _)| a)
    }

    /// [`Spool::append`], also returning the sequence number of the segment written to.
    pub fn append_in_segment(
        &self,
        records: &[InterceptionRecord],
    ) -> Result<(Appended, u64), Error> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        let mut written = 0;
        let mut dropped = 0;
        for r in records {
            let mut line = serde_json::to_vec(r).map_err(|e| spool_err(&self.dir, e))?;
            line.push(b'\n');
            if s.bytes + (buf.len() + line.len()) as u64 > self.max_bytes {
                dropped += 1;
                continue;
            }
            buf.extend_from_slice(&line);
            written += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                spool = %self.dir.display(),
                max_bytes = self.max_bytes,
                "spool is full: interception records dropped; the store has been unavailable too long"
            );
        }
        if buf.is_empty() {
            let seq = s.current.as_ref().map(|c| c.seq).unwrap_or(s.next_seq);
            return Ok((Appended { written, dropped }, seq));
        }
        if s.current.as_ref().is_none_or(|c| c.bytes >= SEGMENT_BYTES) {
            let seq = s.next_seq;
            s.next_seq += 1;
            let path = self.dir.join(format!("segment-{seq:012}.jsonl"));
            let file = private_files::append(&path).map_err(|e| spool_err(&path, e))?;
            s.current = Some(Current {
                seq,
                file,
                bytes: 0,
            });
        }
        let cur = s.current.as_mut().expect("opened above");
        let path = self.dir.join(format!("segment-{:012}.jsonl", cur.seq));
        cur.file.write_all(&buf).map_err(|e| spool_err(&path, e))?;
        if self.sync {
            cur.file.sync_data().map_err(|e| spool_err(&path, e))?;
        }
        let seq = cur.seq;
        cur.bytes += buf.len() as u64;
        s.bytes += buf.len() as u64;
        s.records += written;
        self.observe(&s);
        Ok((Appended { written, dropped }, seq))
    }

    /// Sequence number of the segment being appended to, if any.
    pub fn current_segment(&self) -> Option<u64> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.current.as_ref().map(|c| c.seq)
    }

    /// Path of segment `seq`.
    pub fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("segment-{seq:012}.jsonl"))
    }

    /// Closes the segment being written and returns all segments, oldest first. Appends made
    /// after this call go to a new segment that is not in the list.
    pub fn seal(&self) -> Result<Vec<PathBuf>, Error> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.current = None;
        list_segments(&self.dir)
    }

    /// Reads a sealed segment. A torn last line (crash mid-write) is skipped with a warning.
    pub fn read_segment(&self, path: &Path) -> Result<Vec<InterceptionRecord>, Error> {
        let f = File::open(path).map_err(|e| spool_err(path, e))?;
        let mut out = Vec::new();
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| spool_err(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(
                    segment = %path.display(),
                    line = i + 1,
                    error = %e,
                    "skipping unreadable spool line"
                ),
            }
        }
        Ok(out)
    }

    /// Deletes a segment whose records are safely in the store.
    pub fn remove_segment(&self, path: &Path) -> Result<(), Error> {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let lines = count_lines(path).unwrap_or(0);
        std::fs::remove_file(path).map_err(|e| spool_err(path, e))?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.bytes = s.bytes.saturating_sub(bytes);
        s.records = s.records.saturating_sub(lines);
        self.observe(&s);
        Ok(())
    }

    fn observe(&self, s: &State) {
        if let Some(o) = &self.observer {
            o(s.records, s.bytes);
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| spool_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| segment_seq(&p).map(|s| (s, p)))
        .collect();
    segs.sort();
    Ok(segs.into_iter().map(|(_, p)| p).collect())
}

fn count_lines(path: &Path) -> Result<u64, Error> {
    let data = std::fs::read(path).map_err(|e| spool_err(path, e))?;
    Ok(data.iter().filter(|b| **b == b'\n').count() as u64)
}
