//! Retention: how long records, and the prompts in them, are kept.
//!
//! ```yaml
//! retention:
//!   interceptions: 400d   # whole records (metadata, tokens, cost used for chargeback)
//!   prompts: 30d          # prompt text and tool-call arguments; the record itself stays
//!   purge_interval: 1h    # how often `llm-bridge serve` purges (default 1h)
//! ```
//!
//! Without `retention:` everything is kept. `llm-bridge serve` purges at start and then every
//! `purge_interval`; `llm-bridge purge --before` does the same once, by hand. A purge works in
//! short batches ([`BATCH`] rows per transaction), so the recorder's inserts never wait long,
//! and is safe with several replicas on one PostgreSQL database (see
//! [`Store::delete_interceptions_before`]): each replica may purge, none blocks another.
//! The spool and journal are not purged: they hold only records on their way to the store.
//!
//! Boundary events shipped by agents are kept for `control_plane.events_retention` (default
//! [`DEFAULT_EVENTS_RETENTION_DAYS`] days) and deleted by the same job, in the same short
//! batches ([`purge_events`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::store::Store;

/// Rows per purge transaction.
pub const BATCH: u32 = 1000;
/// Default age of the Boundary events `llm-bridge serve` keeps (`control_plane.events_retention`).
pub const DEFAULT_EVENTS_RETENTION_DAYS: i64 = 90;
/// Default time between two purges of `llm-bridge serve`.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// The `retention:` of bridge.yaml.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Age beyond which a record is deleted; `None`: kept forever.
    pub interceptions: Option<chrono::Duration>,
    /// Age beyond which a record's prompt text and tool-call arguments are dropped.
    pub prompts: Option<chrono::Duration>,
    /// Age beyond which a Boundary event is deleted; `None`: kept forever.
    pub events: Option<chrono::Duration>,
    pub purge_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            interceptions: None,
            prompts: None,
            events: Some(chrono::Duration::days(DEFAULT_EVENTS_RETENTION_DAYS)),
            purge_interval: DEFAULT_PURGE_INTERVAL,
        }
    }
}

impl Retention {
    /// Whether any interception record or prompt is ever purged (Boundary events have their
    /// own retention, on by default).
    pub fn is_set(&self) -> bool {
        self.interceptions.is_some() || self.prompts.is_some()
    }

    /// The cutoffs at `now`: `(records before, prompts before)`.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        (
            self.interceptions.map(|d| now - d),
            self.prompts.map(|d| now - d),
        )
    }
}

/// An age: `90d`, `12h`, `30m`, `2w`, `45s` (a positive whole number and a unit).
pub fn parse_age(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not an age: use a number and a unit, like 90d, 12h, 30m or 2w");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(format!("{s:?}: an age must be more than zero"));
    }
    match unit {
        's' => chrono::Duration::try_seconds(n),
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        'w' => chrono::Duration::try_weeks(n),
        _ => None,
    }
    .ok_or_else(bad)
}

/// What a purge removed (or, dry, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    /// Records deleted.
    pub interceptions: u64,
    /// Records whose prompt text and tool-call arguments were dropped.
    pub prompts: u64,
}

/// Deletes records started before `records_before` and drops the text of those started before
/// `prompts_before`, in batches. With `dry_run`, only counts.
pub async fn purge(
    store: &Store,
    records_before: Option<DateTime<Utc>>,
    prompts_before: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<Purged, Error> {
    if dry_run {
        let (interceptions, prompts) = store
            .count_purgeable(records_before, prompts_before)
            .await?;
        return Ok(Purged {
            interceptions,
            prompts,
        });
    }
    let mut purged = Purged::default();
    if let Some(before) = records_before {
        loop {
            let n = store.delete_interceptions_before(before, BATCH).await?;
            purged.interceptions += n;
            if n == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if let Some(before) = prompts_before {
        loop {
            let (seen, with_text) = store.drop_prompts_before(before, BATCH).await?;
            purged.prompts += with_text;
            if seen == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(purged)
}

/// Deletes Boundary events older than `before` (by their timestamp), [`BATCH`] per
/// transaction; with `dry_run`, only counts. Returns how many.
pub async fn purge_events(
    store: &Store,
    before: DateTime<Utc>,
    dry_run: bool,
) -> Result<u64, Error> {
    if dry_run {
        return crate::audit::query::count_events_before(store, before).await;
    }
    // Most runs find nothing: ask first, without a write (see `any_events_before`).
    if !crate::audit::query::any_events_before(store, before).await? {
        return Ok(0);
    }
    let mut deleted = 0;
    loop {
        let n = crate::audit::query::delete_events_before(store, before, BATCH).await?;
        deleted += n;
        if n == 0 {
            return Ok(deleted);
        }
        tokio::task::yield_now().await;
    }
}

/// The purge job of `llm-bridge serve`: purges now and then every `purge_interval`. A failed
/// purge (store down) is logged and tried again at the next interval.
pub fn spawn_purge_job(store: Store, retention: Retention) -> Option<tokio::task::JoinHandle<()>> {
    if !retention.is_set() && retention.events.is_none() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(retention.purge_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (records_before, prompts_before) = retention.cutoffs(Utc::now());
            if let Some(age) = retention.events {
                let before = Utc::now() - age;
                match purge_events(&store, before, false).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        events_deleted = n,
                        events_before = before.to_rfc3339(),
                        "retention purge of Boundary events"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "retention purge of Boundary events failed; trying again at the next interval")
                    }
                }
            }
            if records_before.is_none() && prompts_before.is_none() {
                continue;
            }
            match purge(&store, records_before, prompts_before, false).await {
                Ok(p) if p == Purged::default() => {
                    tracing::debug!("retention purge: nothing to remove")
                }
                Ok(p) => tracing::info!(
                    interceptions_deleted = p.interceptions,
                    prompts_dropped = p.prompts,
                    records_before = records_before.map(|t| t.to_rfc3339()),
                    prompts_before = prompts_before.map(|t| t.to_rfc3339()),
                    "retention purge"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "retention purge failed; trying again at the next interval")
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_a_positive_number_and_a_unit() {
        assert_eq!(parse_age("90d").unwrap(), chrono::Duration::days(90));
        assert_eq!(parse_age("2w").unwrap(), chrono::Duration::weeks(2));
        assert_eq!(parse_age(" 12h ").unwrap(), chrono::Duration::hours(12));
        for bad in ["", "d", "90", "0d", "-1d", "9x", "1.5d"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }
}
