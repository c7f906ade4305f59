//! Reading stored events: filtered lists (newest first), top-N groupings, one session's
//! timeline, and exports that walk the table page by page.
//!
//! Every statement is built from fixed SQL text; values are always bound parameters.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{micros, EventRow, COLUMNS};
use crate::error::Error;
use crate::store::{Store, Value};

pub use super::report::{report, ReportRow};

/// Rows per page of [`export`]: big enough that a page costs little more than its rows,
/// small enough that memory stays flat.
pub const EXPORT_PAGE: u32 = 5000;

/// Which events; every field narrows (`None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events before this time.
    pub until: Option<DateTime<Utc>>,
    /// `allow`, `deny`, `would_deny`.
    pub action: Option<String>,
    pub template: Option<String>,
    pub workspace: Option<String>,
    /// The indexed domain (first of the destination's domains, or the DNS question).
    pub domain: Option<String>,
    pub session: Option<String>,
    /// `process.executable.name`.
    pub process: Option<String>,
    /// `event.name`, e.g. `boundary.decision`.
    pub event_name: Option<String>,
    /// At most this many rows (lists, top, export).
    pub limit: Option<u32>,
}

impl EventFilter {
    /// ` AND ...` conditions, their parameters appended to `params`.
    fn conditions(&self, params: &mut Vec<Value>) -> String {
        let mut sql = String::new();
        let mut text = |column: &str, value: &Option<String>, params: &mut Vec<Value>| {
            if let Some(v) = value {
                params.push(Value::Text(Some(v.clone())));
                sql.push_str(&format!(" AND {column} = ${}", params.len()));
            }
        };
        text("template", &self.template, params);
        text("action", &self.action, params);
        text("workspace", &self.workspace, params);
        text("domain", &self.domain, params);
        text("session_id", &self.session, params);
        text("process", &self.process, params);
        text("event_name", &self.event_name, params);
        if let Some(t) = self.since {
            params.push(Value::Int(Some(micros(t))));
            sql.push_str(&format!(" AND ts >= ${}", params.len()));
        }
        if let Some(t) = self.until {
            params.push(Value::Int(Some(micros(t))));
            sql.push_str(&format!(" AND ts < ${}", params.len()));
        }
        sql
    }
}

/// Events matching `filter`, newest first (events of the same microsecond in no set order).
pub async fn list_events(store: &Store, filter: &EventFilter) -> Result<Vec<EventRow>, Error> {
    let mut params = Vec::new();
    let mut sql = format!(
        // By time only: with an id tie-breaker, only the (ts, id) index gives the order, and
        // SQLite would walk it past every unselected row instead of taking the filter's index.
        "SELECT {COLUMNS} FROM events WHERE 1 = 1{} ORDER BY ts DESC",
        filter.conditions(&mut params)
    );
    if let Some(limit) = filter.limit {
        params.push(Value::Int(Some(i64::from(limit))));
        sql.push_str(&format!(" LIMIT ${}", params.len()));
    }
    let rows = store.query(&sql, params).await?;
    Ok(rows.iter().map(|r| EventRow::from_values(r)).collect())
}

/// One session's events, oldest first (its timeline).
pub async fn session_events(
    store: &Store,
    session: &str,
    limit: Option<u32>,
) -> Result<Vec<EventRow>, Error> {
    let mut params = vec![Value::Text(Some(session.to_string()))];
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE session_id = $1 ORDER BY ts");
    if let Some(limit) = limit {
        params.push(Value::Int(Some(i64::from(limit))));
        sql.push_str(" LIMIT $2");
    }
    let rows = store.query(&sql, params).await?;
    Ok(rows.iter().map(|r| EventRow::from_values(r)).collect())
}

/// What `top` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    Domain,
    Workspace,
    Process,
    Template,
    /// Address and port.
    Destination,
}

impl TopBy {
    pub fn label(self) -> &'static str {
        match self {
            TopBy::Domain => "domain",
            TopBy::Workspace => "workspace",
            TopBy::Process => "process",
            TopBy::Template => "template",
            TopBy::Destination => "destination",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            TopBy::Domain => "domain",
            TopBy::Workspace => "workspace",
            TopBy::Process => "process",
            TopBy::Template => "template",
            TopBy::Destination => "destination, port",
        }
    }
}

/// One group of [`top`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopRow {
    /// The group's value (`192.0.2.7:443` for destinations); `None` for events without one.
    pub key: Option<String>,
    /// Decisions: the sum of `boundary.event.count`.
    pub count: u64,
    /// Stored events (one may stand for several decisions).
    pub events: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// The groups with the most decisions among the events matching `filter` (at most
