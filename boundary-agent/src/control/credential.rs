//! The per-session credential: minted by the agent when a session starts, registered with the
//! control plane (only its SHA-256), and given to the wrapped command so that Bridge can tell
//! a governed session's AI traffic from anyone else's and join it to the session's events.
//!
//! Claude Code sends the headers of `ANTHROPIC_CUSTOM_HEADERS` (one `Name: value` per line)
//! with every request; the agent's headers are appended to what the user already set there,
//! and a header the user set is never replaced. Other clients read `BOUNDARY_SESSION_ID` and
//! `BOUNDARY_SESSION_TOKEN` (Codex: `env_http_headers` in its provider config, see README).

use base64::Engine;

/// `bnd_sess_<session id>_<32 random bytes, base64url>`.
pub fn mint(session_id: &str) -> String {
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).expect("the kernel's random source");
    format!(
        "bnd_sess_{session_id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

/// The headers that carry the credential to Bridge.
pub fn headers(
    session_id: &str,
    credential: &str,
    template: Option<&str>,
    workspace: Option<&str>,
) -> Vec<(String, String)> {
    let mut h = vec![
        ("x-bridge-session".to_string(), session_id.to_string()),
        ("x-bridge-session-token".to_string(), credential.to_string()),
    ];
    if let Some(t) = template.filter(|t| !t.is_empty()) {
        h.push(("x-bridge-template".into(), t.into()));
    }
    if let Some(w) = workspace.filter(|w| !w.is_empty()) {
        h.push(("x-bridge-workspace".into(), w.into()));
    }
    h
}

/// `ANTHROPIC_CUSTOM_HEADERS` with `ours` appended to the user's value, skipping every header
/// the user already set (names compare case-insensitively, as HTTP's do).
pub fn merge_custom_headers(user: Option<&str>, ours: &[(String, String)]) -> String {
    let user = user.unwrap_or("");
    let set: Vec<String> = user
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = user.trim_end_matches(['\n', '\r']).to_string();
    for (name, value) in ours {
        if set.contains(&name.to_ascii_lowercase()) {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("{name}: {value}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_their_session_and_are_unguessable() {
        let a = mint("s-1");
        let b = mint("s-1");
        assert!(a.starts_with("bnd_sess_s-1_"), "{a}");
        assert_eq!(a.len(), "bnd_sess_s-1_".len() + 43);
        assert_ne!(a, b);
    }

    #[test]
    fn our_headers_are_appended_and_never_replace_the_users() {
        let ours = headers("s1", "bnd_sess_s1_x", Some("python-dev"), None);
        assert_eq!(
            merge_custom_headers(None, &ours),
            "x-bridge-session: s1\nx-bridge-session-token: bnd_sess_s1_x\nx-bridge-template: python-dev"
        );
        let user = "X-Team: search\nX-Bridge-Template: mine\n";
        assert_eq!(
            merge_custom_headers(Some(user), &ours),
            "X-Team: search\nX-Bridge-Template: mine\nx-bridge-session: s1\nx-bridge-session-token: bnd_sess_s1_x"
        );
    }
}
