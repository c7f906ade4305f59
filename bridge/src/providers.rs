//! Provider adapters: what the gateway must know about each provider API it fronts.
//!
//! One adapter per API family (Anthropic Messages, OpenAI Chat Completions, OpenAI Responses,
//! Google Gemini),
//! each in its own file behind [`ProviderAdapter`]. An adapter parses the client's request
//! (model, stream flag, last user prompt, tools offered), puts the server-side key where the
//! provider expects it, renders errors in the provider's own JSON format, and builds a
//! [`ResponseObserver`] that watches a *copy* of the response bytes (JSON or SSE) to extract
//! usage, tool calls and error events. Adding a provider is adding one file here.

pub mod anthropic;
pub mod gemini;
pub mod openai_chat;
pub mod openai_responses;

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::record::{Provider, ToolCall, ToolResult, Usage};

/// What the gateway learned from a request body before forwarding it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    pub model: Option<String>,
    pub streaming: bool,
    /// Text of the last user message.
    pub prompt: Option<String>,
    pub tools_offered: Vec<String>,
    /// Tool results the client sends back since the model's last turn.
    pub tool_results: Vec<ToolResult>,
    /// A rewritten body to forward instead of the client's (e.g. OpenAI chat streams with
    /// `stream_options.include_usage` forced on). `None` forwards the client's bytes untouched.
    pub rewritten_body: Option<Bytes>,
    /// The client did not ask for the stream's usage chunk, which the gateway requested anyway
    /// for the record: withhold that chunk from the client (see [`is_usage_only_chunk`]).
    pub withhold_usage_chunk: bool,
}

/// Bounds on what an observer keeps in memory while it watches a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserveLimits {
    /// Longest SSE line inspected; longer lines pass to the client but are not parsed.
    pub max_sse_line: usize,
    /// Largest JSON (non-streaming) body buffered for parsing.
    pub max_json_body: usize,
}

impl Default for ObserveLimits {
    fn default() -> Self {
        ObserveLimits {
            max_sse_line: 8 * 1024 * 1024,
            max_json_body: 16 * 1024 * 1024,
        }
    }
}

/// Why a request body was refused with a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// What an observer extracted from a response once it is over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub usage: Usage,
    pub tool_calls: Vec<ToolCall>,
    /// The model the upstream says answered (may differ from the requested alias).
    pub model: Option<String>,
    /// An error the upstream reported, in the body or as a stream event.
    pub error: Option<String>,
    /// Part of the response was too large to inspect (an SSE line or JSON body over the
    /// [`ObserveLimits`]), so usage or tool calls may be missing from the observation.
    pub truncated: bool,
}

/// Watches a copy of one response body, chunk by chunk, off the client's hot path.
pub trait ResponseObserver: Send {
    fn feed(&mut self, chunk: &[u8]);
    fn finish(self: Box<Self>) -> Observation;
    /// Whether the stream's terminal event has been fed (`message_stop`, `data: [DONE]`,
    /// `response.completed`, ...): nothing after it changes the record, and SDKs stop
    /// reading there, so the gateway records the exchange at that event and holds the event
    /// until the record is durable (see [`crate::proxy`]). `false` for JSON answers, whose end
    /// is their last byte.
    fn answer_complete(&self) -> bool {
        false
    }
}

/// The provider error families the gateway itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    /// Missing, unknown or revoked bridge token (401).
    Authentication,
    /// Body is not JSON or lacks a required field (400).
    InvalidRequest,
    /// The provider is not configured on this bridge (503).
    NotConfigured,
    /// The upstream could not be reached (502).
    UpstreamUnavailable,
    /// Unknown route (404).
    NotFound,
    /// Refused by a limit (403): a model the policy does not allow.
    PermissionDenied,
    /// A budget is used up (Anthropic 402, OpenAI 429 `insufficient_quota`).
    BudgetExceeded,
    /// A rate limit is reached (429, with `retry-after`).
    RateLimited,
}

