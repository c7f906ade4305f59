//! Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`).
//!
//! Streams are SSE: `message_start` carries input and cache usage, `content_block_start` opens
//! `tool_use` blocks whose arguments arrive as `input_json_delta.partial_json` pieces,
//! `message_delta` carries the (cumulative) output usage, and `error` events report failures
//! mid-stream.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::{
    content_text, describe_error, parse_json_object, required_model, since_last_model_turn, str_at,
    tool_result_text, u64_at, BadRequest, GatewayError, JsonBodyObserver, NullObserver,
    Observation, ObserveLimits, ProviderAdapter, RequestInfo, ResponseObserver, SseEvent,
    SseParser,
};
use crate::record::{Provider, ToolCall, ToolResult, Usage, MAX_TOOL_RESULTS};

pub struct Anthropic;

impl ProviderAdapter for Anthropic {
    fn provider(&self) -> Provider {
        Provider::Anthropic
    }

    fn parse_request(&self, endpoint: &str, body: &Bytes) -> Result<RequestInfo, BadRequest> {
        let obj = parse_json_object(body)?;
        let model = required_model(&obj)?;
        let prompt = obj
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|msgs| {
                msgs.iter()
                    .rev()
                    .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                    .find_map(|m| m.get("content").and_then(|c| content_text(c, &["text"])))
            });
        if endpoint == "/v1/messages" && obj.get("messages").and_then(Value::as_array).is_none() {
            return Err(BadRequest("missing required field `messages`".into()));
        }
        let tools_offered = obj
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let streaming = endpoint == "/v1/messages"
            && obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let messages = obj.get("messages").and_then(Value::as_array);
        let tool_results = messages
            .map(|m| {
                since_last_model_turn(m, |m| {
                    m.get("role").and_then(Value::as_str) == Some("assistant")
                })
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("tool_result"))
            .filter_map(|p| {
                Some(ToolResult::new(
                    str_at(p, &["tool_use_id"])?.to_owned(),
                    &tool_result_text(p.get("content").unwrap_or(&Value::Null)),
                    p.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                ))
            })
            .take(MAX_TOOL_RESULTS)
            .collect();
        Ok(RequestInfo {
            model: Some(model),
            streaming,
            prompt,
            tools_offered,
            tool_results,
            rewritten_body: None,
            withhold_usage_chunk: false,
        })
    }

    fn set_upstream_auth(&self, headers: &mut HeaderMap, key: &HeaderValue) {
        let mut key = key.clone();
        key.set_sensitive(true);
        headers.insert("x-api-key", key);
    }

    fn error_body(&self, kind: GatewayError, message: &str) -> Bytes {
        let ty = match kind {
            GatewayError::Authentication => "authentication_error",
            GatewayError::InvalidRequest => "invalid_request_error",
            GatewayError::NotConfigured | GatewayError::UpstreamUnavailable => "api_error",
            GatewayError::NotFound => "not_found_error",
            GatewayError::PermissionDenied => "permission_error",
            GatewayError::BudgetExceeded => "billing_error",
            GatewayError::RateLimited => "rate_limit_error",
        };
        Bytes::from(json!({"type": "error", "error": {"type": ty, "message": message}}).to_string())
    }

    fn observer(
        &self,
        endpoint: &str,
        streaming: bool,
        limits: ObserveLimits,
    ) -> Box<dyn ResponseObserver> {
        match (endpoint, streaming) {
            ("/v1/messages", true) => Box::new(MessagesStreamObserver {
                sse: SseParser::with_max_line(limits.max_sse_line),
                ..Default::default()
            }),
            ("/v1/messages", false) => Box::new(JsonBodyObserver::new(observe_message, limits)),
            _ => Box::new(NullObserver),
        }
    }
}

fn usage_from(u: &Value, into: &mut Usage) {
    if let Some(n) = u.get("input_tokens").and_then(Value::as_u64) {
        into.input_tokens = n;
    }
    if let Some(n) = u.get("output_tokens").and_then(Value::as_u64) {
        into.output_tokens = n;
    }
    if let Some(n) = u.get("cache_read_input_tokens").and_then(Value::as_u64) {
        into.cache_read_tokens = n;
    }
    if let Some(n) = u.get("cache_creation_input_tokens").and_then(Value::as_u64) {
        into.cache_write_tokens = n;
    }
}

/// Observes a non-streaming `message` (or `error`) JSON body.
fn observe_message(v: &Value) -> Observation {
    let mut obs = Observation::default();
    if let Some(err) = v.get("error") {
        obs.error = Some(describe_error(err));
        return obs;
    }
    obs.model = str_at(v, &["model"]).map(str::to_owned);
    if let Some(u) = v.get("usage") {
        usage_from(u, &mut obs.usage);
    }
    if let Some(content) = v.get("content").and_then(Value::as_array) {
        for block in content {
            if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                obs.tool_calls.push(ToolCall {
                    id: str_at(block, &["id"]).map(str::to_owned),
                    name: str_at(block, &["name"]).unwrap_or_default().to_owned(),
                    arguments: block
                        .get("input")
                        .map(Value::to_string)
                        .unwrap_or_else(|| "{}".into()),
                });
            }
        }
    }
    obs
}

/// Incremental observer of a Messages SSE stream.
#[derive(Default)]
pub struct MessagesStreamObserver {
    sse: SseParser,
    /// The terminal event was seen.
    complete: bool,
    obs: Observation,
    /// Open tool_use blocks by content-block index.
    tools: BTreeMap<u64, ToolCall>,
}

