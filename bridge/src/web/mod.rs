//! The audit page: server-rendered HTML under `/ui/` on the main listener, for a security team.
//!
//! It shows what the store holds: LLM interceptions and usage, and (with the control plane)
//! blocked connections, sessions with their events and LLM calls side by side, the fleet of
//! agents, policy history and the rollout report. Pages are plain HTML built with [`html::Html`]
//! (which escapes every value by construction) and one stylesheet; filters are GET forms, so a
//! filtered view is a bookmarkable URL. There is no script at all, and the headers forbid any:
//! `Content-Security-Policy: default-src 'self'` without inline script, framing denied, no
//! referrer, no MIME sniffing.
//!
//! Access: `control_plane.admin_token_file` in bridge.yaml. Without it the page is off (404
//! saying how to turn it on). See [`auth`] for the login and its limits. The only
//! state-changing routes are `POST /ui/login` and `POST /ui/logout`, which must come from a
//! page of this server (Origin check) and, for logout, with the SameSite=Strict cookie.

pub mod auth;
pub mod html;
mod pages;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::proxy::{ClientAddr, ProxyBody};
use crate::store::Store;

use auth::{AdminToken, LoginRefusal, Sessions};

/// The page's Content-Security-Policy: everything from this server only, no inline script or
/// style, no plugins, no framing, forms only to this server.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Largest login form accepted.
const MAX_FORM_BYTES: usize = 4096;

/// The audit page of one bridge.
pub struct WebUi {
    store: Store,
    /// `None`: the page is off (no `control_plane.admin_token_file`).
    token: Option<AdminToken>,
    sessions: Sessions,
    /// Served over TLS: cookies are `Secure`, the expected origin is `https://`.
    tls: bool,
}

/// A request as the pages see it: its path and query parameters.
pub(crate) struct PageRequest {
    pub path: String,
    pub params: HashMap<String, String>,
}

impl PageRequest {
    /// A query parameter, trimmed; empty counts as absent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// What a page answers: a status and a complete HTML document.
pub(crate) struct Page {
    pub status: StatusCode,
    pub html: String,
}

impl WebUi {
    pub fn new(store: Store, token: Option<AdminToken>, tls: bool) -> Arc<WebUi> {
        Arc::new(WebUi {
            store,
            token,
            sessions: Sessions::default(),
            tls,
        })
    }

    /// True for the paths this module answers (`/ui` and everything under `/ui/`).
    pub fn serves(path: &str) -> bool {
        path == "/ui" || path.starts_with("/ui/")
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let mut resp = self.route(req).await;
        secure_headers(&mut resp);
        resp
    }

