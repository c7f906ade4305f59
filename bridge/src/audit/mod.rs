//! Boundary events in Bridge's store: what agents ship (`POST /boundary/v1/events`), and the
//! queries over them (`llm-bridge events`, `llm-bridge policy report|simulate`, the audit page).
//!
//! - [`ingest`]: a batch from an agent, validated as a whole, stored in one transaction,
//!   idempotent by `event.id` (multi-row `INSERT ... ON CONFLICT (id) DO NOTHING`).
//! - [`query`]: list, top, one session's events, and export page by page (never the whole
//!   table in memory).
//! - [`report`]: what enforce mode would deny for a template (rollout report).
//! - [`simulate`]: stored decisions replayed against a candidate policy with
//!   `boundary_policy`'s own verdict, i.e. the code the agent enforces with.
//!
//! Each event is stored as the JSON object the agent wrote (plus `agent.id`, `template`,
//! `workspace`, `received_at` from the server), with the fields queries need copied into
//! columns (docs/CONTROL_PLANE.md, "Indexed columns"). Indexes, each for named queries:
//!
//! | index                               | serves                                               |
//! |-------------------------------------|------------------------------------------------------|
//! | `events (id)` (primary key)         | idempotent insert                                    |
//! | `events_ts (ts, id)`                | list/top by time, export and simulate (keyset pages), retention |
//! | `events_action_ts (action, ts)`     | `events list/top --action deny`                      |
//! | `events_template_action_ts (template, action, ts)` | `--template`, `policy report`          |
//! | `events_session_ts (session_id, ts)`| `--session`, a session's timeline                    |
//! | `events_workspace_ts (workspace, ts)` | `--workspace`                                      |
//! | `events_domain_ts (domain, ts)`     | `--domain`                                           |
//!
//! `--process` has no index of its own: it filters the rows another index finds (a process
//! name is rarely selective alone, and every index costs ingest throughput).

pub mod ingest;
pub mod query;
pub mod report;
pub mod simulate;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::store::Value;

/// One stored event: the indexed columns and the event as JSON text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// `event.id`, the UUID the agent's spool assigned.
    pub id: String,
    /// `timestamp` of the event (the server's `received_at` if it had none).
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// The agent that shipped it, its template and workspace (from its token).
    pub agent_id: String,
    pub template: String,
    pub workspace: Option<String>,
    pub session_id: Option<String>,
    /// `event.name`: `boundary.decision`, `boundary.dns`, `boundary.session.start`, ...
    pub event_name: String,
    /// `event.action`: `allow`, `deny`, `would_deny` (or none).
    pub action: Option<String>,
    /// `destination.address`.
    pub destination: Option<String>,
    pub port: Option<u16>,
    /// First of `boundary.destination.domains`, or `dns.question.name`.
    pub domain: Option<String>,
    /// `process.executable.name`.
    pub process: Option<String>,
    pub user_name: Option<String>,
    /// `boundary.event.count`: how many identical decisions this event stands for.
    pub count: u64,
    /// The event as stored (JSON object text).
    pub body: String,
}

/// The columns in table order, for inserts and selects.
pub(crate) const COLUMNS: &str = "id, ts, received_at, agent_id, template, workspace, \
    session_id, event_name, action, destination, port, domain, process, user_name, count, body";
pub(crate) const COLUMN_COUNT: usize = 16;

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

impl EventRow {
    pub(crate) fn params(&self) -> [Value; COLUMN_COUNT] {
        let t = |s: &Option<String>| Value::Text(s.clone());
        [
            Value::Text(Some(self.id.clone())),
            Value::Int(Some(micros(self.ts))),
            Value::Int(Some(micros(self.received_at))),
            Value::Text(Some(self.agent_id.clone())),
            Value::Text(Some(self.template.clone())),
            t(&self.workspace),
            t(&self.session_id),
            Value::Text(Some(self.event_name.clone())),
            t(&self.action),
            t(&self.destination),
            Value::Int(self.port.map(i64::from)),
            t(&self.domain),
            t(&self.process),
            t(&self.user_name),
            Value::Int(Some(self.count as i64)),
            Value::Text(Some(self.body.clone())),
        ]
    }

    pub(crate) fn from_values(r: &[Value]) -> EventRow {
        EventRow {
            id: r[0].text(),
            ts: from_micros(r[1].int()),
            received_at: from_micros(r[2].int()),
            agent_id: r[3].text(),
            template: r[4].text(),
            workspace: r[5].opt_text(),
            session_id: r[6].opt_text(),
            event_name: r[7].text(),
            action: r[8].opt_text(),
            destination: r[9].opt_text(),
            port: r[10].opt_int().and_then(|p| u16::try_from(p).ok()),
            domain: r[11].opt_text(),
            process: r[12].opt_text(),
            user_name: r[13].opt_text(),
            count: r[14].int().max(0) as u64,
            body: r[15].text(),
        }
    }
}
