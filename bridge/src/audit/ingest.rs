//! A batch of events from an agent: validated as a whole, stored in one transaction.
//!
//! The contract (docs/CONTROL_PLANE.md, "POST /boundary/v1/events"): at most
//! [`MAX_BATCH_EVENTS`] events and [`MAX_BATCH_BYTES`] per batch (413 beyond); one malformed
//! event refuses the whole batch with 400 and its index, and nothing is stored; storage is
//! idempotent by `event.id`, so a batch resent after a timeout or a restart is counted as
//! duplicates, not stored twice; the answer comes only after the commit.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::{EventRow, COLUMNS, COLUMN_COUNT};
use crate::error::Error;
use crate::store::{Store, Value};

/// Events per batch, at most.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Bytes per batch body, at most.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Rows per INSERT statement: 250 × 16 parameters stays far below SQLite's and PostgreSQL's
/// limits, and a handful of statement shapes keeps the statement cache useful.
const ROWS_PER_STATEMENT: usize = 250;

/// Who shipped a batch: from the agent's token, never from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub agent_id: String,
    pub template: String,
    pub workspace: Option<String>,
}

/// The answer to a stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stored {
    /// Events stored now.
    pub accepted: u64,
    /// Events whose id was already stored (a batch sent again).
    pub duplicates: u64,
}

/// Why a batch is refused, with the HTTP status it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 400 (malformed) or 413 (too large).
    pub status: u16,
    pub message: String,
}

impl Refused {
    fn bad(message: String) -> Refused {
        Refused {
            status: 400,
            message,
        }
    }
}

/// Parses and validates a batch body into rows, adding what the server knows (`agent.id`,
/// `template`, `workspace`, `received_at`). Any problem refuses the whole batch.
pub fn parse_batch(
    body: &[u8],
    origin: &Origin,
    received_at: DateTime<Utc>,
) -> Result<Vec<EventRow>, Refused> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(Refused {
            status: 413,
            message: format!(
                "batch of {} bytes: at most {MAX_BATCH_BYTES} bytes (4 MiB) per batch; send smaller batches",
                body.len()
            ),
        });
    }
    #[derive(serde::Deserialize)]
    struct Batch {
        events: Vec<Json>,
    }
    let batch: Batch = serde_json::from_slice(body).map_err(|e| {
        Refused::bad(format!(
            "body is not a batch ({e}): expected {{\"events\": [EVENT, ...]}}"
        ))
    })?;
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(Refused {
            status: 413,
            message: format!(
                "batch of {} events: at most {MAX_BATCH_EVENTS} events per batch",
                batch.events.len()
            ),
        });
    }
    let received = received_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            event_row(event, origin, received_at, &received)
                .map_err(|m| Refused::bad(format!("events[{i}]: {m}; nothing of this batch was stored")))
        })
        .collect()
}

/// One event: its columns, and its JSON with the server's fields.
fn event_row(
    event: Json,
    origin: &Origin,
    received_at: DateTime<Utc>,
    received: &str,
) -> Result<EventRow, String> {
    let Json::Object(mut m) = event else {
        return Err("not a JSON object".into());
    };
    let id = match m.get("event.id") {
        Some(Json::String(s)) => Uuid::parse_str(s)
            .map_err(|_| format!("`event.id` {s:?} is not a UUID"))?
            .hyphenated()
            .to_string(),
        Some(_) => return Err("`event.id` must be a string (a UUID)".into()),
        None => {
            return Err(
                "no `event.id` (the shipper gives each event a UUID when it enters the spool)"
                    .into(),
            )
        }
    };
    let event_name = text(&m, "event.name")?
        .ok_or_else(|| "no `event.name` (boundary.decision, boundary.dns, ...)".to_string())?;
    let ts = match m.get("timestamp") {
        None | Some(Json::Null) => received_at,
        Some(Json::String(s)) => DateTime::parse_from_rfc3339(s)
            .map_err(|_| format!("`timestamp` {s:?} is not an RFC 3339 time"))?
            .with_timezone(&Utc),
        Some(_) => return Err("`timestamp` must be an RFC 3339 string".into()),
    };
    let port = match m.get("destination.port") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("`destination.port` {v} is not a port (0-65535)"))?,
        ),
    };
    let count = match m.get("boundary.event.count") {
        None | Some(Json::Null) => 1,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("`boundary.event.count` {v} is not a whole number"))?,
    };
    let first_domain = match m.get("boundary.destination.domains") {
        None | Some(Json::Null) => None,
        Some(Json::Array(a)) => {
            if a.iter().any(|d| !d.is_string()) {
                return Err("`boundary.destination.domains` must be a list of strings".into());
            }
            a.first().and_then(Json::as_str).map(str::to_string)
        }
        Some(_) => return Err("`boundary.destination.domains` must be a list of strings".into()),
    };
    let domain = match first_domain {
        Some(d) => Some(d),
        None => text(&m, "dns.question.name")?,
    };
    let row = EventRow {
        id,
        ts,
        received_at,
        agent_id: origin.agent_id.clone(),
        template: origin.template.clone(),
        workspace: origin.workspace.clone(),
        session_id: text(&m, "session.id")?,
        event_name,
        action: text(&m, "event.action")?,
        destination: text(&m, "destination.address")?,
        port,
        domain,
        process: text(&m, "process.executable.name")?,
        user_name: text(&m, "user.name")?,
        count,
        body: String::new(),
    };
    // The token says who shipped it: whatever the body claimed is replaced.
    m.insert("agent.id".into(), origin.agent_id.clone().into());
    m.insert("template".into(), origin.template.clone().into());
    m.insert(
        "workspace".into(),
        origin.workspace.clone().map_or(Json::Null, Json::from),
    );
    m.insert("received_at".into(), received.into());
    Ok(EventRow {
        body: Json::Object(m).to_string(),
        ..row
    })
}

