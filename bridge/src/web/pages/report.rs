//! The rollout report: for one template, every destination enforce mode would deny
//! (`would_deny` in audit mode, plus what is denied already), to read before
//! `llm-bridge policy enforce`.

use chrono::{Duration, Utc};
use http::StatusCode;

use super::TEMPLATE;
use super::{filter_form, fmt_time, layout, time_param, Field};
use crate::error::Error;
use crate::store::Store;
use crate::web::html::href;
use crate::web::{Page, PageRequest};

const FIELDS: &[Field] = &[
    TEMPLATE,
    Field {
        name: "since",
        label: "Since",
        placeholder: "7d (the default)",
    },
];

pub async fn page(store: &Store, req: &PageRequest) -> Result<Page, Error> {
    let Some(template) = req.param("template") else {
        let templates = crate::control::policies::list(store).await?;
        return Ok(layout(StatusCode::OK, "Rollout report", |h| {
            filter_form(h, "/ui/report", FIELDS, req);
            h.el_text("p", &[], "Choose a template:");
            h.el("ul", &[], |h| {
                for t in &templates {
                    h.el("li", &[], |h| {
                        h.link(
                            &href("/ui/report", &[], &[("template", &t.template)]),
                            &t.template,
                        );
                    });
                }
            });
        }));
    };
    let since = time_param(req, "since")?.unwrap_or_else(|| Utc::now() - Duration::days(7));
    let rows = crate::audit::query::report(store, template, Some(since)).await?;
    let mode = crate::control::policies::current(store, template)
        .await?
        .map(|p| format!("v{} in {} mode", p.version, p.mode.as_str()))
        .unwrap_or_else(|| "no policy pushed".into());
    Ok(layout(
        StatusCode::OK,
        &format!("Rollout report: {template}"),
        |h| {
            filter_form(h, "/ui/report", FIELDS, req);
            h.el_text(
            "p",
            &[("class", "count")],
            &format!(
                "Policy: {mode}. Since {} UTC, {} destinations would be denied in enforce mode ({} decisions).",
                fmt_time(since),
                rows.len(),
                rows.iter().map(|r| r.count).sum::<u64>()
            ),
        );
            h.table(
                "report",
                &[
                    "Domain",
                    "Destination",
                    "Port",
                    "Decisions",
                    "Actions",
                    "Workspaces",
                    "Processes",
                    "First seen",
                    "Last seen",
                ],
                &rows,
                |h, r| {
                    match &r.domain {
                        Some(d) => h.td_link(
                            &href("/ui/blocked", &[], &[("template", template), ("domain", d)]),
                            d,
                        ),
                        None => h.td("-"),
                    };
                    h.td(r.destination.as_deref().unwrap_or("-"));
                    h.td(&r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()));
                    h.td(&r.count.to_string());
                    h.td(&r.actions.join(", "));
                    h.td(&r.workspaces.join(", "));
                    h.td(&r.processes.join(", "));
                    h.td(&fmt_time(r.first_seen));
                    h.td(&fmt_time(r.last_seen));
                },
            );
        },
    ))
}
