//! Usage: requests, tokens and cost grouped by user, model, provider or day (what
//! `llm-bridge usage` prints), with the totals.

use http::StatusCode;

use super::{filter_form, layout, time_param, Field};
use crate::error::Error;
use crate::store::Store;
use crate::usage::{self, GroupBy, UsageRow};
use crate::web::html::href;
use crate::web::{Page, PageRequest};

const FIELDS: &[Field] = &[
    Field {
        name: "by",
        label: "Group by",
        placeholder: "user, model, provider or day",
    },
    Field {
        name: "since",
        label: "Since",
        placeholder: "30d",
    },
];

pub async fn page(store: &Store, req: &PageRequest) -> Result<Page, Error> {
    let by = match req.param("by").unwrap_or("user") {
        "user" => GroupBy::User,
        "model" => GroupBy::Model,
        "provider" => GroupBy::Provider,
        "day" => GroupBy::Day,
        other => {
            return Err(Error::Query(format!(
                "filter `by`: {other:?} is not one of user, model, provider, day"
            )))
        }
    };
    let since = time_param(req, "since")?;
    let rows = usage::report(store, by, since).await?;
    let total = usage::total(&rows);
    Ok(layout(StatusCode::OK, "Usage", |h| {
        filter_form(h, "/ui/usage", FIELDS, req);
        let since = req.param("since").unwrap_or("");
        h.el("p", &[("class", "groupings")], |h| {
            h.raw("Group by: ");
            for label in ["user", "model", "provider", "day"] {
                h.link(
                    &href("/ui/usage", &[], &[("by", label), ("since", since)]),
                    label,
                )
                .raw(" ");
            }
        });
        let all: Vec<&UsageRow> = rows.iter().chain(std::iter::once(&total)).collect();
        h.table(
            "usage",
            &[
                by.label(),
                "Requests",
                "Input tokens",
                "Output tokens",
                "Cost (USD)",
                "Unpriced requests",
            ],
            &all,
            |h, r| {
                if by == GroupBy::User && r.key != "TOTAL" {
                    h.td_link(&href("/ui/interceptions", &[], &[("user", &r.key)]), &r.key);
                } else {
                    h.td(&r.key);
                }
                h.td(&r.requests.to_string())
                    .td(&r.input_tokens.to_string())
                    .td(&r.output_tokens.to_string())
                    .td(&format!("{:.6}", r.cost_usd))
                    .td(&r.unpriced_requests.to_string());
            },
        );
    }))
}
