//! The rollout report: what enforce mode would deny for a template, from the events its
//! agents shipped (`would_deny` in audit mode, plus what was already denied).
//!
//! One row per destination (domain, address, port): the decisions (sum of
//! `boundary.event.count`), the workspaces and processes involved, and when it was first and
//! last seen. Read before `llm-bridge policy enforce`: every row is a connection that
//! would fail.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{from_micros, micros};
use crate::error::Error;
use crate::store::{Store, Value};

/// One destination enforce mode would deny.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// The destination's domain (first known name) or the DNS question.
    pub domain: Option<String>,
    /// The address (none for a DNS question refused by name).
    pub destination: Option<String>,
    pub port: Option<u16>,
    /// Decisions: the sum of `boundary.event.count`.
    pub count: u64,
    /// `would_deny`, `deny` or both.
    pub actions: Vec<String>,
    pub workspaces: Vec<String>,
    pub processes: Vec<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// What enforce mode would deny for `template` since `since`, most decisions first.
pub async fn report(
    store: &Store,
    template: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<ReportRow>, Error> {
    // Grouped by the list columns too, then folded here: `string_agg`/`group_concat` differ
    // between the backends, and the groups are few compared to the events.
    let rows = store
        .query(
            // MATERIALIZED: the (template, action, ts) index finds the rows, whatever index
            // the grouping would like (see `query::top`).
            "WITH m AS MATERIALIZED (SELECT domain, destination, port, workspace, process, \
             action, count, ts FROM events \
             WHERE template = $1 AND action IN ('deny', 'would_deny') AND ts >= $2) \
             SELECT domain, destination, port, workspace, process, action, \
             CAST(SUM(count) AS BIGINT), CAST(MIN(ts) AS BIGINT), CAST(MAX(ts) AS BIGINT) \
             FROM m GROUP BY domain, destination, port, workspace, process, action",
            vec![
                Value::Text(Some(template.to_string())),
                Value::Int(Some(since.map(micros).unwrap_or(i64::MIN))),
            ],
        )
        .await?;
    type Key = (Option<String>, Option<String>, Option<i64>);
    #[derive(Default)]
    struct Acc {
        count: u64,
        actions: BTreeSet<String>,
        workspaces: BTreeSet<String>,
        processes: BTreeSet<String>,
        first: Option<i64>,
        last: Option<i64>,
    }
    let mut groups: BTreeMap<Key, Acc> = BTreeMap::new();
    for r in rows {
        let acc = groups
            .entry((r[0].opt_text(), r[1].opt_text(), r[2].opt_int()))
            .or_default();
        acc.count += r[6].int().max(0) as u64;
        acc.workspaces.extend(r[3].opt_text());
        acc.processes.extend(r[4].opt_text());
        acc.actions.extend(r[5].opt_text());
        let (first, last) = (r[7].int(), r[8].int());
        acc.first = Some(acc.first.map_or(first, |f| f.min(first)));
        acc.last = Some(acc.last.map_or(last, |l| l.max(last)));
    }
    let mut out: Vec<ReportRow> = groups
        .into_iter()
        .map(|((domain, destination, port), a)| ReportRow {
            domain,
            destination,
            port: port.and_then(|p| u16::try_from(p).ok()),
            count: a.count,
            actions: a.actions.into_iter().collect(),
            workspaces: a.workspaces.into_iter().collect(),
            processes: a.processes.into_iter().collect(),
            first_seen: from_micros(a.first.unwrap_or(0)),
            last_seen: from_micros(a.last.unwrap_or(0)),
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.domain.cmp(&b.domain)));
    Ok(out)
}