/// One provider API family.
pub trait ProviderAdapter: Send + Sync + 'static {
    fn provider(&self) -> Provider;
    /// Parses the client's request body for `endpoint` (a provider path such as `/v1/messages`).
    fn parse_request(&self, endpoint: &str, body: &Bytes) -> Result<RequestInfo, BadRequest>;
    /// Puts the server-side provider key where the upstream expects it.
    fn set_upstream_auth(&self, headers: &mut HeaderMap, key: &HeaderValue);
    /// Renders an error in the provider's own JSON error format.
    fn error_body(&self, kind: GatewayError, message: &str) -> Bytes;
    /// [`ProviderAdapter::error_body`] for an answer with HTTP `status`, for formats that
    /// repeat the status in the body (Gemini's `error.code`).
    fn error_body_for(&self, status: u16, kind: GatewayError, message: &str) -> Bytes {
        let _ = status;
        self.error_body(kind, message)
    }
    /// The upstream path for a route `endpoint` once the gateway decided on `model` (after
    /// policy and aliases); `None` if no valid path can be made. Most APIs name the model in
    /// the body and keep the path as is; Gemini names it in the path.
    fn upstream_path<'a>(&self, endpoint: &'a str, model: Option<&str>) -> Option<Cow<'a, str>> {
        let _ = model;
        Some(Cow::Borrowed(endpoint))
    }
    /// The request `body` asking for `model` instead (a model alias); `None` if it cannot be
    /// rewritten.
    fn with_model(&self, body: &Bytes, model: &str) -> Option<Bytes> {
        body_with_model(body, model)
    }
    /// An observer for the response to a request to `endpoint`.
    fn observer(
        &self,
        endpoint: &str,
        streaming: bool,
        limits: ObserveLimits,
    ) -> Box<dyn ResponseObserver>;
}

/// `body` (a JSON object with a `model` member) asking for `model` instead.
pub(crate) fn body_with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    *v.as_object_mut()?.get_mut("model")? = serde_json::Value::String(model.to_string());
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Builds a bearer `Authorization` value from a key, as both OpenAI and chained gateways expect.
pub fn bearer(key: &HeaderValue) -> HeaderValue {
    let mut v = Vec::with_capacity(7 + key.len());
    v.extend_from_slice(b"Bearer ");
    v.extend_from_slice(key.as_bytes());
    let mut value = HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// One server-sent event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser (WHATWG framing) fed with arbitrary chunk boundaries.
///
/// Lines end in `\n` or `\r\n` (the providers never use a lone `\r`); an empty line dispatches
/// the event; comment lines (`:`) and unknown fields are ignored. A line longer than the
/// parser's bound is skipped, and so is the event it belongs to, so that one huge line from a
/// hostile or broken upstream cannot grow the gateway's memory without limit.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    max_line: usize,
    /// Inside a line that exceeded `max_line`: bytes are dropped until its end.
    skipping_line: bool,
    /// The current event lost a line: it is dropped at its end instead of dispatched.
    event_damaged: bool,
    oversized: u64,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_max_line(ObserveLimits::default().max_sse_line)
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that skips lines longer than `max_line` bytes.
    pub fn with_max_line(max_line: usize) -> Self {
        SseParser {
            line: Vec::new(),
            event: None,
            data: None,
            max_line,
            skipping_line: false,
            event_damaged: false,
            oversized: 0,
        }
    }

    /// Lines skipped because they were longer than the bound.
    pub fn oversized_lines(&self) -> u64 {
        self.oversized
    }

    /// Feeds a chunk; calls `on_event` for every event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent)) {
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if self.skipping_line {
                self.skipping_line = false;
                rest = &rest[pos + 1..];
                continue;
            }
            if !self.fits(pos) {
                // The over-long line ends right here.
                self.skipping_line = false;
                rest = &rest[pos + 1..];
                continue;
            }
            self.line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(ev) = self.process_line(&line) {
                on_event(ev);
            }
            // Reuse the allocation unless a large line left it big.
            if line.capacity() <= 64 * 1024 {
                line.clear();
                self.line = line;
            }
        }
        if !self.skipping_line && self.fits(rest.len()) {
            self.line.extend_from_slice(rest);
        }
    }

    /// Whether `more` bytes still fit in the current line; if not, starts skipping it.
    fn fits(&mut self, more: usize) -> bool {
        if self.line.len() + more <= self.max_line {
            return true;
        }
        self.line = Vec::new();
        self.skipping_line = true;
        self.event_damaged = true;
        self.oversized += 1;
        false
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            if std::mem::take(&mut self.event_damaged) {
                return None;
            }
            return data.map(|data| SseEvent { event, data });
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            _ => {}
        }
        None
    }
}

/// Buffers a JSON (non-streaming) response body and hands it to a parser at the end.
pub struct JsonBodyObserver {
    body: Vec<u8>,
    max: usize,
    too_big: bool,
    parse: fn(&serde_json::Value) -> Observation,
}

impl JsonBodyObserver {
    pub fn new(parse: fn(&serde_json::Value) -> Observation, limits: ObserveLimits) -> Self {
        Self {
            body: Vec::new(),
            max: limits.max_json_body,
            too_big: false,
            parse,
        }
    }
}

