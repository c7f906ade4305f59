//! Per-minute rate windows (requests, input and output tokens per spender), counted in memory
//! by each replica and written to the store in batches.
//!
//! Counting every admitted request with its own store upsert cost about 40 µs of CPU per
//! request (a SQLite write on the request path; BENCHMARKS.md, "governance overhead"). Here a
//! request is admitted against `stored + in_flight + pending`: `stored` is the window's total in
//! the store (all replicas) as of this replica's last sync, `pending` what this replica counted
//! since and has not written yet, `in_flight` what a sync is writing right now. A background
//! task ([`RateWindows::sync`], every [`SYNC`]) adds each window's pending counts to the store
//! with one upsert per active window and reads back the total, which brings in what the other
//! replicas counted.
//!
//! **Accuracy across replicas**: one replica alone is exact (its own admissions are counted
//! before the next request is checked). With several replicas sharing a store, a replica does
//! not see what the others admitted since its last sync, so a limit can be exceeded by at most
//! what the *other* replicas admitted in one sync interval plus one store round trip (at
//! [`SYNC`] = 250 ms, a quarter of a second of their traffic). The first request of a window on
//! a replica reads the store's total synchronously (one upsert, as before), so a replica that
//! starts, or a minute that begins, does not start from zero. If the store cannot be reached,
//! counts stay pending (the limit then holds per replica) and are written once it is back; a
//! replica that stops loses at most one interval of counts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::Error;
use crate::store::{Store, Value};

/// How often each replica writes its counts to the store and reads the others'.
pub const SYNC: Duration = Duration::from_millis(250);

/// Requests, input tokens, output tokens.
pub type Counts = [i64; 3];

/// Index of each counter in [`Counts`], and its limit's name.
pub const REQUESTS: usize = 0;
pub const INPUT_TOKENS: usize = 1;
pub const OUTPUT_TOKENS: usize = 2;
pub const FIELDS: [&str; 3] = [
    "requests_per_minute",
    "input_tokens_per_minute",
    "output_tokens_per_minute",
];

/// One spender's one-minute window on this replica.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// The store's total as of the last sync (every replica's counts).
    stored: Counts,
    /// Counted here, being written by a sync now.
    in_flight: Counts,
    /// Counted here since, not yet written.
    pending: Counts,
    /// Whether `stored` was read from the store at least once.
    known: bool,
}

impl Window {
    fn used(&self, i: usize) -> u64 {
        (self.stored[i] + self.in_flight[i] + self.pending[i]).max(0) as u64
    }
}

/// What [`RateWindows::admit`] decided.
#[derive(Debug, PartialEq)]
pub enum Admit {
    /// Counted.
    Yes,
    /// Refused: this limit (index into [`FIELDS`]) is reached, with this much used.
    No { field: usize, used: u64 },
    /// The window's total is not known on this replica yet: count it with
    /// [`RateWindows::admit_through_store`].
    Unknown,
}

/// This replica's rate windows, keyed by spender (`Scope`'s text) and window start (Unix s).
#[derive(Debug, Default)]
pub struct RateWindows {
    windows: Mutex<HashMap<(String, i64), Window>>,
}

const UPSERT: &str =
    "INSERT INTO rate_windows (subject, window_start, requests, input_tokens, output_tokens) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject, window_start) DO UPDATE \
     SET requests = rate_windows.requests + excluded.requests, \
     input_tokens = rate_windows.input_tokens + excluded.input_tokens, \
     output_tokens = rate_windows.output_tokens + excluded.output_tokens \
     RETURNING requests, input_tokens, output_tokens";

/// `a[i] += b[i]` for each counter.
fn add(a: &mut Counts, b: &Counts) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

/// `a[i] -= b[i]` for each counter.
fn sub(a: &mut Counts, b: &Counts) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a -= b);
}

/// Takes the store's newer `total`: totals only grow, so an older answer arriving late must
/// not lower them.
fn raise(stored: &mut Counts, total: &Counts) {
    stored
        .iter_mut()
        .zip(total)
        .for_each(|(s, t)| *s = (*s).max(*t));
}

fn counts_of(row: &[Value]) -> Counts {
    [0, 1, 2].map(|i| row.get(i).map_or(0, |v| v.int().max(0)))
}

