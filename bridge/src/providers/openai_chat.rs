//! OpenAI Chat Completions (`/v1/chat/completions`) and the models list (`/v1/models`).
//!
//! Streams are `data:` chunks ending with `data: [DONE]`; tool calls arrive as
//! `choices[].delta.tool_calls[]` pieces keyed by `index`. Usage only arrives in a final
//! chunk when `stream_options.include_usage` is set, so unless a streaming client asked for it
//! (`true`), the adapter forces `include_usage: true` upstream (whatever the client sent:
//! absent, `false` or `null`) and the gateway withholds that extra chunk from the client. That
//! is the one case where the forwarded request body differs from the client's.
//!
//! Token accounting: counts are stored exactly as OpenAI reports them, so `input_tokens`
//! (`prompt_tokens`) *includes* `cache_read_tokens` (`prompt_tokens_details.cached_tokens`);
//! the pricing table knows this per model (`input_includes_cache`).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::{
    bearer, content_text, describe_error, parse_json_object, required_model, since_last_model_turn,
    str_at, tool_result_text, u64_at, BadRequest, GatewayError, JsonBodyObserver, NullObserver,
    Observation, ObserveLimits, ProviderAdapter, RequestInfo, ResponseObserver, SseEvent,
    SseParser,
};
use crate::record::{Provider, ToolCall, ToolResult, Usage, MAX_TOOL_RESULTS};

/// Also serves `/v1/models`, which belongs to no generation API in particular.
pub struct OpenAiChat;

/// Renders an OpenAI-format error body; shared with the Responses adapter.
pub(crate) fn openai_error_body(kind: GatewayError, message: &str) -> Bytes {
    let (ty, code) = match kind {
        GatewayError::Authentication => ("invalid_request_error", Value::from("invalid_api_key")),
        GatewayError::InvalidRequest => ("invalid_request_error", Value::Null),
        GatewayError::NotConfigured => ("server_error", Value::from("provider_not_configured")),
        GatewayError::UpstreamUnavailable => ("server_error", Value::from("upstream_unavailable")),
        GatewayError::NotFound => ("invalid_request_error", Value::from("unknown_url")),
        GatewayError::PermissionDenied => {
            ("invalid_request_error", Value::from("model_not_allowed"))
        }
        GatewayError::BudgetExceeded => ("insufficient_quota", Value::from("insufficient_quota")),
        GatewayError::RateLimited => ("requests", Value::from("rate_limit_exceeded")),
    };
    Bytes::from(
        json!({"error": {"message": message, "type": ty, "param": null, "code": code}}).to_string(),
    )
}

/// OpenAI usage → record usage, as reported (input includes the cached part).
pub(crate) fn openai_usage(u: &Value, input: &str, output: &str) -> Usage {
    let prompt = u.get(input).and_then(Value::as_u64).unwrap_or(0);
    let cached = u64_at(u, &[&format!("{input}_details"), "cached_tokens"]).unwrap_or(0);
    Usage {
        input_tokens: prompt,
        output_tokens: u.get(output).and_then(Value::as_u64).unwrap_or(0),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    }
}

impl ProviderAdapter for OpenAiChat {
    fn provider(&self) -> Provider {
        Provider::Openai
    }