impl ResponseObserver for JsonBodyObserver {
    fn feed(&mut self, chunk: &[u8]) {
        // Bounded so a huge (or hostile) body cannot grow the gateway's memory without limit;
        // a cut body cannot be parsed, which the observation says (`truncated`).
        if self.too_big {
            return;
        }
        if self.body.len() + chunk.len() <= self.max {
            self.body.extend_from_slice(chunk);
        } else {
            self.too_big = true;
            self.body = Vec::new();
        }
    }

    fn finish(self: Box<Self>) -> Observation {
        if self.too_big {
            return Observation {
                truncated: true,
                ..Observation::default()
            };
        }
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => (self.parse)(&v),
            Err(_) => Observation::default(),
        }
    }
}

/// Whether an OpenAI chat stream event is the usage-only chunk (`choices: []` and a `usage`
/// object) that `stream_options.include_usage` adds before `[DONE]`.
pub fn is_usage_only_chunk(data: &str) -> bool {
    if !has_object_member(data, "usage") {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| {
        v.get("usage").is_some_and(|u| u.is_object())
            && v.get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(|c| c.is_empty())
    })
}

/// Observer that extracts nothing (models list, count_tokens).
pub struct NullObserver;

impl ResponseObserver for NullObserver {
    fn feed(&mut self, _chunk: &[u8]) {}
    fn finish(self: Box<Self>) -> Observation {
        Observation::default()
    }
}

/// Parses a request body as a JSON object, the first check every adapter makes.
pub(crate) fn parse_json_object(
    body: &Bytes,
) -> Result<serde_json::Map<String, serde_json::Value>, BadRequest> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(BadRequest("request body must be a JSON object".into())),
        Err(e) => Err(BadRequest(format!("request body is not valid JSON: {e}"))),
    }
}

/// The `model` field, required by every generation endpoint.
pub(crate) fn required_model(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, BadRequest> {
    match obj.get("model") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(BadRequest("`model` must be a non-empty string".into())),
        None => Err(BadRequest("missing required field `model`".into())),
    }
}

