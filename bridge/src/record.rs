//! The interception record: what Bridge knows about one request once it is over.
//!
//! This type is the contract between the request path (which fills it from the request, the
//! upstream's response and the tee'd stream) and the recording path (which prices it, stores
//! it, logs it and exports it). Field names are the storage and JSON-log names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which provider API family a request spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Anthropic,
    Openai,
    Gemini,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Openai => "openai",
            Provider::Gemini => "gemini",
        }
    }
}

/// How a request ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered 2xx and the whole answer reached the client.
    Ok,
    /// The upstream answered with an error status or an error event in the stream.
    UpstreamError,
    /// The upstream could not be reached or the connection broke mid-answer.
    UpstreamUnavailable,
    /// The client went away before the answer was complete.
    ClientCancelled,
    /// The request was refused before reaching the upstream (bad token, bad body, ...).
    Rejected,
    /// The intercept-start entry of a request that went upstream and whose end was never
    /// recorded: still in flight, or the bridge stopped (crash, kill) before it finished.
    Incomplete,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::ClientCancelled => "client_cancelled",
            Outcome::Rejected => "rejected",
            Outcome::Incomplete => "incomplete",
        }
    }
}

/// Token counts exactly as the provider reported them (zero when not reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

/// One tool call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider's call id (`toolu_...`, `call_...`), when given.
    pub id: Option<String>,
    pub name: String,
    /// Arguments as the JSON text the model produced (may be partial if the stream was cut).
    pub arguments: String,
}

/// A tool result the client sent back to the model (the output of an earlier tool call),
/// linked to that call by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The id of the tool call it answers (`toolu_...`, `call_...`).
    pub id: String,
    /// Size of the whole result text in bytes.
    pub size: u64,
    /// The result text, cut at [`MAX_TOOL_RESULT_BYTES`] (on a character boundary).
    pub content: String,
    /// The client marked the tool run as failed.
    #[serde(default)]
    pub is_error: bool,
}

/// Longest tool result text kept per result; the rest is dropped (its size is kept).
pub const MAX_TOOL_RESULT_BYTES: usize = 4096;
/// Most tool results kept per request (a client may answer many calls at once).
pub const MAX_TOOL_RESULTS: usize = 64;

impl ToolResult {
    pub fn new(id: String, text: &str, is_error: bool) -> ToolResult {
        let mut end = text.len().min(MAX_TOOL_RESULT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ToolResult {
            id,
            size: text.len() as u64,
            content: text[..end].to_owned(),
            is_error,
        }
    }
}

/// Optional context a workspace passes in `x-bridge-workspace`, `x-bridge-template` and
/// `x-bridge-session` headers, stored with the record for correlation with Boundary events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceContext {
    pub workspace: Option<String>,
    pub template: Option<String>,
    pub session: Option<String>,
}

/// Everything recorded about one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterceptionRecord {
    pub id: Uuid,
    /// The authenticated user (never the token).
    pub user: String,
    /// Id of the bridge key used, for revocation audits.
    pub key_id: Option<String>,
    pub provider: Provider,
    /// Path as the provider knows it, e.g. `/v1/messages`, `/v1/chat/completions`.
    pub endpoint: String,
    pub model: Option<String>,
    /// The client's `user-agent`.
    pub client: Option<String>,
    pub streaming: bool,
    pub started_at: DateTime<Utc>,
    /// Time from receiving the request to the first response byte sent to the client.
    pub ttfb_ms: Option<f64>,
    pub duration_ms: f64,
    /// HTTP status returned to the client.
    pub status: u16,
    pub outcome: Outcome,
    pub usage: Usage,
    /// Cost in USD from the pricing table; filled by the recorder, `None` if the model is not priced.
    pub cost_usd: Option<f64>,
    /// Text of the last user message of the request.
    pub prompt: Option<String>,
    /// Names of the tools the request offered to the model.
    pub tools_offered: Vec<String>,
    /// Tool calls the model made in its answer.
    pub tool_calls: Vec<ToolCall>,
    /// Results of earlier tool calls that this request sent back to the model (only those new
    /// since the model's last turn, not the whole history again).
    #[serde(default)]
    pub tool_results: Vec<ToolResult>,
    pub context: WorkspaceContext,
    /// The client's own session id (Claude Code's `x-claude-code-session-id`, Codex's
    /// `session_id`, or a generic `x-client-session-id`): one agent session's requests share it.
    #[serde(default)]
    pub client_session: Option<String>,
    /// The address the request came from.
    #[serde(default)]
    pub client_addr: Option<String>,
    /// Short reason for a non-ok outcome (error type/message from upstream, never secrets).
    pub error: Option<String>,
}