/// `filter.limit`, default 20).
pub async fn top(store: &Store, by: TopBy, filter: &EventFilter) -> Result<Vec<TopRow>, Error> {
    let mut params = Vec::new();
    let conditions = filter.conditions(&mut params);
    params.push(Value::Int(Some(i64::from(filter.limit.unwrap_or(20)))));
    let columns = by.columns();
    let n = columns.split(", ").count();
    // The filter runs first, on the index its conditions choose (MATERIALIZED, understood by
    // both backends): left to itself, SQLite prefers the index of the grouped column (to
    // group without sorting) and walks all of it, 10 M entries, for a few thousand rows.
    let sql = format!(
        "WITH m AS MATERIALIZED (SELECT {columns}, count, ts FROM events WHERE 1 = 1{conditions}) \
         SELECT {columns}, CAST(SUM(count) AS BIGINT), CAST(COUNT(*) AS BIGINT), \
         CAST(MIN(ts) AS BIGINT), CAST(MAX(ts) AS BIGINT) FROM m \
         GROUP BY {columns} ORDER BY {} DESC, 1 LIMIT ${}",
        n + 1,
        params.len()
    );
    let rows = store.query(&sql, params).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let key = match by {
                TopBy::Destination => r[0].opt_text().map(|a| match r[1].opt_int() {
                    Some(p) if a.contains(':') => format!("[{a}]:{p}"),
                    Some(p) => format!("{a}:{p}"),
                    None => a,
                }),
                _ => r[0].opt_text(),
            };
            TopRow {
                key,
                count: r[n].int().max(0) as u64,
                events: r[n + 1].int().max(0) as u64,
                first_seen: super::from_micros(r[n + 2].int()),
                last_seen: super::from_micros(r[n + 3].int()),
            }
        })
        .collect())
}

/// Calls `each` on every event matching `filter`, oldest first, reading [`EXPORT_PAGE`] rows
/// at a time (keyset pages on `(ts, id)`: each page is an index range, however deep).
/// Stops at `filter.limit` rows or at the first error of `each`. Returns how many rows.
pub async fn export<F>(store: &Store, filter: &EventFilter, mut each: F) -> Result<u64, Error>
where
    F: FnMut(&EventRow) -> Result<(), Error>,
{
    let mut after: Option<(i64, String)> = None;
    let mut done = 0u64;
    let cap = filter.limit.map(u64::from);
    loop {
        let page = match cap {
            Some(cap) => (cap - done).min(u64::from(EXPORT_PAGE)),
            None => u64::from(EXPORT_PAGE),
        };
        if page == 0 {
            return Ok(done);
        }
        let mut params = Vec::new();
        // After the first page the cursor is the lower bound, alone: given `since` too,
        // SQLite starts the index range there and every page would re-read all before it.
        let page_filter = EventFilter {
            since: if after.is_some() { None } else { filter.since },
            ..filter.clone()
        };
        let mut sql = format!(
            "SELECT {COLUMNS} FROM events WHERE 1 = 1{}",
            page_filter.conditions(&mut params)
        );
        if let Some((ts, id)) = &after {
            params.push(Value::Int(Some(*ts)));
            params.push(Value::Text(Some(id.clone())));
            let (t, i) = (params.len() - 1, params.len());
            sql.push_str(&format!(" AND ts >= ${t} AND (ts, id) > (${t}, ${i})"));
        }
        params.push(Value::Int(Some(page as i64)));
        sql.push_str(&format!(" ORDER BY ts, id LIMIT ${}", params.len()));
        let rows = store.query(&sql, params).await?;
        let fetched = rows.len() as u64;
        for r in &rows {
            each(&EventRow::from_values(r))?;
        }
        done += fetched;
        if fetched < page {
            return Ok(done);
        }
        let last = rows.last().expect("a full page");
        after = Some((last[1].int(), last[0].text()));
    }
}

/// Number of stored events.
pub async fn count_events(store: &Store) -> Result<u64, Error> {
    let rows = store
        .query("SELECT CAST(COUNT(*) AS BIGINT) FROM events", vec![])
        .await?;
    Ok(rows.first().map(|r| r[0].int()).unwrap_or(0).max(0) as u64)
}

/// Deletes up to `limit` events older than `before` (by their timestamp), oldest first;
/// returns how many. One short transaction per call (see `retention`); on PostgreSQL rows
/// another replica is deleting are skipped rather than waited for.
pub async fn delete_events_before(
    store: &Store,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, Error> {
    let lock = if store.is_postgres() {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    store
        .execute(
            &format!("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < $1 ORDER BY ts LIMIT $2{lock})"),
            vec![Value::Int(Some(micros(before))), Value::Int(Some(i64::from(limit)))],
        )
        .await
}

/// Whether any event is older than `before`: a read, which never waits for SQLite's write
/// lock, so a purge with nothing to do never holds the store's connection behind a writer.
pub async fn any_events_before(store: &Store, before: DateTime<Utc>) -> Result<bool, Error> {
    let rows = store
        .query(
            "SELECT id FROM events WHERE ts < $1 LIMIT 1",
            vec![Value::Int(Some(micros(before)))],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// How many events are older than `before` (what a dry-run purge would delete).
pub async fn count_events_before(store: &Store, before: DateTime<Utc>) -> Result<u64, Error> {
    let rows = store
        .query(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM events WHERE ts < $1",
            vec![Value::Int(Some(micros(before)))],
        )
        .await?;
    Ok(rows.first().map(|r| r[0].int()).unwrap_or(0).max(0) as u64)
}
