//! Policies: every template with its current version, mode and agents; one template's history
//! (append-only: who pushed, switched mode or rolled back, when, why) and the text of any
//! version.

use http::StatusCode;

use super::{fmt_time, layout, status_page};
use crate::control::policies;
use crate::error::Error;
use crate::store::Store;
use crate::web::html::href;
use crate::web::{Page, PageRequest};

pub async fn list(store: &Store) -> Result<Page, Error> {
    let templates = policies::list(store).await?;
    Ok(layout(StatusCode::OK, "Policies", |h| {
        h.table(
            "policies",
            &[
                "Template",
                "Version",
                "Mode",
                "Author",
                "Pushed (UTC)",
                "Agents",
                "On the current version",
                "Report",
            ],
            &templates,
            |h, t| {
                h.td_link(&href("/ui/policies", &[&t.template], &[]), &t.template);
                h.td(&t
                    .version
                    .map(|v| format!("v{v}"))
                    .unwrap_or_else(|| "none pushed".into()));
                h.td(t.mode.map(|m| m.as_str()).unwrap_or("-"));
                h.td(t.author.as_deref().unwrap_or("-"));
                h.td(&t.created_at.map(fmt_time).unwrap_or_else(|| "-".into()));
                h.td(&t.agents.to_string());
                h.el_text(
                    "td",
                    &[(
                        "class",
                        if t.agents_current < t.agents {
                            "bad"
                        } else {
                            "ok"
                        },
                    )],
                    &format!("{} of {}", t.agents_current, t.agents),
                );
                h.td_link(
                    &href("/ui/report", &[], &[("template", &t.template)]),
                    "rollout report",
                );
            },
        );
    }))
}

pub async fn history(store: &Store, template: &str, req: &PageRequest) -> Result<Page, Error> {
    let versions = policies::history(store, template).await?;
    let Some(latest) = versions.last() else {
        return Ok(status_page(
            StatusCode::NOT_FOUND,
            "No such policy",
            &format!("No policy was pushed for template {template:?}."),
        ));
    };
    let shown = match req.param("version") {
        Some(v) => {
            let n: i64 = v.parse().map_err(|_| {
                Error::Query(format!("filter `version`: {v:?} is not a version number"))
            })?;
            versions.iter().find(|p| p.version == n).ok_or_else(|| {
                Error::Query(format!(
                    "template {template:?} has no version {n} (versions 1 to {})",
                    latest.version
                ))
            })?
        }
        None => latest,
    };
    Ok(layout(
        StatusCode::OK,
        &format!("Policy of {template}"),
        |h| {
            h.el("p", &[], |h| {
                h.link(
                    &href("/ui/report", &[], &[("template", template)]),
                    "Rollout report",
                )
                .raw(" · ");
                h.link(&href("/ui/fleet", &[], &[("template", template)]), "Agents")
                    .raw(" · ");
                h.link(
                    &href("/ui/blocked", &[], &[("template", template)]),
                    "Blocked connections",
                );
            });
            h.el_text("h2", &[], "History");
            let rows: Vec<_> = versions.iter().rev().collect();
            h.table(
                "history",
                &[
                    "Version",
                    "Mode",
                    "Author",
                    "Created (UTC)",
                    "Comment",
                    "SHA-256",
                ],
                &rows,
                |h, p| {
                    let v = p.version.to_string();
                    h.td_link(
                        &href("/ui/policies", &[template], &[("version", &v)]),
                        &format!("v{v}"),
                    );
                    h.td(p.mode.as_str());
                    h.td(&p.author);
                    h.td(&fmt_time(p.created_at));
                    h.td(&p.comment);
                    h.td(&p.sha256.chars().take(12).collect::<String>());
                },
            );
            h.el_text(
                "h2",
                &[],
                &format!(
                    "Version {} ({}{})",
                    shown.version,
                    shown.mode.as_str(),
                    if shown.version == latest.version {
                        ", current"
                    } else {
                        ""
                    }
                ),
            );
            h.el_text("pre", &[("class", "policy")], &shown.yaml);
            if let Some(previous) = versions.iter().find(|p| p.version == shown.version - 1) {
                let diff = policies::unified_diff(
                    &format!("v{}", previous.version),
                    &previous.yaml,
                    &format!("v{}", shown.version),
                    &shown.yaml,
                );
                h.el_text(
                    "h2",
                    &[],
                    &format!("Changes from version {}", previous.version),
                );
                if diff.is_empty() {
                    h.el_text(
                        "p",
                        &[("class", "count")],
                        "The same text (a mode switch or a rollback to it).",
                    );
                } else {
                    h.el("pre", &[("class", "diff")], |h| {
                        for line in diff.lines() {
                            let class = match line.as_bytes().first() {
                                Some(b'+') if !line.starts_with("+++") => "add",
                                Some(b'-') if !line.starts_with("---") => "del",
                                _ => "same",
                            };
                            h.el_text("span", &[("class", class)], line).raw("\n");
                        }
                    });
                }
            }
        },
    ))
}