/// Text of a message `content` that is either a string or a list of typed parts; `text_types`
/// names the part types that carry user text. Blocks the client injected around what the user
/// typed (see [`user_typed`]) are left out; `None` if nothing the user typed remains.
pub(crate) fn content_text(content: &serde_json::Value, text_types: &[&str]) -> Option<String> {
    match content {
        serde_json::Value::String(s) => user_typed(s),
        serde_json::Value::Array(parts) => {
            let texts: Vec<String> = parts
                .iter()
                .filter(|p| {
                    p.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| text_types.contains(&t))
                })
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .filter_map(user_typed)
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// Tags of blocks that coding agents add to user messages themselves: Claude Code's
/// `<system-reminder>`, Codex's `<environment_context>` and `<user_instructions>`, Gemini
/// CLI's `<session_context>` (its date, OS and directory tree before the first prompt).
/// Recording them as "the prompt" hides what the user asked behind boilerplate.
const CLIENT_BLOCKS: &[&str] = &[
    "system-reminder",
    "environment_context",
    "user_instructions",
    "session_context",
];

/// `text` without the client-injected blocks that open or close it, trimmed; `None` when only
/// such blocks (or whitespace) remain. Blocks in the middle of the user's own text are kept:
/// the user may have typed or pasted them.
pub(crate) fn user_typed(text: &str) -> Option<String> {
    let mut rest = text.trim();
    loop {
        let before = rest.len();
        for tag in CLIENT_BLOCKS {
            let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
            if rest.starts_with(&open) {
                if let Some(end) = rest.find(&close) {
                    rest = rest[end + close.len()..].trim_start();
                }
            }
            if rest.ends_with(&close) {
                if let Some(start) = rest.rfind(&open) {
                    rest = rest[..start].trim_end();
                }
            }
        }
        if rest.len() == before {
            break;
        }
    }
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// The text of a tool result's `content`/`output`: a string, or a list of parts whose text
/// parts are joined and whose other parts (images, files) are named in brackets.
pub(crate) fn tool_result_text(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text").and_then(|t| t.as_str()) {
                Some(t) => t.to_owned(),
                None => format!(
                    "[{}]",
                    p.get("type").and_then(|t| t.as_str()).unwrap_or("part")
                ),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The items after the last one `is_model_turn` says the model produced: what the client
/// added since, so a history sent again is not recorded again.
pub(crate) fn since_last_model_turn(
    items: &[serde_json::Value],
    is_model_turn: impl Fn(&serde_json::Value) -> bool,
) -> &[serde_json::Value] {
    match items.iter().rposition(is_model_turn) {
        Some(i) => &items[i + 1..],
        None => items,
    }
}

pub(crate) fn u64_at(v: &serde_json::Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

pub(crate) fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Whether JSON text has a member `"key"` whose value is an object (`"usage": {`), judged
/// without parsing; used to skip parsing stream events that cannot matter. May say yes
/// wrongly (then the event is parsed for nothing), never no wrongly for well-formed JSON:
/// inside a string value every `"` is escaped, so `"key"` followed by `:` only occurs as a key.
pub(crate) fn has_object_member(json: &str, key: &str) -> bool {
    let needle = format!("\"{key}\"");
    json.match_indices(&needle).any(|(i, _)| {
        let rest = json[i + needle.len()..].trim_start();
        rest.strip_prefix(':')
            .is_some_and(|r| r.trim_start().starts_with('{'))
    })
}

/// "type: message" from a provider error object such as `{"type": "...", "message": "..."}`.
pub(crate) fn describe_error(err: &serde_json::Value) -> String {
    let kind = err
        .get("type")
        .or_else(|| err.get("code"))
        .and_then(|t| t.as_str())
        .unwrap_or("error");
    match err.get("message").and_then(|m| m.as_str()) {
        Some(m) => format!("{kind}: {m}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_observers_know_the_terminal_event_once_its_blank_line_came() {
        let cases: [(&dyn ProviderAdapter, &str, &str, &str); 3] = [
            (
                &anthropic::Anthropic,
                "/v1/messages",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n",
            ),
            (
                &openai_chat::OpenAiChat,
                "/v1/chat/completions",
                "data: {\"model\":\"m\",\"choices\":[]}\n\n",
                "data: [DONE]\n",
            ),
            (
                &openai_responses::OpenAiResponses,
                "/v1/responses",
                "event: response.created\ndata: {\"response\":{\"model\":\"m\"}}\n\n",
                "event: response.completed\ndata: {\"response\":{\"model\":\"m\"}}\n",
            ),
        ];
        for (adapter, endpoint, before, terminal) in cases {
            let mut o = adapter.observer(endpoint, true, ObserveLimits::default());
            o.feed(before.as_bytes());
            assert!(!o.answer_complete(), "{endpoint}");
            o.feed(terminal.as_bytes());
            assert!(
                !o.answer_complete(),
                "{endpoint}: not before the blank line"
            );
            o.feed(b"\n");
            assert!(o.answer_complete(), "{endpoint}");
        }
        let json = anthropic::Anthropic.observer("/v1/messages", false, ObserveLimits::default());
        assert!(
            !json.answer_complete(),
            "a JSON answer ends with its last byte"
        );
    }

    fn collect(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| out.push(e));
        }
        out
    }

    #[test]
    fn sse_parser_yields_events_split_across_arbitrary_chunks() {
        let full = b"event: message_start\ndata: {\"a\":1}\n\n: ping comment\nevent: ping\ndata: {}\r\n\r\ndata: [DONE]\n\n";
        let whole = collect(&[full]);
        for split in 1..full.len() {
            let (a, b) = full.split_at(split);
            assert_eq!(collect(&[a, b]), whole, "split at {split}");
        }
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].event.as_deref(), Some("message_start"));
        assert_eq!(whole[0].data, "{\"a\":1}");
        assert_eq!(whole[1].event.as_deref(), Some("ping"));
        assert_eq!(whole[2].event, None);
        assert_eq!(whole[2].data, "[DONE]");
    }

    #[test]
    fn sse_parser_skips_an_oversized_line_and_its_event_and_keeps_memory_bounded() {
        let mut p = SseParser::with_max_line(64);
        let mut out = Vec::new();
        p.feed(b"data: small\n\n", |e| out.push(e));
        p.feed(b"event: big\ndata: ", |e| out.push(e));
        for _ in 0..1000 {
            p.feed(&[b'x'; 1000], |e| out.push(e));
            assert!(p.line.capacity() <= 64, "{}", p.line.capacity());
        }
        p.feed(b"\n\ndata: after\n\n", |e| out.push(e));
        let data: Vec<&str> = out.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["small", "after"]);
        assert_eq!(p.oversized_lines(), 1);
    }

    #[test]
    fn usage_only_chunks_are_recognised() {
        assert!(is_usage_only_chunk(
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":3}}"#
        ));
        assert!(!is_usage_only_chunk(
            r#"{"id":"c","choices":[{"index":0,"delta":{}}],"usage":null}"#
        ));
        assert!(!is_usage_only_chunk(
            r#"{"choices":[{"delta":{"content":"x"}}],"usage":{"a":1}}"#
        ));
    }

    #[test]
    fn sse_parser_joins_multi_line_data_with_newlines() {
        let ev = collect(&[b"data: one\ndata:two\n\n"]);
        assert_eq!(ev[0].data, "one\ntwo");
    }

    #[test]
    fn sse_parser_ignores_events_without_data() {
        assert!(collect(&[b"event: lonely\n\n"]).is_empty());
    }

    #[test]
    fn object_member_check_finds_keys_with_object_values_only() {
        assert!(has_object_member(
            r#"{"usage":{"prompt_tokens":1}}"#,
            "usage"
        ));
        assert!(has_object_member(r#"{"id":"x", "usage" : { }}"#, "usage"));
        assert!(!has_object_member(
            r#"{"usage":null,"choices":[]}"#,
            "usage"
        ));
        assert!(!has_object_member(
            r#"{"choices":[{"delta":{"content":"the \"usage\": {} field"}}]}"#,
            "usage"
        ));
        assert!(has_object_member(
            r#"{"error":{"message":"boom"}}"#,
            "error"
        ));
    }

    #[test]
    fn content_text_joins_text_parts_and_skips_others() {
        let v = serde_json::json!([{"type":"text","text":"a"},{"type":"image"},{"type":"text","text":"b"}]);
        assert_eq!(content_text(&v, &["text"]).as_deref(), Some("a\nb"));
        assert_eq!(
            content_text(&serde_json::json!("hi"), &["text"]).as_deref(),
            Some("hi")
        );
    }

    #[test]
    fn only_what_follows_the_models_last_turn_is_new() {
        let items = serde_json::json!([
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "tool", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "tool", "content": "e"},
        ]);
        let items = items.as_array().unwrap();
        let turn = |m: &serde_json::Value| m["role"] == "assistant";
        assert_eq!(since_last_model_turn(items, turn), &items[4..]);
        assert_eq!(since_last_model_turn(&items[..1], turn), &items[..1]);
        let parts = serde_json::json!([{"type": "text", "text": "x"}, {"type": "image"}]);
        assert_eq!(tool_result_text(&parts), "x\n[image]");
        assert_eq!(tool_result_text(&serde_json::json!({"k": 1})), "{\"k\":1}");
    }

    #[test]
    fn client_injected_blocks_around_the_user_text_are_not_the_prompt() {
        // What Claude Code 2.1 sends as its last user message: reminders first, then the text.
        let v = serde_json::json!([
            {"type":"text","text":"<system-reminder>\nThe date is 2026-11-26.\n</system-reminder>"},
            {"type":"text","text":"<system-reminder>a</system-reminder>\n<system-reminder>b</system-reminder>\n  fix the failing test  "},
        ]);
        assert_eq!(
            content_text(&v, &["text"]).as_deref(),
            Some("fix the failing test")
        );
        let codex = serde_json::json!(
            "<environment_context>\n<cwd>/w</cwd>\n</environment_context>\nrename foo\n<user_instructions>x</user_instructions>"
        );
        assert_eq!(
            content_text(&codex, &["text"]).as_deref(),
            Some("rename foo")
        );
        // What Gemini CLI 0.61 sends as the first user turn (as Gemini text parts).
        let gemini_cli = serde_json::json!(
            "<session_context>\nThis is the Gemini CLI.\n├───src/\n</session_context>\nsay hello"
        );
        assert_eq!(
            content_text(&gemini_cli, &["text"]).as_deref(),
            Some("say hello")
        );
        // Only reminders: nothing the user typed.
        let only =
            serde_json::json!([{"type":"text","text":"<system-reminder>x</system-reminder>"}]);
        assert_eq!(content_text(&only, &["text"]), None);
        // A block the user pasted in the middle of the text stays, as does an unclosed one.
        let pasted = serde_json::json!("why does <system-reminder>x</system-reminder> appear?");
        assert_eq!(
            content_text(&pasted, &["text"]).as_deref(),
            Some("why does <system-reminder>x</system-reminder> appear?")
        );
        let unclosed = serde_json::json!("<system-reminder> hello");
        assert_eq!(
            content_text(&unclosed, &["text"]).as_deref(),
            Some("<system-reminder> hello")
        );
    }
}
