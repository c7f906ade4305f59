//! A batch of events from an agent: validated as a whole, stored in one transaction.
//!
//! The contract (docs/CONTROL_PLANE.md, "POST /boundary/v1/events"): at most
//! [`MAX_BATCH_EVENTS`] events and [`MAX_BATCH_BYTES`] per batch (413 beyond); one malformed
//! event refuses the whole batch with 400 and its index, and nothing is stored; storage is
//! idempotent by `event.id`, so a batch resent after a timeout or a restart is counted as
//! duplicates, not stored twice; the answer comes only after the commit.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
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
    struct Batch<'a> {
        #[serde(borrow)]
        events: Vec<&'a RawValue>,
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
            event_row(event, origin, received_at, &received).map_err(|m| {
                Refused::bad(format!(
                    "events[{i}]: {m}; nothing of this batch was stored"
                ))
            })
        })
        .collect()
}

/// The fields of an event that go into columns, read without building the event's tree.
#[derive(serde::Deserialize)]
struct Indexed<'a> {
    #[serde(rename = "event.id", borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "event.name", borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "event.action", borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(rename = "session.id", borrow)]
    session: Option<Cow<'a, str>>,
    #[serde(rename = "destination.address", borrow)]
    address: Option<Cow<'a, str>>,
    #[serde(rename = "destination.port")]
    port: Option<u16>,
    #[serde(rename = "boundary.destination.domains", borrow)]
    domains: Option<Vec<Cow<'a, str>>>,
    #[serde(rename = "dns.question.name", borrow)]
    question: Option<Cow<'a, str>>,
    #[serde(rename = "process.executable.name", borrow)]
    process: Option<Cow<'a, str>>,
    #[serde(rename = "user.name", borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(rename = "boundary.event.count")]
    count: Option<u64>,
    // The server's own fields: an event that has them is rewritten (rare; agents never send
    // them), one that has not is stored as sent with them appended.
    #[serde(rename = "agent.id")]
    agent_id: Option<IgnoredAny>,
    template: Option<IgnoredAny>,
    workspace: Option<IgnoredAny>,
    received_at: Option<IgnoredAny>,
}

/// One event: its columns, and its JSON with the server's fields.
fn event_row(
    event: &RawValue,
    origin: &Origin,
    received_at: DateTime<Utc>,
    received: &str,
) -> Result<EventRow, String> {
    let text = event.get();
    if !text.starts_with('{') {
        return Err("not a JSON object".into());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let f: Indexed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner().to_string();
        // serde_json appends "at line 1 column N" of the event's own text: not helpful.
        let inner = inner.split(" at line ").next().unwrap_or_default();
        format!("`{}`: {inner}", e.path())
    })?;
    let id = match &f.id {
        Some(s) => Uuid::parse_str(s)
            .map_err(|_| format!("`event.id` {s:?} is not a UUID"))?
            .hyphenated()
            .to_string(),
        None => {
            return Err(
                "no `event.id` (the shipper gives each event a UUID when it enters the spool)"
                    .into(),
            )
        }
    };
    let event_name = f
        .name
        .as_deref()
        .ok_or_else(|| "no `event.name` (boundary.decision, boundary.dns, ...)".to_string())?
        .to_string();
    let ts = match &f.timestamp {
        None => received_at,
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|_| format!("`timestamp` {s:?} is not an RFC 3339 time"))?
            .with_timezone(&Utc),
    };
    let own = |s: &Option<Cow<str>>| s.as_deref().map(str::to_string);
    let domain = match f.domains.as_ref().and_then(|d| d.first()) {
        Some(d) => Some(d.to_string()),
        None => own(&f.question),
    };
    let workspace = origin.workspace.as_deref().map_or(Json::Null, Json::from);
    let body = if f.agent_id.is_some()
        || f.template.is_some()
        || f.workspace.is_some()
        || f.received_at.is_some()
    {
        // The token says who shipped it: whatever the body claimed is replaced.
        let mut m: Map<String, Json> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        m.insert("agent.id".into(), origin.agent_id.clone().into());
        m.insert("template".into(), origin.template.clone().into());
        m.insert("workspace".into(), workspace);
        m.insert("received_at".into(), received.into());
        Json::Object(m).to_string()
    } else {
        let inner = text[1..text.len() - 1].trim();
        let server = format!(
            "\"agent.id\":{},\"template\":{},\"workspace\":{},\"received_at\":{}",
            Json::from(origin.agent_id.as_str()),
            Json::from(origin.template.as_str()),
            workspace,
            Json::from(received)
        );
        if inner.is_empty() {
            format!("{{{server}}}")
        } else {
            format!("{{{inner},{server}}}")
        }
    };
    Ok(EventRow {
        id,
        ts,
        received_at,
        agent_id: origin.agent_id.clone(),
        template: origin.template.clone(),
        workspace: origin.workspace.clone(),
        session_id: own(&f.session),
        event_name,
        action: own(&f.action),
        destination: own(&f.address),
        port: f.port,
        domain,
        process: own(&f.process),
        user_name: own(&f.user),
        count: f.count.unwrap_or(1),
        body,
    })
}

