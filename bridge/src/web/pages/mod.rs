//! The pages of the audit UI: one module per page, a shared layout, the filter form, and the
//! stylesheet. Every page is a function from the store and the request's parameters to a
//! [`Page`]; a store error becomes a 500 page that says what failed (never a stack trace).

mod blocked;
mod fleet;
mod interceptions;
mod overview;
mod policies;
mod report;
mod session;
mod sessions;
mod usage;

use chrono::{DateTime, Utc};
use http::StatusCode;

use super::html::{href, Html};
use super::{Page, PageRequest};
use crate::error::Error;
use crate::store::Store;

/// The one stylesheet (served as `/ui/style.css`: the CSP allows no inline style).
pub const STYLE: &str = include_str!("style.css");

/// Most rows a list shows; the page says when there were more.
pub const ROW_LIMIT: u32 = 500;

pub async fn render(store: &Store, req: &PageRequest) -> Page {
    let path = req.path.as_str();
    let result = match path {
        "/ui" | "/ui/" => overview::page(store).await,
        "/ui/interceptions" => interceptions::list(store, req).await,
        "/ui/usage" => usage::page(store, req).await,
        "/ui/fleet" => fleet::page(store, req).await,
        "/ui/policies" => policies::list(store).await,
        "/ui/sessions" => sessions::list(store, req).await,
        "/ui/blocked" => blocked::list(store, req).await,
        "/ui/report" => report::page(store, req).await,
        _ => {
            if let Some(id) = path.strip_prefix("/ui/interceptions/") {
                interceptions::detail(store, id).await
            } else if let Some(id) = segment(path, "/ui/events/") {
                blocked::detail(store, &id).await
            } else if let Some(id) = segment(path, "/ui/sessions/") {
                session::page(store, &id).await
            } else if let Some(template) = segment(path, "/ui/policies/") {
                policies::history(store, &template, req).await
            } else {
                Ok(status_page(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no such page. The pages are listed at the top.",
                ))
            }
        }
    };
    result.unwrap_or_else(|e| match e {
        Error::Query(msg) => status_page(StatusCode::BAD_REQUEST, "Bad request", &msg),
        e => {
            tracing::error!(error = %e, path, "audit page failed");
            status_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The store failed",
                &format!("{e}"),
            )
        }
    })
}

/// The one path segment after `prefix`, percent-decoded (`None` for more segments or none).
fn segment(path: &str, prefix: &str) -> Option<String> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    percent_decode(rest)
}

/// `%XX` sequences decoded; `None` when a sequence is broken or the result is not UTF-8 or
/// holds a control character.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}

/// The navigation: (path, label, what the page shows).
const NAV: &[(&str, &str, &str)] = &[
    (
        "/ui/blocked",
        "Blocked connections",
        "connections Boundary denied (or would deny, in audit mode): where to, which process, whose",
    ),
    (
        "/ui/interceptions",
        "LLM interceptions",
        "every request through the gateway: user, model, tokens, cost, prompt",
    ),
    (
        "/ui/usage",
        "Usage",
        "requests, tokens and cost by user, model, provider or day",
    ),
    (
        "/ui/sessions",
        "Sessions",
        "Boundary sessions: who ran which command under which template, and when",
    ),
    (
        "/ui/fleet",
        "Fleet",
        "enrolled agents: host, version, policy version applied, last seen, events lost",
    ),
    (
        "/ui/policies",
        "Policies",
        "each template's policy: current version and mode, history, the text of every version",
    ),
    (
        "/ui/report",
        "Rollout report",
        "what enforce mode would deny for a template: read it before switching from audit",
    ),
];

/// A complete document: head, navigation, a title and what `body` writes.
pub fn layout(status: StatusCode, title: &str, body: impl FnOnce(&mut Html)) -> Page {
    Page {
        status,
        html: document(title, true, body),
    }
}

