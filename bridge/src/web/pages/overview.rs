//! The landing page: the last 24 hours at a glance (blocked decisions, LLM requests and cost,
//! agents that need a look), each figure a link to the view behind it, then the pages.

use chrono::{Duration, Utc};
use http::StatusCode;

use super::fleet::SILENT_AFTER;
use super::{layout, NAV};
use crate::control::{agents, policies};
use crate::error::Error;
use crate::store::{Store, Value};
use crate::usage::{self, GroupBy};
use crate::web::html::href;
use crate::web::Page;

pub async fn page(store: &Store) -> Result<Page, Error> {
    let now = Utc::now();
    let day_ago = now - Duration::hours(24);
    let blocked = store
        .query(
            "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM events \
             WHERE action IN ('deny', 'would_deny') AND ts >= $1",
            vec![Value::Int(Some(day_ago.timestamp_micros()))],
        )
        .await?;
    let (decisions, blocked_events) = blocked
        .first()
        .map(|r| (r[0].int(), r[1].int()))
        .unwrap_or_default();
    let llm = usage::total(&usage::report(store, GroupBy::Provider, Some(day_ago)).await?);
    let fleet = agents::list(store, None).await?;
    let current = policies::latest_versions(store).await?;
    let live: Vec<_> = fleet.iter().filter(|a| a.revoked_at.is_none()).collect();
    let silent = live
        .iter()
        .filter(|a| a.last_seen_at.is_none_or(|t| now - t > SILENT_AFTER))
        .count();
    let behind = live
        .iter()
        .filter(|a| {
            current
                .get(&a.template)
                .is_some_and(|c| a.policy_version != Some(*c))
        })
        .count();
    let lost: i64 = live.iter().filter_map(|a| a.events_lost).sum();
    let figures: Vec<(String, &'static str, String)> = vec![
        (
            decisions.to_string(),
            "connections blocked or would-be blocked in the last 24 h",
            format!("{blocked_events} events"),
        ),
        (
            llm.requests.to_string(),
            "LLM requests in the last 24 h",
            format!(
                "${:.2}, {} tokens in, {} out",
                llm.cost_usd, llm.input_tokens, llm.output_tokens
            ),
        ),
        (
            format!("{} / {}", silent, live.len()),
            "agents silent for over 2 minutes (or never seen)",
            format!("{behind} behind their template's policy, {lost} events lost"),
        ),
    ];
    let links = [
        href("/ui/blocked", &[], &[("since", "24h")]),
        href("/ui/interceptions", &[], &[("since", "24h")]),
        "/ui/fleet".to_string(),
    ];
    Ok(layout(StatusCode::OK, "Audit", |h| {
        h.el("div", &[("class", "figures")], |h| {
            for ((figure, what, detail), link) in figures.iter().zip(&links) {
                h.el("a", &[("class", "figure"), ("href", link)], |h| {
                    h.el_text("strong", &[], figure);
                    h.el_text("span", &[], what);
                    h.el_text("small", &[], detail);
                });
            }
        });
        h.el("ul", &[("class", "overview")], |h| {
            for (path, label, what) in NAV {
                h.el("li", &[], |h| {
                    h.link(path, label);
                    h.raw(": ").text(what);
                });
            }
        });
    }))
}
