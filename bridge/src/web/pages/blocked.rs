//! Blocked connections: the Boundary decisions that denied a connection (`deny`) or would have
//! in enforce mode (`would_deny`, audit mode), newest first, with filters on template,
//! workspace, user, domain, process, action and time; the events table other pages share; and
//! the page of one event in full.

use http::StatusCode;

use super::{
    count_note, cursor, cursor_param, filter_form, fmt_time, layout, session_cell, time_param,
    Field, ROW_LIMIT,
};
use super::{SINCE, TEMPLATE, UNTIL, USER, WORKSPACE};
use crate::audit::EventRow;
use crate::error::Error;
use crate::store::{Store, Value};
use crate::web::html::{href, Html};
use crate::web::{Page, PageRequest};

const FIELDS: &[Field] = &[
    TEMPLATE,
    WORKSPACE,
    USER,
    Field {
        name: "domain",
        label: "Domain",
        placeholder: "pypi.org",
    },
    Field {
        name: "process",
        label: "Process",
        placeholder: "curl",
    },
    Field {
        name: "action",
        label: "Action",
        placeholder: "deny or would_deny",
    },
    SINCE,
    UNTIL,
];

/// The blocked-connection filters; each narrows.
#[derive(Debug, Default)]
struct BlockedFilter {
    template: Option<String>,
    workspace: Option<String>,
    user: Option<String>,
    domain: Option<String>,
    process: Option<String>,
    /// `deny` or `would_deny`; both when `None`.
    action: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only rows after this one in (time, id) order, newest first (the page cursor).
    before: Option<(i64, String)>,
}

