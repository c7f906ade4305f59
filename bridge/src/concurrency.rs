//! Concurrent requests per spender, counted across replicas through leases in the store.
//!
//! Each replica counts its own requests in flight in memory (admission and release cost a
//! mutex, no store round trip) and, every [`crate::rate_windows::SYNC`], writes the counts of
//! its spenders with requests running to `concurrency_leases` (one row per spender and
//! replica, renewed with an expiry [`LEASE`] ahead; deleted once idle), then reads back what
//! the *other* replicas hold. A request is admitted when
//! `running here + running elsewhere < limit`.
//!
//! **Accuracy across replicas**: one replica alone is exact. With several, a replica sees the
//! others' requests as of its last sync, so for one sync interval plus a store round trip the
//! replicas together can run more than the limit: at most what the *other* replicas admitted in
//! that time. A replica that dies without releasing its rows stops renewing them, and its
//! slots are free again after [`LEASE`]. When the store cannot be reached, the other replicas'
//! last counts are forgotten after [`LEASE`] and each replica counts alone (the limit then holds
//! per replica), like the rate windows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::error::Error;
use crate::store::{Store, Value};

/// How long a replica's rows count without being renewed.
pub const LEASE: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Local {
    running: u64,
    /// The store holds a row for it (written with a non-zero count), to delete once idle.
    stored: bool,
}

#[derive(Debug)]
pub struct Concurrency {
    /// This replica's name in the store, new at each start.
    replica: String,
    local: Mutex<HashMap<String, Local>>,
    /// What the other replicas run per spender, and when that was read.
    others: Mutex<(HashMap<String, u64>, Option<Instant>)>,
}

impl Default for Concurrency {
    fn default() -> Concurrency {
        Concurrency {
            replica: uuid::Uuid::now_v7().simple().to_string(),
            local: Mutex::default(),
            others: Mutex::default(),
        }
    }
}

impl Concurrency {
    /// Takes a slot for `spender` if fewer than `max` requests run across the replicas;
    /// `Err(running)` otherwise.
    pub fn acquire(&self, spender: &str, max: u64) -> Result<(), u64> {
        let elsewhere = self.elsewhere(spender);
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let entry = local.entry(spender.to_string()).or_default();
        let running = entry.running + elsewhere;
        if running >= max {
            return Err(running);
        }
        entry.running += 1;
        Ok(())
    }

    pub fn release(&self, spender: &str) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = local.get_mut(spender) {
            e.running = e.running.saturating_sub(1);
        }
    }

    fn elsewhere(&self, spender: &str) -> u64 {
        let others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        match others.1 {
            Some(at) if at.elapsed() < LEASE => others.0.get(spender).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// Writes this replica's changed and running counts, then reads the other replicas' (one
    /// small indexed query; the gateway calls this only while rate limits are configured).
    pub async fn sync(&self, store: &Store) -> Result<(), Error> {
        let now = Utc::now().timestamp_micros();
        let expires = now + LEASE.as_micros() as i64;
        // Spenders with requests running (their rows are renewed at every sync so that they
        // do not expire) and idle ones whose row is still stored (to delete).
        let due: Vec<(String, u64)> = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| e.running > 0 || e.stored)
            .map(|(spender, e)| (spender.clone(), e.running))
            .collect();
        if !due.is_empty() {
            let key = |spender: &str| {
                vec![
                    Value::Text(Some(spender.to_string())),
                    Value::Text(Some(self.replica.clone())),
                ]
            };
            let (running, idle): (Vec<_>, Vec<_>) = due.iter().partition(|(_, n)| *n > 0);
            let upserts: Vec<Vec<Value>> = running
                .iter()
                .map(|(spender, n)| {
                    let mut row = key(spender);
                    row.extend([Value::Int(Some(*n as i64)), Value::Int(Some(expires))]);
                    row
                })
                .collect();
            let deletes: Vec<Vec<Value>> = idle.iter().map(|(spender, _)| key(spender)).collect();
            let mut groups = vec![
                (
                    "INSERT INTO concurrency_leases (spender, replica, running, expires_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (spender, replica) DO UPDATE SET running = excluded.running, expires_at = excluded.expires_at"
                        .to_string(),
                    upserts,
                ),
                (
                    "DELETE FROM concurrency_leases WHERE spender = $1 AND replica = $2".to_string(),
                    deletes,
                ),
            ];
            // An empty group would still cost PostgreSQL a prepare.
            groups.retain(|(_, rows)| !rows.is_empty());
            store.execute_groups(groups).await?;
            // A spender taken again since its row was deleted is written anew next time.
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            for (spender, n) in &due {
                if let Some(e) = local.get_mut(spender) {
                    e.stored = *n > 0;
                }
            }
        }
        let rows = store
            .query(
                "SELECT spender, CAST(SUM(running) AS BIGINT) FROM concurrency_leases \
                 WHERE replica <> $1 AND expires_at > $2 GROUP BY spender",
                vec![
                    Value::Text(Some(self.replica.clone())),
                    Value::Int(Some(now)),
                ],
            )
            .await?;
        let fresh: HashMap<String, u64> = rows
            .iter()
            .map(|r| (r[0].text(), r[1].int().max(0) as u64))
            .collect();
        *self.others.lock().unwrap_or_else(|p| p.into_inner()) = (fresh, Some(Instant::now()));
        // Idle spenders without a row need no entry.
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.retain(|_, e| e.running > 0 || e.stored);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_replica_is_exact_and_releases_free_slots() {
        let c = Concurrency::default();
        assert_eq!(c.acquire("user a", 2), Ok(()));
        assert_eq!(c.acquire("user a", 2), Ok(()));
        assert_eq!(c.acquire("user a", 2), Err(2));
        assert_eq!(c.acquire("user b", 2), Ok(()));
        c.release("user a");
        assert_eq!(c.acquire("user a", 2), Ok(()));
    }

    #[test]
    fn other_replicas_count_until_their_lease_would_have_expired() {
        let c = Concurrency::default();
        *c.others.lock().unwrap() = (
            HashMap::from([("user a".to_string(), 2)]),
            Some(Instant::now()),
        );
        assert_eq!(c.acquire("user a", 3), Ok(()));
        assert_eq!(c.acquire("user a", 3), Err(3));
        // Read longer ago than a lease: forgotten (the store is unreachable; count alone).
        *c.others.lock().unwrap() = (
            HashMap::from([("user a".to_string(), 2)]),
            Some(Instant::now() - LEASE),
        );
        assert_eq!(c.acquire("user a", 3), Ok(()));
    }
}
