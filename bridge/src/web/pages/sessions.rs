//! Boundary sessions as agents registered them (`POST /boundary/v1/sessions`): who ran which
//! command under which template and workspace, when, newest first; each links to its page.

use chrono::{DateTime, Utc};
use http::StatusCode;

use super::{count_note, filter_form, fmt_time, layout, time_param, Field, ROW_LIMIT};
use super::{SINCE, TEMPLATE, USER, WORKSPACE};
use crate::error::Error;
use crate::store::{Store, Value};
use crate::web::html::href;
use crate::web::{Page, PageRequest};

const FIELDS: &[Field] = &[TEMPLATE, WORKSPACE, USER, SINCE];

/// One registered session.
pub struct SessionRow {
    pub session_id: String,
    pub agent_id: String,
    pub template: Option<String>,
    pub workspace: Option<String>,
    pub user_name: Option<String>,
    pub command: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// Registered sessions, newest first, narrowed by template, workspace (the agent's), user and
/// registration time.
async fn sessions(store: &Store, req: &PageRequest) -> Result<Vec<SessionRow>, Error> {
    let mut params = Vec::new();
    let mut sql = String::from(
        "SELECT s.session_id, s.agent_id, a.template, a.workspace, s.user_name, s.command, \
         s.started_at, s.ended_at FROM boundary_sessions s LEFT JOIN agents a ON a.id = s.agent_id \
         WHERE 1 = 1",
    );
    for (column, name) in [
        ("a.template", "template"),
        ("a.workspace", "workspace"),
        ("s.user_name", "user"),
    ] {
        if let Some(v) = req.param(name) {
            params.push(Value::Text(Some(v.to_string())));
            sql.push_str(&format!(" AND {column} = ${}", params.len()));
        }
    }
    if let Some(t) = time_param(req, "since")? {
        params.push(Value::Int(Some(t.timestamp_micros())));
        sql.push_str(&format!(" AND s.registered_at >= ${}", params.len()));
    }
    params.push(Value::Int(Some(i64::from(ROW_LIMIT))));
    sql.push_str(&format!(
        " ORDER BY s.registered_at DESC, s.session_id LIMIT ${}",
        params.len()
    ));
    let time = |v: &Value| v.opt_int().and_then(DateTime::from_timestamp_micros);
    Ok(store
        .query(&sql, params)
        .await?
        .iter()
        .map(|r| SessionRow {
            session_id: r[0].text(),
            agent_id: r[1].text(),
            template: r[2].opt_text(),
            workspace: r[3].opt_text(),
            user_name: r[4].opt_text(),
            command: r[5].opt_text(),
            started_at: time(&r[6]),
            ended_at: time(&r[7]),
        })
        .collect())
}

pub async fn list(store: &Store, req: &PageRequest) -> Result<Page, Error> {
    let rows = sessions(store, req).await?;
    Ok(layout(StatusCode::OK, "Sessions", |h| {
        filter_form(h, "/ui/sessions", FIELDS, req);
        count_note(h, rows.len(), ROW_LIMIT, ("/ui/sessions", req), None);
        h.table(
            "sessions",
            &[
                "Session",
                "User",
                "Command",
                "Template",
                "Workspace",
                "Agent",
                "Started (UTC)",
                "Ended (UTC)",
            ],
            &rows,
            |h, s| {
                let time = |t: Option<DateTime<Utc>>| t.map(fmt_time).unwrap_or_else(|| "-".into());
                h.td_link(&href("/ui/sessions", &[&s.session_id], &[]), &s.session_id);
                h.td(s.user_name.as_deref().unwrap_or("-"));
                h.td(s.command.as_deref().unwrap_or("-"));
                h.td(s.template.as_deref().unwrap_or("-"));
                h.td(s.workspace.as_deref().unwrap_or("-"));
                h.td(&s.agent_id);
                h.td(&time(s.started_at));
                h.td(&time(s.ended_at));
            },
        );
    }))
}