    async fn route(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let Some(token) = &self.token else {
            return html_response(pages::off());
        };
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/ui/style.css") => {
                return static_response("text/css; charset=utf-8", pages::STYLE)
            }
            (&Method::GET, "/ui/login") => {
                let next = req.uri().query().and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "next")
                        .map(|(_, v)| v.into_owned())
                });
                return html_response(pages::login(None, StatusCode::OK, next.as_deref()));
            }
            (&Method::POST, "/ui/login") => return self.login(req, token).await,
            (&Method::POST, "/ui/logout") => return self.logout(&req),
            _ => {}
        }
        let logged_in = auth::session_cookie(req.headers())
            .is_some_and(|id| self.sessions.is_valid(id, Instant::now()));
        if !logged_in {
            // Only pages a browser navigates to are redirected; anything else is just refused.
            // After the login, back to the page asked for (a bookmarked filtered view).
            if method == Method::GET || method == Method::HEAD {
                let asked = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/ui/");
                return redirect(&html::href("/ui/login", &[], &[("next", asked)]));
            }
            return html_response(pages::status_page(
                StatusCode::FORBIDDEN,
                "Not logged in",
                "Log in first.",
            ));
        }
        if method != Method::GET && method != Method::HEAD {
            let mut r = html_response(pages::status_page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "The audit pages are read with GET.",
            ));
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let params = req
            .uri()
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect::<HashMap<_, _>>()
            })
            .unwrap_or_default();
        if let Some(name) = params
            .iter()
            .find(|(_, v)| v.chars().any(char::is_control))
            .map(|(k, _)| k)
        {
            return html_response(pages::status_page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("filter `{name}` holds a control character"),
            ));
        }
        let page_req = PageRequest { path, params };
        html_response(pages::render(&self.store, &page_req).await)
    }

    async fn login(&self, req: Request<Incoming>, token: &AdminToken) -> Response<ProxyBody> {
        if !auth::same_origin(req.headers(), self.tls) {
            return html_response(pages::status_page(
                StatusCode::FORBIDDEN,
                "Refused",
                "A login must be sent from this server's own login page (the Origin header did not match).",
            ));
        }
        let client = req
            .extensions()
            .get::<ClientAddr>()
            .map(|a| a.0.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let body = http_body_util::Limited::new(req.into_body(), MAX_FORM_BYTES);
        let body = match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => {
                return html_response(pages::login(
                    Some("The login form could not be read."),
                    StatusCode::BAD_REQUEST,
                    None,
                ))
            }
        };
        let field = |name: &str| {
            form_urlencoded::parse(&body)
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let presented = field("token").unwrap_or_default();
        let next = field("next");
        match self
            .sessions
            .login(token, &presented, client, Instant::now())
        {
            Ok(id) => {
                tracing::info!(client = %client, "audit page: admin logged in");
                let mut r = redirect(next.as_deref().unwrap_or("/ui/"));
                if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(Some(&id), self.tls)) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(LoginRefusal::WrongToken) => {
                tracing::warn!(client = %client, "audit page: login with a wrong admin token");
                html_response(pages::login(
                    Some("Wrong admin token."),
                    StatusCode::UNAUTHORIZED,
                    next.as_deref(),
                ))
            }
            Err(LoginRefusal::TooMany(wait)) => {
                tracing::warn!(client = %client, "audit page: login refused, too many failed attempts");
                let mut r = html_response(pages::login(
                    Some("Too many failed logins: wait a minute and try again."),
                    StatusCode::TOO_MANY_REQUESTS,
                    next.as_deref(),
                ));
                if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
        }
    }

    fn logout(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        if !auth::same_origin(req.headers(), self.tls) {
            return html_response(pages::status_page(
                StatusCode::FORBIDDEN,
                "Refused",
                "A logout must be sent from a page of this server.",
            ));
        }
        if let Some(id) = auth::session_cookie(req.headers()) {
            self.sessions.end(id);
        }
        let mut r = redirect("/ui/login");
        if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(None, self.tls)) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }
}

fn html_response(page: Page) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(page.html));
    *r.status_mut() = page.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn static_response(content_type: &'static str, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    r
}

/// `303 See Other` to a page of the audit UI (after a POST, the browser GETs it). Anything
/// else (another site, `//host`, a path outside `/ui/`) goes to `/ui/` instead: a `next`
/// parameter cannot send a logged-in admin elsewhere.
fn redirect(to: &str) -> Response<ProxyBody> {
    let to = if is_ui_path(to) { to } else { "/ui/" };
    let mut r = Response::new(ProxyBody::full(""));
    *r.status_mut() = StatusCode::SEE_OTHER;
    let location = HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/ui/"));
    r.headers_mut().insert(header::LOCATION, location);
    r
}

fn is_ui_path(p: &str) -> bool {
    p.starts_with("/ui/")
        && !p.contains("//")
        && !p.contains('\\')
        && p.bytes().all(|b| b.is_ascii_graphic())
}

/// The headers every answer under `/ui/` carries.
fn secure_headers(r: &mut Response<ProxyBody>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn redirects_stay_on_the_audit_pages() {
        for (to, ok) in [
            ("/ui/interceptions?user=a", true),
            ("/ui/", true),
            ("//evil.example/ui/", false),
            ("/ui//evil.example", false),
            ("https://evil.example/ui/", false),
            ("/ui/\\evil", false),
            ("/ui/a\r\nSet-Cookie: x", false),
            ("/healthz", false),
        ] {
            assert_eq!(super::is_ui_path(to), ok, "{to}");
        }
    }
}
