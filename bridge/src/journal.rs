//! The journal: intercept-start entries of the requests in flight, on disk.
//!
//! Before a request goes upstream the gateway appends its intercept-start entry (the record
//! as known so far, outcome `incomplete`) here, in the request's own task: one buffered
//! `write(2)`, no hand-off to another task, because the request waits for it. The journal is
//! a [`Spool`] in `spool_dir/journal` (same segment format) written without fsync: the
//! durability SQLite's WAL with `synchronous=NORMAL` gives the store itself, which survives the
//! process being killed, not a power cut. When a request's final record is safe (stored, or
//! in the fsynced spool) the recorder says so with [`Journal::finished`]; a segment is deleted
//! once none of its requests is left. What a previous run left (it crashed or was killed
//! mid-request) is handed to the recorder at start ([`Journal::leftovers`]) and becomes
//! `incomplete` records.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use uuid::Uuid;

use crate::error::Error;
use crate::record::InterceptionRecord;
use crate::spool::Spool;

#[derive(Default)]
struct State {
    /// Segment holding each request still waiting for its final record.
    in_flight: HashMap<Uuid, u64>,
    /// Per segment, how many of its requests still wait.
    outstanding: BTreeMap<u64, usize>,
}

/// The journal of intercept-start entries.
pub struct Journal {
    spool: Spool,
    /// Segments a previous run left, to replay at start.
    leftovers: Mutex<Vec<PathBuf>>,
    /// Held across the append and the bookkeeping, so a segment cannot be judged finished
    /// between an entry being written to it and being counted.
    state: Mutex<State>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, bounded at `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Journal, Error> {
        let spool = Spool::open_journal(dir, max_bytes)?;
        // Sealing lists what is there now; new entries go to new segments.
        let leftovers = spool.seal()?;
        Ok(Journal {
            spool,
            leftovers: Mutex::new(leftovers),
            state: Mutex::new(State::default()),
        })
    }

    /// Appends a request's start entry (written to the file before returning).
    pub fn start(&self, rec: &InterceptionRecord) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.spool.current_segment();
        let (appended, seq) = self.spool.append_in_segment(std::slice::from_ref(rec))?;
        if appended.written == 0 {
            return Err(Error::Spool {
                path: self.spool.dir().display().to_string(),
                reason: "journal full".into(),
            });
        }
        st.in_flight.insert(rec.id, seq);
        *st.outstanding.entry(seq).or_default() += 1;
        if before.is_some_and(|b| b != seq) {
            // A new segment was started: the previous ones may be finished already.
            self.remove_finished(&mut st);
        }
        Ok(())
    }

    /// The final records of these requests are safe: their start entries are no longer needed.
    pub fn finished(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for id in ids {
            if let Some(seq) = st.in_flight.remove(&id) {
                if let Some(n) = st.outstanding.get_mut(&seq) {
                    *n = n.saturating_sub(1);
                    any |= *n == 0;
                }
            }
        }
        if any {
            self.remove_finished(&mut st);
        }
    }

    /// Deletes segments, other than the one being written, with no request left.
    fn remove_finished(&self, st: &mut State) {
        let current = self.spool.current_segment();
        let done: Vec<u64> = st
            .outstanding
            .iter()
            .filter(|(seq, n)| **n == 0 && Some(**seq) != current)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in done {
            st.outstanding.remove(&seq);
            if let Err(e) = self.spool.remove_segment(&self.spool.segment_path(seq)) {
                tracing::warn!(error = %e, "cannot remove a finished journal segment");
            }
        }
    }

    /// What a previous run left: `(segment, its start entries)`, once. Remove each with
    /// [`Journal::remove_leftover`] when its entries are safe elsewhere.
    pub fn leftovers(&self) -> Vec<(PathBuf, Vec<InterceptionRecord>)> {
        let paths = std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|p| p.into_inner()));
        paths
            .into_iter()
            .filter_map(|p| match self.spool.read_segment(&p) {
                Ok(recs) => Some((p, recs)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a journal segment");
                    None
                }
            })
            .collect()
    }

    pub fn remove_leftover(&self, path: &Path) {
        if let Err(e) = self.spool.remove_segment(path) {
            tracing::error!(error = %e, "cannot remove a replayed journal segment");
        }
    }

    /// At a clean stop: if no request is in flight, the journal is emptied.
    pub fn close(&self) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.in_flight.is_empty() {
            return;
        }
        if let Ok(segments) = self.spool.seal() {
            let left = self.leftovers.lock().unwrap_or_else(|p| p.into_inner());
            for seg in segments.iter().filter(|s| !left.contains(s)) {
                let _ = self.spool.remove_segment(seg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Outcome, Provider, Usage, WorkspaceContext};

    fn entry() -> InterceptionRecord {
        InterceptionRecord {
            id: Uuid::now_v7(),
            user: "u".into(),
            key_id: None,
            provider: Provider::Anthropic,
            endpoint: "/v1/messages".into(),
            model: Some("m".into()),
            client: None,
            streaming: false,
            started_at: chrono::Utc::now(),
            ttfb_ms: None,
            duration_ms: 0.0,
            status: 0,
            outcome: Outcome::Incomplete,
            usage: Usage::default(),
            cost_usd: None,
            prompt: Some("p".into()),
            tools_offered: vec![],
            tool_calls: vec![],
            tool_results: vec![],
            context: WorkspaceContext::default(),
            client_session: None,
            client_addr: None,
            error: None,
        }
    }

    #[test]
    fn entries_outlive_a_crash_and_a_clean_stop_leaves_none() {
        let dir = std::env::temp_dir().join(format!("bridge-journal-{}", Uuid::now_v7().simple()));
        let (a, b) = (entry(), entry());
        {
            let j = Journal::open(&dir, 1 << 20).unwrap();
            j.start(&a).unwrap();
            j.start(&b).unwrap();
            j.finished([a.id]);
            j.close(); // b is still in flight: kept
                       // Dropped without finishing b: as if the process were killed.
        }
        let j = Journal::open(&dir, 1 << 20).unwrap();
        let left = j.leftovers();
        let ids: Vec<Uuid> = left
            .iter()
            .flat_map(|(_, r)| r.iter().map(|r| r.id))
            .collect();
        assert_eq!(
            ids,
            [a.id, b.id],
            "the whole segment is replayed; the store ignores finished ones"
        );
        for (p, _) in &left {
            j.remove_leftover(p);
        }
        let c = entry();
        j.start(&c).unwrap();
        j.finished([c.id]);
        j.close();
        drop(j);
        let j = Journal::open(&dir, 1 << 20).unwrap();
        assert!(j.leftovers().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
