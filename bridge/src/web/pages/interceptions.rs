//! LLM interceptions: the list with its filters, and one interception in full.

use http::StatusCode;

use super::{
    count_note, cursor, cursor_param, excerpt, filter_form, fmt_cost, fmt_time, layout,
    session_cell, status_page, time_param, Field, ROW_LIMIT,
};
use super::{SINCE, TEMPLATE, UNTIL, USER, WORKSPACE};
use crate::error::Error;
use crate::record::{InterceptionRecord, Outcome};
use crate::store::{InterceptionFilter, Store};
use crate::web::html::{href, Html};
use crate::web::{Page, PageRequest};

const FIELDS: &[Field] = &[
    USER,
    Field {
        name: "model",
        label: "Model",
        placeholder: "claude-sonnet-4-5",
    },
    Field {
        name: "outcome",
        label: "Outcome",
        placeholder: "ok, rejected, upstream_error",
    },
    TEMPLATE,
    WORKSPACE,
    Field {
        name: "session",
        label: "Session",
        placeholder: "Boundary session id",
    },
    SINCE,
    UNTIL,
];

fn outcome_param(req: &PageRequest) -> Result<Option<Outcome>, Error> {
    req.param("outcome")
        .map(|o| {
            serde_json::from_value::<Outcome>(serde_json::Value::String(o.into())).map_err(|_| {
                Error::Query(format!(
                    "filter `outcome`: {o:?} is not an outcome (ok, upstream_error, upstream_unavailable, client_cancelled, rejected, incomplete)"
                ))
            })
        })
        .transpose()
}

/// Records matching the page's filters, newest first.
pub async fn list(store: &Store, req: &PageRequest) -> Result<Page, Error> {
    let filter = InterceptionFilter {
        user: req.param("user").map(String::from),
        since: time_param(req, "since")?,
        until: time_param(req, "until")?,
        limit: Some(ROW_LIMIT),
        outcome: outcome_param(req)?,
        model: req.param("model").map(String::from),
        template: req.param("template").map(String::from),
        workspace: req.param("workspace").map(String::from),
        session: req.param("session").map(String::from),
        client_session: None,
        before: cursor_param(req)?
            .map(|(t, id)| {
                chrono::DateTime::from_timestamp_micros(t)
                    .map(|t| (t, id))
                    .ok_or_else(|| Error::Query("`before`: the time is out of range".into()))
            })
            .transpose()?,
    };
    let records = store.list_interceptions(&filter).await?;
    Ok(layout(StatusCode::OK, "LLM interceptions", |h| {
        filter_form(h, "/ui/interceptions", FIELDS, req);
        let older = records
            .last()
            .map(|r| cursor(r.started_at, &r.id.to_string()));
        count_note(
            h,
            records.len(),
            ROW_LIMIT,
            ("/ui/interceptions", req),
            older,
        );
        table(h, &records, true);
    }))
}

/// The interceptions table. `full`: with the user and the session (the session page says
/// those once, above).
pub fn table(h: &mut Html, records: &[InterceptionRecord], full: bool) {
    let headers: &[&'static str] = if full {
        &[
            "Time (UTC)",
            "User",
            "Model",
            "Outcome",
            "Tokens in/out",
            "Cost",
            "Session",
            "Prompt",
        ]
    } else {
        &[
            "Time (UTC)",
            "Model",
            "Outcome",
            "Tokens in/out",
            "Cost",
            "Prompt",
        ]
    };
    h.table("interceptions", headers, records, |h, r| {
        let id = r.id.to_string();
        h.td_link(
            &href("/ui/interceptions", &[&id], &[]),
            &fmt_time(r.started_at),
        );
        if full {
            h.td(&r.user);
        }
        h.td(r.model.as_deref().unwrap_or("-"));
        h.el_text(
            "td",
            &[(
                "class",
                if r.outcome == Outcome::Ok {
                    "ok"
                } else {
                    "bad"
                },
            )],
            r.outcome.as_str(),
        );
        h.td(&format!(
            "{} / {}",
            r.usage.input_tokens, r.usage.output_tokens
        ));
        h.td(&fmt_cost(r.cost_usd));
        if full {
            session_cell(h, r.context.session.as_deref());
        }
        h.el_text(
            "td",
            &[("class", "prompt")],
            &excerpt(r.prompt.as_deref().unwrap_or(""), 160),
        );
    });
}

/// One interception: every recorded field.
pub async fn detail(store: &Store, id: &str) -> Result<Page, Error> {
    let Some(r) = store.get_interception(id).await? else {
        return Ok(status_page(
            StatusCode::NOT_FOUND,
            "No such interception",
            &format!("No interception has the id {id:?}."),
        ));
    };
    let rows: Vec<(&'static str, String)> = vec![
        ("Id", r.id.to_string()),
        ("Started (UTC)", fmt_time(r.started_at)),
        ("User", r.user.clone()),
        ("Key", r.key_id.clone().unwrap_or_default()),
        ("Provider", r.provider.as_str().into()),
        ("Endpoint", r.endpoint.clone()),
        ("Model", r.model.clone().unwrap_or_default()),
        ("Client", r.client.clone().unwrap_or_default()),
        ("Client address", r.client_addr.clone().unwrap_or_default()),
        ("Streaming", r.streaming.to_string()),
        ("Status", r.status.to_string()),
        ("Outcome", r.outcome.as_str().into()),
        ("Error", r.error.clone().unwrap_or_default()),
        ("Input tokens", r.usage.input_tokens.to_string()),
        ("Output tokens", r.usage.output_tokens.to_string()),
        ("Cost", fmt_cost(r.cost_usd)),
        ("Duration", format!("{:.1} ms", r.duration_ms)),
        ("Template", r.context.template.clone().unwrap_or_default()),
        ("Workspace", r.context.workspace.clone().unwrap_or_default()),
        (
            "Client session",
            r.client_session.clone().unwrap_or_default(),
        ),
        ("Tools offered", r.tools_offered.join(", ")),
    ];
    Ok(layout(StatusCode::OK, "LLM interception", |h| {
        h.el("table", &[("class", "detail")], |h| {
            for (name, value) in &rows {
                h.el("tr", &[], |h| {
                    h.el_text("th", &[], name).td(value);
                });
            }
            h.el("tr", &[], |h| {
                h.el_text("th", &[], "Session");
                super::session_cell(h, r.context.session.as_deref());
            });
        });
        h.el_text("h2", &[], "Prompt");
        h.el_text(
            "pre",
            &[("class", "prompt")],
            r.prompt.as_deref().unwrap_or("(not recorded)"),
        );
        if !r.tool_calls.is_empty() {
            h.el_text("h2", &[], "Tool calls");
            h.table("tools", &["Name", "Input"], &r.tool_calls, |h, c| {
                h.td(&c.name)
                    .el_text("td", &[("class", "prompt")], &excerpt(&c.arguments, 2000));
            });
        }
    }))
}