fn document(title: &str, nav: bool, body: impl FnOnce(&mut Html)) -> String {
    let mut h = Html::new();
    h.raw("<!doctype html>");
    h.el("html", &[("lang", "en")], |h| {
        h.el("head", &[], |h| {
            h.void("meta", &[("charset", "utf-8")]);
            h.void(
                "meta",
                &[
                    ("name", "viewport"),
                    ("content", "width=device-width, initial-scale=1"),
                ],
            );
            h.el("title", &[], |h| {
                h.text(title).raw(" · llm-bridge audit");
            });
            h.void("link", &[("rel", "stylesheet"), ("href", "/ui/style.css")]);
        });
        h.el("body", &[], |h| {
            h.el("header", &[], |h| {
                h.el("nav", &[], |h| {
                    h.el_text(
                        "a",
                        &[("href", "/ui/"), ("class", "brand")],
                        "llm-bridge audit",
                    );
                    if nav {
                        for (path, label, _) in NAV {
                            h.link(path, label);
                        }
                        h.el(
                            "form",
                            &[
                                ("method", "post"),
                                ("action", "/ui/logout"),
                                ("class", "logout"),
                            ],
                            |h| {
                                h.el_text("button", &[("type", "submit")], "Log out");
                            },
                        );
                    }
                });
            });
            h.el("main", &[], |h| {
                h.el_text("h1", &[], title);
                body(h);
            });
        });
    });
    h.into_string()
}

/// The login form, with an error message after a failed attempt.
pub fn login(error: Option<&str>, status: StatusCode, next: Option<&str>) -> Page {
    Page {
        status,
        html: document("Log in", false, |h| {
            if let Some(e) = error {
                h.el_text("p", &[("class", "error"), ("id", "login-error")], e);
            }
            h.el(
                "form",
                &[
                    ("method", "post"),
                    ("action", "/ui/login"),
                    ("class", "login"),
                ],
                |h| {
                    if let Some(next) = next {
                        h.void(
                            "input",
                            &[("type", "hidden"), ("name", "next"), ("value", next)],
                        );
                    }
                    h.el("label", &[], |h| {
                        h.raw("Admin token ");
                        h.void(
                            "input",
                            &[
                                ("type", "password"),
                                ("name", "token"),
                                ("autocomplete", "current-password"),
                                ("required", "required"),
                                ("autofocus", "autofocus"),
                            ],
                        );
                    });
                    h.el_text("button", &[("type", "submit")], "Log in");
                },
            );
            h.el_text(
                "p",
                &[("class", "hint")],
                "The token is in the file named by control_plane.admin_token_file in bridge.yaml.",
            );
        }),
    }
}

/// What `/ui/` answers when no admin token is configured.
pub fn off() -> Page {
    status_page(
        StatusCode::NOT_FOUND,
        "The audit page is off",
        "Set control_plane.admin_token_file in bridge.yaml to a file holding an admin token (one line, at least 16 characters), then restart llm-bridge serve.",
    )
}

/// A page with a title and one message (errors, 404).
pub fn status_page(status: StatusCode, title: &str, message: &str) -> Page {
    Page {
        status,
        html: document(title, false, |h| {
            h.el_text("p", &[("class", "message")], message);
            h.link("/ui/", "Back to the audit page");
        }),
    }
}

/// One input of a filter form.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub placeholder: &'static str,
}

/// The filters several pages share, named and explained the same way everywhere.
pub const TEMPLATE: Field = Field {
    name: "template",
    label: "Template",
    placeholder: "python-dev",
};
pub const WORKSPACE: Field = Field {
    name: "workspace",
    label: "Workspace",
    placeholder: "ws-42",
};
pub const USER: Field = Field {
    name: "user",
    label: "User",
    placeholder: "alice",
};
pub const SINCE: Field = Field {
    name: "since",
    label: "Since",
    placeholder: "7d, 24h, 2026-01-31",
};
pub const UNTIL: Field = Field {
    name: "until",
    label: "Until",
    placeholder: "RFC 3339 or date",
};