/// A string field, absent or null as `None`; any other type is an error naming the field.
fn text(m: &Map<String, Json>, field: &str) -> Result<Option<String>, String> {
    match m.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("`{field}` must be a string, not {v}")),
    }
}

/// Stores rows in one transaction, skipping ids already stored.
pub async fn store_rows(store: &Store, rows: &[EventRow]) -> Result<Stored, Error> {
    if rows.is_empty() {
        return Ok(Stored {
            accepted: 0,
            duplicates: 0,
        });
    }
    let groups: Vec<(String, Vec<Vec<Value>>)> = rows
        .chunks(ROWS_PER_STATEMENT)
        .map(|chunk| {
            let mut params = Vec::with_capacity(chunk.len() * COLUMN_COUNT);
            let tuples: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(r, row)| {
                    params.extend(row.params());
                    let cells: Vec<String> = (1..=COLUMN_COUNT)
                        .map(|c| format!("${}", r * COLUMN_COUNT + c))
                        .collect();
                    format!("({})", cells.join(", "))
                })
                .collect();
            (
                format!(
                    "INSERT INTO events ({COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING",
                    tuples.join(", ")
                ),
                vec![params],
            )
        })
        .collect();
    let accepted = store.execute_groups(groups).await?;
    Ok(Stored {
        accepted,
        duplicates: rows.len() as u64 - accepted,
    })
}

/// Parses, validates and stores a batch: the whole of `POST /boundary/v1/events` after
/// authentication. `Ok(Err(refused))`: the batch is refused and nothing is stored; `Err`: the
/// store failed (the agent keeps the batch and retries).
pub async fn ingest(
    store: &Store,
    body: &[u8],
    origin: &Origin,
) -> Result<Result<Stored, Refused>, Error> {
    match parse_batch(body, origin, Utc::now()) {
        Ok(rows) => store_rows(store, &rows).await.map(Ok),
        Err(refused) => Ok(Err(refused)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            agent_id: "agent-1".into(),
            template: "python-dev".into(),
            workspace: Some("ws-42".into()),
        }
    }

    fn parse(body: &str) -> Result<Vec<EventRow>, Refused> {
        parse_batch(body.as_bytes(), &origin(), Utc::now())
    }

    #[test]
    fn a_decision_fills_the_indexed_columns_and_the_token_overrides_the_body() {
        let rows = parse(
            r#"{"events": [{"event.id": "0190F1E2-3C4D-7E5F-8A9B-0C1D2E3F4A5B", "event.name": "boundary.decision",
            "event.action": "deny", "timestamp": "2026-11-26T10:00:00.5Z", "session.id": "s1",
            "destination.address": "192.0.2.7", "destination.port": 443,
            "boundary.destination.domains": ["evil.example", "other.example"],
            "process.executable.name": "curl", "user.name": "alice", "boundary.event.count": 3,
            "template": "forged", "workspace": "forged"}]}"#,
        )
        .unwrap();
        let r = &rows[0];
        assert_eq!(r.id, "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(r.ts.to_rfc3339(), "2026-11-26T10:00:00.500+00:00");
        assert_eq!(r.domain.as_deref(), Some("evil.example"));
        assert_eq!((r.port, r.count), (Some(443), 3));
        assert_eq!(r.template, "python-dev");
        let body: Json = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["template"], "python-dev");
        assert_eq!(body["workspace"], "ws-42");
        assert_eq!(body["agent.id"], "agent-1");
        assert!(body["received_at"].is_string());
    }

    #[test]
    fn a_dns_event_is_indexed_by_its_question_and_counts_once_by_default() {
        let rows = parse(
            r#"{"events": [{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5b", "event.name": "boundary.dns",
            "event.action": "would_deny", "dns.question.name": "exfil.example", "user.name": null}]}"#,
        )
        .unwrap();
        assert_eq!(rows[0].domain.as_deref(), Some("exfil.example"));
        assert_eq!((rows[0].count, rows[0].user_name.clone()), (1, None));
    }

    #[test]
    fn a_malformed_event_refuses_the_batch_naming_its_index_and_field() {
        let ok = r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5b", "event.name": "x"}"#;
        for (bad, says) in [
            ("1", "events[1]: not a JSON object"),
            (r#"{"event.name": "x"}"#, "events[1]: no `event.id`"),
            (r#"{"event.id": "nope", "event.name": "x"}"#, "is not a UUID"),
            (
                r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5c", "event.name": "x", "destination.port": 70000}"#,
                "`destination.port` 70000",
            ),
            (
                r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5c", "event.name": "x", "timestamp": "yesterday"}"#,
                "`timestamp` \"yesterday\"",
            ),
            (
                r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5c", "event.name": 5}"#,
                "`event.name` must be a string",
            ),
        ] {
            let e = parse(&format!(r#"{{"events": [{ok}, {bad}]}}"#)).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(says), "{says:?} in {}", e.message);
        }
        let e = parse(r#"{"evnts": []}"#).unwrap_err();
        assert!(e.message.contains("expected {\"events\""), "{}", e.message);
    }

    #[test]
    fn batches_beyond_the_limits_are_too_large() {
        let one = r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5b", "event.name": "x"}"#;
        let many = vec![one; MAX_BATCH_EVENTS + 1].join(",");
        let e = parse(&format!(r#"{{"events": [{many}]}}"#)).unwrap_err();
        assert_eq!(e.status, 413);
        let huge = vec![b' '; MAX_BATCH_BYTES + 1];
        assert_eq!(
            parse_batch(&huge, &origin(), Utc::now()).unwrap_err().status,
            413
        );
    }
}