impl MessagesStreamObserver {
    fn on_event(obs: &mut Observation, tools: &mut BTreeMap<u64, ToolCall>, ev: SseEvent) {
        // Most of a stream is text: skip parsing events that carry nothing to record.
        match ev.event.as_deref() {
            Some("ping" | "content_block_stop" | "message_stop") => return,
            Some("content_block_delta") if !ev.data.contains("input_json_delta") => return,
            _ => {}
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        let ty = ev
            .event
            .as_deref()
            .or_else(|| v.get("type").and_then(Value::as_str))
            .unwrap_or("");
        match ty {
            "message_start" => {
                if let Some(m) = v.get("message") {
                    obs.model = str_at(m, &["model"]).map(str::to_owned);
                    if let Some(u) = m.get("usage") {
                        usage_from(u, &mut obs.usage);
                    }
                }
            }
            "content_block_start" => {
                let block = v.get("content_block");
                if block.and_then(|b| str_at(b, &["type"])) == Some("tool_use") {
                    let block = block.unwrap_or(&Value::Null);
                    let index = u64_at(&v, &["index"]).unwrap_or(0);
                    // Arguments stream in as JSON text; the start block's `input` is `{}`.
                    tools.insert(
                        index,
                        ToolCall {
                            id: str_at(block, &["id"]).map(str::to_owned),
                            name: str_at(block, &["name"]).unwrap_or_default().to_owned(),
                            arguments: String::new(),
                        },
                    );
                }
            }
            "content_block_delta" if str_at(&v, &["delta", "type"]) == Some("input_json_delta") => {
                let index = u64_at(&v, &["index"]).unwrap_or(0);
                if let (Some(tc), Some(p)) = (
                    tools.get_mut(&index),
                    str_at(&v, &["delta", "partial_json"]),
                ) {
                    tc.arguments.push_str(p);
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    usage_from(u, &mut obs.usage);
                }
            }
            "error" => {
                obs.error = Some(v.get("error").map(describe_error).unwrap_or_default());
            }
            _ => {}
        }
    }
}

impl ResponseObserver for MessagesStreamObserver {
    fn feed(&mut self, chunk: &[u8]) {
        let (obs, tools, complete) = (&mut self.obs, &mut self.tools, &mut self.complete);
        self.sse.feed(chunk, |ev| {
            *complete |= matches!(ev.event.as_deref(), Some("message_stop" | "error"));
            Self::on_event(obs, tools, ev)
        });
    }

    fn answer_complete(&self) -> bool {
        self.complete
    }

    fn finish(mut self: Box<Self>) -> Observation {
        let mut obs = std::mem::take(&mut self.obs);
        obs.truncated = self.sse.oversized_lines() > 0;
        obs.tool_calls = std::mem::take(&mut self.tools)
            .into_values()
            .map(|mut tc| {
                if tc.arguments.is_empty() {
                    tc.arguments = "{}".into();
                }
                tc
            })
            .collect();
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_stream_flag_last_user_text_and_tool_names() {
        let body = Bytes::from(
            json!({
                "model": "claude-sonnet-4-5", "stream": true, "max_tokens": 10,
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": [{"type": "text", "text": "second"}]}
                ],
                "tools": [{"name": "get_weather", "input_schema": {}}]
            })
            .to_string(),
        );
        let info = Anthropic.parse_request("/v1/messages", &body).unwrap();
        assert_eq!(info.model.as_deref(), Some("claude-sonnet-4-5"));
        assert!(info.streaming);
        assert_eq!(info.prompt.as_deref(), Some("second"));
        assert_eq!(info.tools_offered, vec!["get_weather"]);
    }

    #[test]
    fn rejects_bodies_that_are_not_json_or_lack_a_model() {
        assert!(Anthropic
            .parse_request("/v1/messages", &Bytes::from("nope"))
            .is_err());
        let no_model = Bytes::from(r#"{"messages":[]}"#);
        let err = Anthropic
            .parse_request("/v1/messages", &no_model)
            .unwrap_err();
        assert!(err.0.contains("model"));
    }

    #[test]
    fn stream_observer_accumulates_usage_and_tool_arguments() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3,\"cache_creation_input_tokens\":4,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":25}}\n\n",
        );
        let mut o: Box<dyn ResponseObserver> =
            Anthropic.observer("/v1/messages", true, ObserveLimits::default());
        for chunk in stream.as_bytes().chunks(7) {
            o.feed(chunk);
        }
        let obs = o.finish();
        assert_eq!(
            obs.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 25,
                cache_read_tokens: 3,
                cache_write_tokens: 4
            }
        );
        assert_eq!(obs.tool_calls.len(), 1);
        assert_eq!(obs.tool_calls[0].name, "get_weather");
        assert_eq!(obs.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(obs.model.as_deref(), Some("claude-x"));
    }

    #[test]
    fn stream_observer_reports_error_events() {
        let mut o = Anthropic.observer("/v1/messages", true, ObserveLimits::default());
        o.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert_eq!(
            o.finish().error.as_deref(),
            Some("overloaded_error: Overloaded")
        );
    }

    #[test]
    fn json_observer_reads_usage_and_tool_use_blocks() {
        let body = json!({
            "model": "claude-x", "content": [
                {"type": "text", "text": "hi"},
                {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": 1}}
            ],
            "usage": {"input_tokens": 5, "output_tokens": 7}
        });
        let mut o = Anthropic.observer("/v1/messages", false, ObserveLimits::default());
        o.feed(body.to_string().as_bytes());
        let obs = o.finish();
        assert_eq!(obs.usage.input_tokens, 5);
        assert_eq!(obs.usage.output_tokens, 7);
        assert_eq!(obs.tool_calls[0].arguments, r#"{"a":1}"#);
    }
}