    fn parse_request(&self, _endpoint: &str, body: &Bytes) -> Result<RequestInfo, BadRequest> {
        let mut obj = parse_json_object(body)?;
        let model = required_model(&obj)?;
        let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
            return Err(BadRequest("missing required field `messages`".into()));
        };
        let prompt = messages
            .iter()
            .rev()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .find_map(|m| m.get("content").and_then(|c| content_text(c, &["text"])));
        let tool_results = since_last_model_turn(messages, |m| {
            m.get("role").and_then(Value::as_str) == Some("assistant")
        })
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .filter_map(|m| {
            Some(ToolResult::new(
                str_at(m, &["tool_call_id"])?.to_owned(),
                &tool_result_text(m.get("content").unwrap_or(&Value::Null)),
                false,
            ))
        })
        .take(MAX_TOOL_RESULTS)
        .collect();
        let tools_offered = obj
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| {
                        str_at(t, &["function", "name"])
                            .or_else(|| str_at(t, &["name"]))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let streaming = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
        // Usage is requested whatever the client says: a client that sets `include_usage` to
        // false (or null) must not be able to make its request unmetered. The usage chunk is
        // then withheld from that client (it did not ask for it), never from the record.
        let mut rewritten_body = None;
        let mut withhold_usage_chunk = false;
        if streaming {
            let asked = obj
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                == Some(true);
            if !asked {
                let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
                if !opts.is_object() {
                    *opts = json!({});
                }
                if let Value::Object(o) = opts {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                rewritten_body = Some(Bytes::from(Value::Object(obj).to_string()));
                withhold_usage_chunk = true;
            }
        }
        Ok(RequestInfo {
            model: Some(model),
            streaming,
            prompt,
            tools_offered,
            tool_results,
            rewritten_body,
            withhold_usage_chunk,
        })
    }

    fn set_upstream_auth(&self, headers: &mut HeaderMap, key: &HeaderValue) {
        headers.insert(http::header::AUTHORIZATION, bearer(key));
    }

    fn error_body(&self, kind: GatewayError, message: &str) -> Bytes {
        openai_error_body(kind, message)
    }

    fn observer(
        &self,
        endpoint: &str,
        streaming: bool,
        limits: ObserveLimits,
    ) -> Box<dyn ResponseObserver> {
        match (endpoint, streaming) {
            ("/v1/chat/completions", true) => Box::new(ChatStreamObserver {
                sse: SseParser::with_max_line(limits.max_sse_line),
                ..Default::default()
            }),
            ("/v1/chat/completions", false) => {
                Box::new(JsonBodyObserver::new(observe_completion, limits))
            }
            _ => Box::new(NullObserver),
        }
    }
}

fn observe_completion(v: &Value) -> Observation {
    let mut obs = Observation::default();
    if let Some(err) = v.get("error") {
        obs.error = Some(describe_error(err));
        return obs;
    }
    obs.model = str_at(v, &["model"]).map(str::to_owned);
    if let Some(u) = v.get("usage") {
        obs.usage = openai_usage(u, "prompt_tokens", "completion_tokens");
    }
    for choice in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let calls = choice.get("message").and_then(|m| m.get("tool_calls"));
        for tc in calls.and_then(Value::as_array).into_iter().flatten() {
            obs.tool_calls.push(ToolCall {
                id: str_at(tc, &["id"]).map(str::to_owned),
                name: str_at(tc, &["function", "name"])
                    .unwrap_or_default()
                    .to_owned(),
                arguments: str_at(tc, &["function", "arguments"])
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    obs
}

/// Incremental observer of a Chat Completions chunk stream.
#[derive(Default)]
pub struct ChatStreamObserver {
    sse: SseParser,
    /// The terminal event was seen.
    complete: bool,
    obs: Observation,
    tools: BTreeMap<(u64, u64), ToolCall>,
}

impl ChatStreamObserver {
    fn on_event(obs: &mut Observation, tools: &mut BTreeMap<(u64, u64), ToolCall>, ev: SseEvent) {
        if ev.data.starts_with("[DONE]") {
            return;
        }
        // Most chunks are text deltas: parse only those that can carry something to record.
        let interesting = obs.model.is_none()
            || ev.data.contains("\"tool_calls\"")
            || super::has_object_member(&ev.data, "usage")
            || super::has_object_member(&ev.data, "error");
        if !interesting {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        if let Some(err) = v.get("error") {
            obs.error = Some(describe_error(err));
            return;
        }
        if obs.model.is_none() {
            obs.model = str_at(&v, &["model"]).map(str::to_owned);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            obs.usage = openai_usage(u, "prompt_tokens", "completion_tokens");
        }
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ci = u64_at(choice, &["index"]).unwrap_or(0);
            let deltas = choice.get("delta").and_then(|d| d.get("tool_calls"));
            for d in deltas.and_then(Value::as_array).into_iter().flatten() {
                let ti = u64_at(d, &["index"]).unwrap_or(0);
                let tc = tools.entry((ci, ti)).or_insert_with(|| ToolCall {
                    id: None,
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = str_at(d, &["id"]) {
                    tc.id = Some(id.to_owned());
                }
                if let Some(n) = str_at(d, &["function", "name"]) {
                    tc.name.push_str(n);
                }
                if let Some(a) = str_at(d, &["function", "arguments"]) {
                    tc.arguments.push_str(a);
                }
            }
        }
    }
}

impl ResponseObserver for ChatStreamObserver {
    fn feed(&mut self, chunk: &[u8]) {
        let (obs, tools, complete) = (&mut self.obs, &mut self.tools, &mut self.complete);
        self.sse.feed(chunk, |ev| {
            *complete |= ev.data.starts_with("[DONE]");
            Self::on_event(obs, tools, ev)
        });
    }

    fn answer_complete(&self) -> bool {
        self.complete
    }

    fn finish(mut self: Box<Self>) -> Observation {
        let mut obs = std::mem::take(&mut self.obs);
        obs.truncated = self.sse.oversized_lines() > 0;
        obs.tool_calls = std::mem::take(&mut self.tools).into_values().collect();
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_request_without_include_usage_gets_it_injected() {
        let body = Bytes::from(
            json!({"model": "gpt-4o", "stream": true,
                   "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"type": "function", "function": {"name": "get_weather"}}]})
            .to_string(),
        );
        let info = OpenAiChat
            .parse_request("/v1/chat/completions", &body)
            .unwrap();
        assert_eq!(info.tools_offered, vec!["get_weather"]);
        assert_eq!(info.prompt.as_deref(), Some("hi"));
        let rewritten: Value = serde_json::from_slice(&info.rewritten_body.unwrap()).unwrap();
        assert_eq!(
            rewritten["stream_options"]["include_usage"],
            Value::Bool(true)
        );
        assert_eq!(rewritten["messages"][0]["content"], "hi");
    }

    #[test]
    fn request_that_asked_for_usage_is_forwarded_untouched_and_opting_out_is_overridden() {
        let body = Bytes::from(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        );
        let info = OpenAiChat
            .parse_request("/v1/chat/completions", &body)
            .unwrap();
        assert!(info.rewritten_body.is_none());
        assert!(!info.withhold_usage_chunk);
        for opt in [
            r#"{"include_usage":false}"#,
            r#"{"include_usage":null}"#,
            "null",
            "7",
        ] {
            let body = Bytes::from(format!(
                r#"{{"model":"m","stream":true,"stream_options":{opt},"messages":[]}}"#
            ));
            let info = OpenAiChat
                .parse_request("/v1/chat/completions", &body)
                .unwrap();
            let sent: Value = serde_json::from_slice(&info.rewritten_body.unwrap()).unwrap();
            assert_eq!(sent["stream_options"]["include_usage"], true, "{opt}");
            assert!(info.withhold_usage_chunk, "{opt}");
        }
    }

    #[test]
    fn stream_observer_assembles_tool_calls_by_index_and_reads_final_usage() {
        let stream = concat!(
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":10}}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut o = OpenAiChat.observer("/v1/chat/completions", true, ObserveLimits::default());
        for chunk in stream.as_bytes().chunks(5) {
            o.feed(chunk);
        }
        let obs = o.finish();
        assert_eq!(obs.tool_calls.len(), 1);
        assert_eq!(obs.tool_calls[0].id.as_deref(), Some("call_1"));
        assert_eq!(obs.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(
            obs.usage,
            Usage {
                input_tokens: 30,
                output_tokens: 9,
                cache_read_tokens: 10,
                cache_write_tokens: 0
            }
        );
    }

    #[test]
    fn auth_error_body_matches_openai_format() {
        let v: Value =
            serde_json::from_slice(&OpenAiChat.error_body(GatewayError::Authentication, "bad"))
                .unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "bad");
    }
}
