//! The fleet: every enrolled agent with its host, version, the policy version it applied
//! (against its template's current one), its sessions, the events it holds or lost, and when
//! it was last seen.

use std::collections::HashMap;

use chrono::Utc;
use http::StatusCode;

use super::{filter_form, fmt_time, layout, Field};
use crate::control::agents;
use crate::error::Error;
use crate::store::Store;
use crate::web::html::href;
use crate::web::{Page, PageRequest};

const FIELDS: &[Field] = &[Field {
    name: "template",
    label: "Template",
    placeholder: "python-dev",
}];

/// An agent that has not reported for this long (status every 30 s) is marked as silent.
pub(super) const SILENT_AFTER: chrono::Duration = chrono::Duration::minutes(2);

pub async fn page(store: &Store, req: &PageRequest) -> Result<Page, Error> {
    let list = agents::list(store, req.param("template")).await?;
    let current: HashMap<String, i64> = crate::control::policies::latest_versions(store).await?;
    let now = Utc::now();
    let lost: i64 = list.iter().filter_map(|a| a.events_lost).sum();
    Ok(layout(StatusCode::OK, "Fleet", |h| {
        filter_form(h, "/ui/fleet", FIELDS, req);
        h.el_text(
            "p",
            &[("class", "count")],
            &format!(
                "{} agents, {} not revoked; {lost} events lost in total.",
                list.len(),
                list.iter().filter(|a| a.revoked_at.is_none()).count()
            ),
        );
        h.table(
            "fleet",
            &[
                "Name",
                "Template",
                "Workspace",
                "Host",
                "Version",
                "Policy",
                "Sessions",
                "Events spooled",
                "Events lost",
                "Last seen (UTC)",
                "State",
            ],
            &list,
            |h, a| {
                h.td(&a.name);
                h.td_link(&href("/ui/policies", &[&a.template], &[]), &a.template);
                h.td(a.workspace.as_deref().unwrap_or("-"));
                h.td(a.host.as_deref().unwrap_or("-"));
                h.td(a.agent_version.as_deref().unwrap_or("-"));
                let latest = current.get(&a.template).copied();
                let (policy, class) = match (a.policy_version, latest) {
                    (Some(v), Some(c)) if v == c => (format!("v{v} (current)"), "ok"),
                    (Some(v), Some(c)) => (format!("v{v} (current is v{c})"), "bad"),
                    (Some(v), None) => (format!("v{v}"), ""),
                    (None, Some(c)) => (format!("none (current is v{c})"), "bad"),
                    (None, None) => ("none".into(), ""),
                };
                h.el_text("td", &[("class", class)], &policy);
                let n = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                h.td(&n(a.sessions));
                h.td(&n(a.events_spooled));
                h.el_text(
                    "td",
                    &[(
                        "class",
                        if a.events_lost.unwrap_or(0) > 0 {
                            "bad"
                        } else {
                            ""
                        },
                    )],
                    &n(a.events_lost),
                );
                h.td(&a
                    .last_seen_at
                    .map(fmt_time)
                    .unwrap_or_else(|| "never".into()));
                let (state, class) = if a.revoked_at.is_some() {
                    ("revoked", "bad")
                } else {
                    match a.last_seen_at {
                        None => ("never seen", "bad"),
                        Some(t) if now - t > SILENT_AFTER => ("silent", "bad"),
                        Some(_) => ("reporting", "ok"),
                    }
                };
                h.el_text("td", &[("class", class)], state);
            },
        );
    }))
}
