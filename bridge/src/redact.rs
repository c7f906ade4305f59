//! What records keep of prompts: `prompt_recording: full | redacted | none` in bridge.yaml.
//!
//! Prompts and tool-call arguments are what users and agents typed, and agents paste secrets
//! into them (a `.env` file, a `curl -H "Authorization: Bearer ..."`). Regulated tenants can
//! keep them out of the store, the spool, the journal and the log line:
//!
//! - `full` (default): text kept as sent (up to `limits.max_recorded_prompt_bytes`).
//! - `redacted`: text kept with secrets replaced by `[REDACTED:kind]`: provider and API keys
//!   (`sk-...`, `sk-ant-...`), bridge tokens, AWS access keys (`AKIA...`), GitHub tokens
//!   (`ghp_...`, `github_pat_...`), Slack tokens, JWTs, PEM private keys, bearer tokens and
//!   `password=`/`secret:`-style assignments.
//! - `none`: no prompt and no tool-call arguments at all; metadata, tokens, cost and tool
//!   names stay, so usage reports and chargeback are unchanged.
//!
//! The policy is applied where records enter the recorder ([`crate::recorder::Recorder`]), so
//! nothing behind it (journal, spool, store, log) ever sees the text it removes. Pattern
//! matching is best effort: it catches the well-known shapes above, not every secret.

use std::sync::OnceLock;

use regex_lite::Regex;
use serde::Deserialize;

use crate::record::InterceptionRecord;

/// How much of prompts and tool-call arguments a record keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptRecording {
    /// Text as sent.
    #[default]
    Full,
    /// Text with secrets replaced by `[REDACTED:kind]`.
    Redacted,
    /// No text: metadata, tokens, cost and tool names only.
    None,
}

impl PromptRecording {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptRecording::Full => "full",
            PromptRecording::Redacted => "redacted",
            PromptRecording::None => "none",
        }
    }

    /// Applies the policy to a record's prompt, tool-call arguments and tool results (the
    /// output of commands and file reads: as sensitive as the prompt).
    pub fn apply(self, rec: &mut InterceptionRecord) {
        match self {
            PromptRecording::Full => {}
            PromptRecording::None => {
                rec.prompt = None;
                for call in &mut rec.tool_calls {
                    call.arguments.clear();
                }
                for result in &mut rec.tool_results {
                    result.content.clear();
                }
            }
            PromptRecording::Redacted => {
                if let Some(p) = rec.prompt.as_mut() {
                    redact_in_place(p);
                }
                for call in &mut rec.tool_calls {
                    redact_in_place(&mut call.arguments);
                }
                for result in &mut rec.tool_results {
                    redact_in_place(&mut result.content);
                }
            }
        }
    }
}

/// A secret shape: its kind, literals one of which any match contains (a cheap test that
/// skips the pattern for the many texts without them), and the pattern.
struct Shape {
    kind: &'static str,
    /// Literals to look for; matched against the lowercased text if `any_case`.
    hints: &'static [&'static str],
    any_case: bool,
    pattern: &'static str,
}

/// Most specific first: a PEM block or a JWT is replaced whole before the generic token
/// patterns could cut it into pieces.
const SHAPES: &[Shape] = &[
    Shape {
        kind: "private_key",
        hints: &["-----BEGIN"],
        any_case: false,
        pattern: r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|$)",
    },
    Shape {
        kind: "jwt",
        hints: &["eyJ"],
        any_case: false,
        pattern: r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",
    },
    Shape {
        kind: "api_key",
        hints: &["sk-"],
        any_case: false,
        pattern: r"\bsk-[A-Za-z0-9_-]{16,}",
    },
    Shape {
        kind: "bridge_token",
        hints: &["brg_"],
        any_case: false,
        pattern: r"\bbrg_[A-Za-z0-9_-]{16,}",
    },
    Shape {
        kind: "aws_access_key",
        hints: &["AKIA", "ASIA"],
        any_case: false,
        pattern: r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    },
    Shape {
        kind: "github_token",
        hints: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        any_case: false,
        pattern: r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
    },
    Shape {
        kind: "slack_token",
        hints: &["xox"],
        any_case: false,
        pattern: r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    },
    Shape {
        kind: "bearer_token",
        hints: &["bearer"],
        any_case: true,
        pattern: r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}",
    },
    Shape {
        kind: "password",
        hints: &["pass", "pwd", "secret", "key", "token"],
        any_case: true,
        pattern: r#"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)["']?\s*[:=]\s*["']?[^\s"',;]{4,}"#,
    },
];

fn compiled() -> &'static [Regex] {
    static COMPILED: OnceLock<Vec<Regex>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        SHAPES
            .iter()
            .map(|s| Regex::new(s.pattern).expect("built-in pattern compiles"))
            .collect()
    })
}

/// `text` with every secret the patterns know replaced by `[REDACTED:kind]`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    redact_in_place(&mut out);
    out
}

fn redact_in_place(text: &mut String) {
    // Lowercased once for the case-insensitive hints (a replacement only removes text, so a
    // hint absent before is absent after).
    let lower = text.to_ascii_lowercase();
    for (shape, re) in SHAPES.iter().zip(compiled()) {
        let haystack = if shape.any_case { &lower } else { &*text };
        if !shape.hints.iter().any(|h| haystack.contains(h)) {
            continue;
        }
        if re.is_match(text) {
            *text = re
                .replace_all(text, format!("[REDACTED:{}]", shape.kind).as_str())
                .into_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secret_shapes_are_replaced_by_their_kind() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----";
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        let cases = [
            ("key sk-ant-api03-abcdefghijklmnop1234 here", "api_key"),
            ("OPENAI_API_KEY=sk-proj-ABCDEFGHIJKLMNOPQRST", "api_key"),
            ("aws AKIAIOSFODNN7EXAMPLE ok", "aws_access_key"),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github_token"),
            (
                "curl -H 'Authorization: Bearer abc.def-ghi_jkl012'",
                "bearer_token",
            ),
            (jwt, "jwt"),
            (pem, "private_key"),
            ("db password: hunter2hunter2", "password"),
            ("{\"client_secret\": \"abc123def456\"}", "password"),
            ("slack xoxb-1234567890-abcdefghij", "slack_token"),
            ("brg_AbCdEfGhIjKlMnOpQrStUv", "bridge_token"),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv",
                "github_token",
            ),
        ];
        for (text, kind) in cases {
            let out = redact(text);
            assert!(
                out.contains(&format!("[REDACTED:{kind}]")),
                "{text:?} -> {out:?}"
            );
        }
        let out = redact(&format!("a {pem} b"));
        assert!(
            !out.contains("MIIE") && !out.contains("PRIVATE KEY"),
            "{out}"
        );
        assert_eq!(
            redact("What is the weather in Paris?"),
            "What is the weather in Paris?"
        );
    }
}