/// Denied and would-be-denied events matching `f`, newest first. (The events module's own
/// filter has no user and takes one action; this page needs both.)
///
/// One query per action, each `action = ... ORDER BY ts DESC LIMIT n`, merged here: each is a
/// walk of an `(action, ts)` or `(template, action, ts)` index in time order that stops after
/// `n` rows, where `action IN (...)` made SQLite sort every matching event first (200,000
/// events, debug build: the unfiltered page 537 -> 13 ms). A filter without an index of its
/// own (`user`) still scans until `n` rows match, now once per action (269 -> 307 ms).
async fn blocked_events(
    store: &Store,
    f: &BlockedFilter,
    limit: u32,
) -> Result<Vec<EventRow>, Error> {
    let actions: Vec<&str> = match f.action.as_deref() {
        Some(a) => vec![a],
        None => vec!["deny", "would_deny"],
    };
    let mut all = Vec::new();
    for action in actions {
        let mut params = vec![Value::Text(Some(action.to_string()))];
        let mut sql = format!(
            "SELECT {} FROM events WHERE action = $1",
            crate::audit::COLUMNS
        );
        for (column, value) in [
            ("template", &f.template),
            ("workspace", &f.workspace),
            ("user_name", &f.user),
            ("domain", &f.domain),
            ("process", &f.process),
        ] {
            if let Some(v) = value {
                params.push(Value::Text(Some(v.clone())));
                sql.push_str(&format!(" AND {column} = ${}", params.len()));
            }
        }
        if let Some(t) = f.since {
            params.push(Value::Int(Some(t.timestamp_micros())));
            sql.push_str(&format!(" AND ts >= ${}", params.len()));
        }
        if let Some((t, id)) = &f.before {
            params.push(Value::Int(Some(*t)));
            params.push(Value::Text(Some(id.clone())));
            sql.push_str(&format!(
                " AND (ts, id) < (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
        if let Some(t) = f.until {
            params.push(Value::Int(Some(t.timestamp_micros())));
            sql.push_str(&format!(" AND ts < ${}", params.len()));
        }
        params.push(Value::Int(Some(i64::from(limit))));
        sql.push_str(&format!(
            " ORDER BY ts DESC, id DESC LIMIT ${}",
            params.len()
        ));
        let rows = store.query(&sql, params).await?;
        all.extend(rows.iter().map(|r| EventRow::from_values(r)));
    }
    all.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| b.id.cmp(&a.id)));
    all.truncate(limit as usize);
    Ok(all)
}

pub async fn list(store: &Store, req: &PageRequest) -> Result<Page, Error> {
    let action = req.param("action").map(String::from);
    if let Some(a) = &action {
        if a != "deny" && a != "would_deny" {
            return Err(Error::Query(format!(
                "filter `action`: {a:?} is not deny or would_deny"
            )));
        }
    }
    let filter = BlockedFilter {
        template: req.param("template").map(String::from),
        workspace: req.param("workspace").map(String::from),
        user: req.param("user").map(String::from),
        domain: req.param("domain").map(String::from),
        process: req.param("process").map(String::from),
        action,
        since: time_param(req, "since")?,
        until: time_param(req, "until")?,
        before: cursor_param(req)?,
    };
    let events = blocked_events(store, &filter, ROW_LIMIT).await?;
    Ok(layout(StatusCode::OK, "Blocked connections", |h| {
        filter_form(h, "/ui/blocked", FIELDS, req);
        let older = events.last().map(|e| cursor(e.ts, &e.id));
        count_note(h, events.len(), ROW_LIMIT, ("/ui/blocked", req), older);
        table(h, &events, true);
    }))
}

/// A table of Boundary events. `full`: with user, template, workspace and session (the
/// session page, which says those once above its narrower columns, leaves them out).
pub fn table(h: &mut Html, events: &[EventRow], full: bool) {
    let mut headers = vec![
        "Time (UTC)",
        "Event",
        "Action",
        "Domain",
        "Destination",
        "Process",
    ];
    if full {
        headers.extend(["User", "Template", "Workspace", "Session"]);
    }
    headers.push("Count");
    h.table("events", &headers, events, |h, e| {
        h.td_link(&href("/ui/events", &[&e.id], &[]), &fmt_time(e.ts));
        h.td(e
            .event_name
            .strip_prefix("boundary.")
            .unwrap_or(&e.event_name));
        let action = e.action.as_deref().unwrap_or("-");
        h.el_text(
            "td",
            &[(
                "class",
                if action.ends_with("deny") {
                    "bad"
                } else {
                    "ok"
                },
            )],
            action,
        );
        match &e.domain {
            Some(d) => h.td_link(&href("/ui/blocked", &[], &[("domain", d)]), d),
            None => h.td("-"),
        };
        let dest = match (&e.destination, e.port) {
            (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
            (Some(a), Some(p)) => format!("{a}:{p}"),
            (Some(a), None) => a.clone(),
            (None, _) => "-".into(),
        };
        h.td(&dest);
        h.td(e.process.as_deref().unwrap_or("-"));
        if full {
            h.td(e.user_name.as_deref().unwrap_or("-"));
            h.td(&e.template);
            h.td(e.workspace.as_deref().unwrap_or("-"));
            session_cell(h, e.session_id.as_deref());
        }
        h.td(&e.count.to_string());
    });
}

/// One event: its columns and the whole event as the agent shipped it (JSON, indented).
pub async fn detail(store: &Store, id: &str) -> Result<Page, Error> {
    let rows = store
        .query(
            &format!("SELECT {} FROM events WHERE id = $1", crate::audit::COLUMNS),
            vec![Value::Text(Some(id.to_ascii_lowercase()))],
        )
        .await?;
    let Some(e) = rows.first().map(|r| EventRow::from_values(r)) else {
        return Ok(super::status_page(
            StatusCode::NOT_FOUND,
            "No such event",
            &format!("No event has the id {id:?}."),
        ));
    };
    let body = serde_json::from_str::<serde_json::Value>(&e.body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| e.body.clone());
    let fields: Vec<(&'static str, String)> = vec![
        ("Id", e.id.clone()),
        ("Time (UTC)", fmt_time(e.ts)),
        ("Received (UTC)", fmt_time(e.received_at)),
        ("Event", e.event_name.clone()),
        ("Action", e.action.clone().unwrap_or_default()),
        ("Domain", e.domain.clone().unwrap_or_default()),
        ("Destination", e.destination.clone().unwrap_or_default()),
        ("Port", e.port.map(|p| p.to_string()).unwrap_or_default()),
        ("Process", e.process.clone().unwrap_or_default()),
        ("User", e.user_name.clone().unwrap_or_default()),
        ("Template", e.template.clone()),
        ("Workspace", e.workspace.clone().unwrap_or_default()),
        ("Agent", e.agent_id.clone()),
        ("Decisions", e.count.to_string()),
    ];
    Ok(layout(StatusCode::OK, "Boundary event", |h| {
        h.el("table", &[("class", "detail")], |h| {
            for (name, value) in &fields {
                h.el("tr", &[], |h| {
                    h.el_text("th", &[], name).td(value);
                });
            }
            h.el("tr", &[], |h| {
                h.el_text("th", &[], "Session");
                session_cell(h, e.session_id.as_deref());
            });
        });
        h.el_text("h2", &[], "As shipped by the agent");
        h.el_text("pre", &[("class", "event")], &body);
    }))
}