/// A GET form to `action` with one text input per field, filled from the request: submitting
/// it gives a bookmarkable URL.
pub fn filter_form(h: &mut Html, action: &'static str, fields: &[Field], req: &PageRequest) {
    h.el(
        "form",
        &[("method", "get"), ("action", action), ("class", "filters")],
        |h| {
            for f in fields {
                h.el("label", &[], |h| {
                    h.text(f.label).raw(" ");
                    h.void(
                        "input",
                        &[
                            ("type", "text"),
                            ("name", f.name),
                            ("value", req.param(f.name).unwrap_or("")),
                            ("placeholder", f.placeholder),
                        ],
                    );
                });
            }
            h.el_text("button", &[("type", "submit")], "Filter");
            h.el_text("a", &[("href", action), ("class", "clear")], "Clear");
        },
    );
}

/// The `since` / `until` parameters (`7d`, `24h`, an RFC 3339 time or a date).
pub fn time_param(req: &PageRequest, name: &str) -> Result<Option<DateTime<Utc>>, Error> {
    req.param(name)
        .map(|s| {
            crate::usage::parse_since(s, Utc::now())
                .map_err(|e| Error::Query(format!("filter `{name}`: {e}")))
        })
        .transpose()
}

pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn fmt_cost(c: Option<f64>) -> String {
    c.map(|c| format!("${c:.4}")).unwrap_or_else(|| "-".into())
}

/// "N rows." or, when the limit was reached, a note and a link to the next (older) rows:
/// `older` is the cursor of the last row shown (see [`cursor_param`]).
pub fn count_note(
    h: &mut Html,
    shown: usize,
    limit: u32,
    page: (&'static str, &PageRequest),
    older: Option<String>,
) {
    h.el("p", &[("class", "count")], |h| {
        match older.filter(|_| shown >= limit as usize) {
            Some(cursor) => {
                h.text(&format!("{shown} rows shown (the most a page holds). "));
                let (action, req) = page;
                let mut params: Vec<(&str, &str)> = req
                    .params
                    .iter()
                    .filter(|(k, _)| k.as_str() != "before")
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                params.sort();
                params.push(("before", &cursor));
                h.el_text(
                    "a",
                    &[("href", &href(action, &[], &params)), ("class", "older")],
                    "Older rows",
                );
            }
            None => {
                h.text(&format!("{shown} rows."));
            }
        }
    });
}

/// The `before` parameter of a paged list: `MICROS.ID`, the time (µs since the epoch) and
/// id of the last row of the page before; the next page holds the rows strictly after it in
/// (time, id) order, so no row is skipped or shown twice, even among rows of one instant.
pub fn cursor_param(req: &PageRequest) -> Result<Option<(i64, String)>, Error> {
    req.param("before")
        .map(|c| {
            c.split_once('.')
                .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id.to_string())))
                .filter(|(_, id)| !id.is_empty())
                .ok_or_else(|| {
                    Error::Query(format!(
                        "`before` {c:?} is not a page cursor (follow the page's \"Older rows\" link)"
                    ))
                })
        })
        .transpose()
}

/// The cursor of a row (see [`cursor_param`]).
pub fn cursor(ts: DateTime<Utc>, id: &str) -> String {
    format!("{}.{id}", ts.timestamp_micros())
}

/// Text cut to `max` characters, with an ellipsis when cut.
pub fn excerpt(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// A link to the session page, or `-`.
pub fn session_cell(h: &mut Html, session: Option<&str>) {
    match session {
        Some(s) => {
            h.td_link(&href("/ui/sessions", &[s], &[]), s);
        }
        None => {
            h.td("-");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_segment_is_one_percent_decoded_segment() {
        assert_eq!(
            super::segment("/ui/policies/py%20dev", "/ui/policies/").as_deref(),
            Some("py dev")
        );
        assert_eq!(super::segment("/ui/policies/a/b", "/ui/policies/"), None);
        assert_eq!(super::segment("/ui/policies/", "/ui/policies/"), None);
        assert_eq!(super::segment("/ui/policies/%zz", "/ui/policies/"), None);
        assert_eq!(super::segment("/ui/policies/%ff", "/ui/policies/"), None);
        // No id holds a control character (PostgreSQL refuses NUL in text).
        assert_eq!(super::segment("/ui/sessions/a%00b", "/ui/sessions/"), None);
    }
}
