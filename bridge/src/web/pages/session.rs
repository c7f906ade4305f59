//! One Boundary session: who ran what under which agent, and, side by side, its Boundary events
//! (every connection decision, DNS answer, policy change) and the LLM requests made with its
//! credential, each oldest first.

use http::StatusCode;

use super::{fmt_time, layout};
use crate::error::Error;
use crate::store::{InterceptionFilter, Store, Value};
use crate::web::html::href;
use crate::web::Page;

/// Most events and interceptions shown per side.
const SIDE_LIMIT: u32 = 2000;

/// What the agent registered about the session (`POST /boundary/v1/sessions`).
struct Registration {
    agent_id: String,
    agent_name: Option<String>,
    user_name: Option<String>,
    command: Option<String>,
    started_at: Option<i64>,
    ended_at: Option<i64>,
}

async fn registration(store: &Store, id: &str) -> Result<Option<Registration>, Error> {
    let rows = store
        .query(
            "SELECT s.agent_id, s.user_name, s.command, s.started_at, s.ended_at, a.name \
             FROM boundary_sessions s LEFT JOIN agents a ON a.id = s.agent_id \
             WHERE s.session_id = $1 ORDER BY s.registered_at LIMIT 1",
            vec![Value::Text(Some(id.to_string()))],
        )
        .await?;
    Ok(rows.first().map(|r| Registration {
        agent_id: r[0].text(),
        user_name: r[1].opt_text(),
        command: r[2].opt_text(),
        started_at: r[3].opt_int(),
        ended_at: r[4].opt_int(),
        agent_name: r[5].opt_text(),
    }))
}

fn time_of(us: Option<i64>) -> String {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map(fmt_time)
        .unwrap_or_else(|| "-".into())
}

pub async fn page(store: &Store, id: &str) -> Result<Page, Error> {
    let reg = registration(store, id).await?;
    let events = crate::audit::query::session_events(store, id, Some(SIDE_LIMIT)).await?;
    let mut interceptions = store
        .list_interceptions(&InterceptionFilter {
            session: Some(id.to_string()),
            limit: Some(SIDE_LIMIT),
            ..Default::default()
        })
        .await?;
    interceptions.reverse();
    let (template, workspace) = events
        .first()
        .map(|e| (Some(e.template.clone()), e.workspace.clone()))
        .or_else(|| {
            interceptions
                .first()
                .map(|r| (r.context.template.clone(), r.context.workspace.clone()))
        })
        .unwrap_or_default();
    let blocked = events
        .iter()
        .filter(|e| e.action.as_deref().is_some_and(|a| a.ends_with("deny")))
        .map(|e| e.count)
        .sum::<u64>();
    let summary: Vec<(&'static str, String)> = vec![
        ("Session", id.to_string()),
        (
            "User",
            reg.as_ref()
                .and_then(|r| r.user_name.clone())
                .or_else(|| events.iter().find_map(|e| e.user_name.clone()))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "Command",
            reg.as_ref()
                .and_then(|r| r.command.clone())
                .unwrap_or_else(|| "-".into()),
        ),
        ("Template", template.clone().unwrap_or_else(|| "-".into())),
        ("Workspace", workspace.unwrap_or_else(|| "-".into())),
        (
            "Agent",
            reg.as_ref()
                .map(|r| match &r.agent_name {
                    Some(name) if *name != r.agent_id => format!("{name} ({})", r.agent_id),
                    _ => r.agent_id.clone(),
                })
                .or_else(|| events.first().map(|e| e.agent_id.clone()))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "Started (UTC)",
            time_of(reg.as_ref().and_then(|r| r.started_at)),
        ),
        (
            "Ended (UTC)",
            time_of(reg.as_ref().and_then(|r| r.ended_at)),
        ),
        ("Blocked decisions", blocked.to_string()),
        (
            "LLM cost",
            format!(
                "${:.4}",
                interceptions
                    .iter()
                    .filter_map(|r| r.cost_usd)
                    .fold(0.0, |a, c| a + c)
            ),
        ),
    ];
    Ok(layout(StatusCode::OK, "Session", |h| {
        h.el("table", &[("class", "detail")], |h| {
            for (name, value) in &summary {
                h.el("tr", &[], |h| {
                    h.el_text("th", &[], name).td(value);
                });
            }
        });
        if let Some(t) = &template {
            h.el("p", &[], |h| {
                h.link(
                    &href("/ui/blocked", &[], &[("template", t)]),
                    "All blocked connections of this template",
                );
            });
        }
        h.el("div", &[("class", "side-by-side")], |h| {
            h.el("section", &[("id", "session-events")], |h| {
                h.el_text("h2", &[], &format!("Boundary events ({})", events.len()));
                super::blocked::table(h, &events, false);
            });
            h.el("section", &[("id", "session-interceptions")], |h| {
                h.el_text(
                    "h2",
                    &[],
                    &format!("LLM interceptions ({})", interceptions.len()),
                );
                super::interceptions::table(h, &interceptions, false);
            });
        });
    }))
}