impl RateWindows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one request of `subject` in `window` unless a limit (`None`: not set) is reached.
    pub fn admit(&self, subject: &str, window: i64, limits: [Option<u64>; 3]) -> Admit {
        let mut windows = self.lock();
        let Some(w) = windows.get_mut(&(subject.to_string(), window)) else {
            return Admit::Unknown;
        };
        if !w.known {
            return Admit::Unknown;
        }
        // Tokens are counted when requests end: a window whose tokens are used up refuses
        // new requests; requests refuse the one over the limit.
        for i in [INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS] {
            if let Some(max) = limits[i] {
                if w.used(i) >= max {
                    return Admit::No {
                        field: i,
                        used: w.used(i),
                    };
                }
            }
        }
        w.pending[REQUESTS] += 1;
        Admit::Yes
    }

    /// Counts one request with a store round trip (the first of a window on this replica):
    /// the upsert refuses it when `requests_per_minute` is reached, and its answer is the
    /// window's total, which this replica then counts on from.
    pub async fn admit_through_store(
        &self,
        store: &Store,
        subject: &str,
        window: i64,
        limits: [Option<u64>; 3],
    ) -> Result<Admit, Error> {
        let rows = store
            .query(
                "INSERT INTO rate_windows (subject, window_start, requests, input_tokens, output_tokens) \
                 VALUES ($1, $2, 1, 0, 0) ON CONFLICT (subject, window_start) DO UPDATE \
                 SET requests = rate_windows.requests + 1 WHERE rate_windows.requests < $3 \
                 RETURNING requests, input_tokens, output_tokens",
                vec![
                    Value::Text(Some(subject.to_string())),
                    Value::Int(Some(window)),
                    Value::Int(Some(limits[REQUESTS].map_or(i64::MAX, |r| r as i64))),
                ],
            )
            .await?;
        let Some(row) = rows.into_iter().next() else {
            let used = limits[REQUESTS].unwrap_or(0);
            self.learn(subject, window, [used as i64, 0, 0], false);
            return Ok(Admit::No {
                field: REQUESTS,
                used,
            });
        };
        let total = counts_of(&row);
        for i in [INPUT_TOKENS, OUTPUT_TOKENS] {
            if let Some(max) = limits[i] {
                if total[i] >= max as i64 {
                    // Not served: count it back (in the next sync).
                    self.learn(subject, window, total, true);
                    return Ok(Admit::No {
                        field: i,
                        used: total[i] as u64,
                    });
                }
            }
        }
        self.learn(subject, window, total, false);
        Ok(Admit::Yes)
    }

    /// Records the store's `total` for a window; with `give_back`, takes one request off it
    /// (here at once, in the store at the next sync).
    fn learn(&self, subject: &str, window: i64, total: Counts, give_back: bool) {
        let mut windows = self.lock();
        let w = windows.entry((subject.to_string(), window)).or_default();
        raise(&mut w.stored, &total);
        if give_back {
            w.pending[REQUESTS] -= 1;
        }
        w.known = true;
    }

    /// The store could not be asked for a window's total: count it here from what this
    /// replica knows (its own counts), so the limit still holds per replica; the next sync that
    /// reaches the store writes them and brings the total back.
    pub fn count_alone(&self, subject: &str, window: i64) {
        self.lock()
            .entry((subject.to_string(), window))
            .or_default()
            .known = true;
    }

    /// Adds a finished request's tokens to `subject`'s window (written by the next sync).
    pub fn add_tokens(&self, subject: &str, window: i64, input: u64, output: u64) {
        let mut windows = self.lock();
        let w = windows.entry((subject.to_string(), window)).or_default();
        w.pending[INPUT_TOKENS] += input.min(i64::MAX as u64) as i64;
        w.pending[OUTPUT_TOKENS] += output.min(i64::MAX as u64) as i64;
    }

    /// Writes every window's pending counts to the store (one upsert each) and reads back the
    /// totals; windows of the current minute with nothing pending are read (one select each),
    /// so other replicas' counts arrive. Windows before `current` are dropped once written.
    pub async fn sync(&self, store: &Store, current: i64) -> Result<(), Error> {
        let work: Vec<((String, i64), Counts)> = {
            let mut windows = self.lock();
            windows.retain(|(_, start), w| *start >= current || w.pending != [0; 3]);
            windows
                .iter_mut()
                .map(|(k, w)| {
                    let delta = w.pending;
                    add(&mut w.in_flight, &delta);
                    w.pending = [0; 3];
                    (k.clone(), delta)
                })
                .collect()
        };
        let mut first_error = None;
        for ((subject, start), delta) in work {
            let result = if delta == [0; 3] {
                if start < current {
                    continue;
                }
                store
                    .query(
                        "SELECT requests, input_tokens, output_tokens FROM rate_windows \
                         WHERE subject = $1 AND window_start = $2",
                        vec![Value::Text(Some(subject.clone())), Value::Int(Some(start))],
                    )
                    .await
            } else {
                store
                    .query(
                        UPSERT,
                        vec![
                            Value::Text(Some(subject.clone())),
                            Value::Int(Some(start)),
                            // A given-back request makes the delta negative.
                            Value::Int(Some(delta[REQUESTS])),
                            Value::Int(Some(delta[INPUT_TOKENS])),
                            Value::Int(Some(delta[OUTPUT_TOKENS])),
                        ],
                    )
                    .await
            };
            let mut windows = self.lock();
            let Some(w) = windows.get_mut(&(subject, start)) else {
                continue;
            };
            sub(&mut w.in_flight, &delta);
            match result {
                Ok(rows) => {
                    if let Some(row) = rows.first() {
                        raise(&mut w.stored, &counts_of(row));
                    }
                    w.known = true;
                }
                Err(e) => {
                    // Still to be written: back to pending for the next sync.
                    add(&mut w.pending, &delta);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(tag: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "bridge-rates-{tag}-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("s.db").display());
        (Store::open(&url).await.unwrap(), dir)
    }

    async fn admit(r: &RateWindows, s: &Store, limits: [Option<u64>; 3]) -> Admit {
        match r.admit("user ann", 600, limits) {
            Admit::Unknown => r
                .admit_through_store(s, "user ann", 600, limits)
                .await
                .unwrap(),
            known => known,
        }
    }

    async fn stored(s: &Store) -> Counts {
        let rows = s
            .query(
                "SELECT requests, input_tokens, output_tokens FROM rate_windows WHERE subject = 'user ann'",
                vec![],
            )
            .await
            .unwrap();
        counts_of(&rows[0])
    }

    #[tokio::test]
    async fn one_replica_counts_exactly_and_writes_its_counts_in_one_batch() {
        let (s, dir) = store("one").await;
        let r = RateWindows::default();
        let rpm = [Some(3), None, None];
        // The first request of the window asks the store; the next two are counted here.
        assert_eq!(admit(&r, &s, rpm).await, Admit::Yes);
        assert_eq!(r.admit("user ann", 600, rpm), Admit::Yes);
        assert_eq!(r.admit("user ann", 600, rpm), Admit::Yes);
        assert_eq!(
            r.admit("user ann", 600, rpm),
            Admit::No {
                field: REQUESTS,
                used: 3
            }
        );
        assert_eq!(
            stored(&s).await,
            [1, 0, 0],
            "only the first went to the store"
        );
        r.add_tokens("user ann", 600, 40, 7);
        r.sync(&s, 600).await.unwrap();
        assert_eq!(stored(&s).await, [3, 40, 7]);
        // A later minute: the old window is dropped once written.
        r.sync(&s, 660).await.unwrap();
        assert!(r.lock().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn two_replicas_see_each_others_counts_after_a_sync() {
        let (s, dir) = store("two").await;
        let (a, b) = (RateWindows::default(), RateWindows::default());
        let rpm = [Some(4), None, None];
        assert_eq!(admit(&a, &s, rpm).await, Admit::Yes);
        assert_eq!(admit(&a, &s, rpm).await, Admit::Yes);
        assert_eq!(admit(&a, &s, rpm).await, Admit::Yes);
        a.sync(&s, 600).await.unwrap();
        // B's first request reads the store: 3 used by A, so B gets the last one.
        assert_eq!(admit(&b, &s, rpm).await, Admit::Yes);
        assert!(matches!(admit(&b, &s, rpm).await, Admit::No { .. }));
        // A learns of B's request at its next sync.
        assert_eq!(a.admit("user ann", 600, rpm), Admit::Yes, "not synced yet");
        a.sync(&s, 600).await.unwrap();
        b.sync(&s, 600).await.unwrap();
        a.sync(&s, 600).await.unwrap();
        assert_eq!(
            a.admit("user ann", 600, rpm),
            Admit::No {
                field: REQUESTS,
                used: 5
            },
            "one over: A admitted one before it synced"
        );
        assert_eq!(stored(&s).await, [5, 0, 0]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn without_the_store_a_replica_counts_alone_and_writes_its_counts_once_it_is_back() {
        let (s, dir) = store("outage").await;
        let r = RateWindows::default();
        let rpm = [Some(2), None, None];
        s.execute(
            "ALTER TABLE rate_windows RENAME TO rate_windows_away",
            vec![],
        )
        .await
        .unwrap();
        assert!(r
            .admit_through_store(&s, "user ann", 600, rpm)
            .await
            .is_err());
        r.count_alone("user ann", 600);
        assert_eq!(r.admit("user ann", 600, rpm), Admit::Yes);
        assert_eq!(r.admit("user ann", 600, rpm), Admit::Yes);
        assert!(matches!(r.admit("user ann", 600, rpm), Admit::No { .. }));
        assert!(r.sync(&s, 600).await.is_err(), "the store is still away");
        s.execute(
            "ALTER TABLE rate_windows_away RENAME TO rate_windows",
            vec![],
        )
        .await
        .unwrap();
        r.sync(&s, 600).await.unwrap();
        assert_eq!(stored(&s).await, [2, 0, 0]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn used_up_tokens_refuse_and_the_refused_request_is_given_back() {
        let (s, dir) = store("tokens").await;
        let r = RateWindows::default();
        let limits = [None, Some(100), None];
        assert_eq!(admit(&r, &s, limits).await, Admit::Yes);
        r.add_tokens("user ann", 600, 150, 0);
        assert_eq!(
            r.admit("user ann", 600, limits),
            Admit::No {
                field: INPUT_TOKENS,
                used: 150
            }
        );
        r.sync(&s, 600).await.unwrap();
        // Another replica's first request of the window: refused by the store's count, and
        // given back.
        let other = RateWindows::default();
        assert!(matches!(
            admit(&other, &s, limits).await,
            Admit::No {
                field: INPUT_TOKENS,
                ..
            }
        ));
        other.sync(&s, 600).await.unwrap();
        assert_eq!(stored(&s).await, [1, 150, 0]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