/// Stores rows in one transaction, skipping ids already stored.
pub async fn store_rows(store: &Store, rows: &[EventRow]) -> Result<Stored, Error> {
    if rows.is_empty() {
        return Ok(Stored {
            accepted: 0,
            duplicates: 0,
        });
    }
    if store.is_postgres() {
        return store_rows_postgres(store, rows).await;
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

/// PostgreSQL: the batch as 16 arrays in one short statement (`UNNEST`), instead of
/// statements of thousands of parameters that the server parses and plans each time.
async fn store_rows_postgres(store: &Store, rows: &[EventRow]) -> Result<Stored, Error> {
    let mut columns: Vec<Value> = Vec::with_capacity(COLUMN_COUNT);
    for c in 0..COLUMN_COUNT {
        let is_int = matches!(c, 1 | 2 | 10 | 14);
        columns.push(if is_int {
            Value::IntArray(Vec::with_capacity(rows.len()))
        } else {
            Value::TextArray(Vec::with_capacity(rows.len()))
        });
    }
    for row in rows {
        for (c, v) in row.params().into_iter().enumerate() {
            match (&mut columns[c], v) {
                (Value::IntArray(a), Value::Int(v)) => a.push(v),
                (Value::TextArray(a), Value::Text(v)) => a.push(v),
                _ => unreachable!("column {c} has one type"),
            }
        }
    }
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Value::IntArray(_) => format!("${}::bigint[]", i + 1),
            _ => format!("${}::text[]", i + 1),
        })
        .collect();
    let sql = format!(
        "INSERT INTO events ({COLUMNS}) SELECT * FROM UNNEST({}) ON CONFLICT (id) DO NOTHING",
        casts.join(", ")
    );
    let accepted = store.execute(&sql, columns).await?;
    Ok(Stored {
        accepted,
        duplicates: rows.len() as u64 - accepted,
    })
}

/// Parses, validates and stores a batch: the whole of `POST /boundary/v1/events` after
/// authentication. Returns what was stored and the batch's `boundary.session.end` events (as
/// stored; the caller ends their sessions). `Ok(Err(refused))`: the batch is refused and
/// nothing is stored; `Err`: the store failed (the agent keeps the batch and retries).
pub async fn ingest(
    store: &Store,
    body: &[u8],
    origin: &Origin,
) -> Result<Result<(Stored, Vec<Json>), Refused>, Error> {
    let rows = match parse_batch(body, origin, Utc::now()) {
        Ok(rows) => rows,
        Err(refused) => return Ok(Err(refused)),
    };
    let stored = store_rows(store, &rows).await?;
    let ends = rows
        .iter()
        .filter(|r| r.event_name == "boundary.session.end")
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect();
    Ok(Ok((stored, ends)))
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
        // Stored as sent, the server's fields appended.
        let body: Json = serde_json::from_str(&rows[0].body).unwrap();
        assert_eq!(body["dns.question.name"], "exfil.example");
        assert_eq!(body["user.name"], Json::Null);
        assert_eq!(body["workspace"], "ws-42");
        assert_eq!(body["agent.id"], "agent-1");
        assert_eq!(body.as_object().unwrap().len(), 9);
        let empty = parse(r#"{"events": [ {"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5b", "event.name": "x"} ]}"#)
            .unwrap();
        let body: Json = serde_json::from_str(&empty[0].body).unwrap();
        assert_eq!(body["template"], "python-dev");
    }

    #[test]
    fn a_malformed_event_refuses_the_batch_naming_its_index_and_field() {
        let ok = r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5b", "event.name": "x"}"#;
        for (bad, says) in [
            ("1", "events[1]: not a JSON object"),
            (r#"{"event.name": "x"}"#, "events[1]: no `event.id`"),
            (
                r#"{"event.id": "nope", "event.name": "x"}"#,
                "is not a UUID",
            ),
            (
                r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5c", "event.name": "x", "destination.port": 70000}"#,
                "`destination.port`: invalid value: integer `70000`, expected u16",
            ),
            (
                r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5c", "event.name": "x", "timestamp": "yesterday"}"#,
                "`timestamp` \"yesterday\"",
            ),
            (
                r#"{"event.id": "0190f1e2-3c4d-7e5f-8a9b-0c1d2e3f4a5c", "event.name": 5}"#,
                "`event.name`: invalid type: integer `5`, expected a string",
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
            parse_batch(&huge, &origin(), Utc::now())
                .unwrap_err()
                .status,
            413
        );
    }
}
