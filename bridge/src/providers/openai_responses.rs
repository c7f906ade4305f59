//! OpenAI Responses API (`/v1/responses`).
//!
//! Streams are typed SSE events (`response.created`, `response.output_text.delta`,
//! `response.output_item.done`, ..., `response.completed`); the final `response.completed` (or
//! `response.incomplete` / `response.failed`) carries the whole response object, including
//! `usage` with `input_tokens_details.cached_tokens` and the `function_call` output items, so
//! the observer only needs that last event (plus `error` events).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::openai_chat::{openai_error_body, openai_usage};
use super::{
    bearer, content_text, describe_error, parse_json_object, required_model, since_last_model_turn,
    str_at, tool_result_text, BadRequest, GatewayError, JsonBodyObserver, Observation,
    ObserveLimits, ProviderAdapter, RequestInfo, ResponseObserver, SseEvent, SseParser,
};
use crate::record::{Provider, ToolCall, ToolResult, MAX_TOOL_RESULTS};

pub struct OpenAiResponses;

impl ProviderAdapter for OpenAiResponses {
    fn provider(&self) -> Provider {
        Provider::Openai
    }

    fn parse_request(&self, _endpoint: &str, body: &Bytes) -> Result<RequestInfo, BadRequest> {
        let obj = parse_json_object(body)?;
        let model = required_model(&obj)?;
        let prompt = match obj.get("input") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(items)) => items
                .iter()
                .rev()
                .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .find_map(|m| {
                    m.get("content")
                        .and_then(|c| content_text(c, &["input_text", "text"]))
                }),
            Some(_) => return Err(BadRequest("`input` must be a string or an array".into())),
            None => None,
        };
        let tools_offered = obj
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| {
                        str_at(t, &["name"])
                            .or_else(|| str_at(t, &["type"]))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Items the model produced: its messages, reasoning and tool calls.
        let model_turn = |i: &Value| {
            i.get("role").and_then(Value::as_str) == Some("assistant")
                || matches!(
                    i.get("type").and_then(Value::as_str),
                    Some("function_call" | "custom_tool_call" | "reasoning")
                )
        };
        let tool_results = match obj.get("input") {
            Some(Value::Array(items)) => since_last_model_turn(items, model_turn)
                .iter()
                .filter(|i| {
                    matches!(
                        i.get("type").and_then(Value::as_str),
                        Some("function_call_output" | "custom_tool_call_output")
                    )
                })
                .filter_map(|i| {
                    Some(ToolResult::new(
                        str_at(i, &["call_id"])?.to_owned(),
                        &tool_result_text(i.get("output").unwrap_or(&Value::Null)),
                        false,
                    ))
                })
                .take(MAX_TOOL_RESULTS)
                .collect(),
            _ => Vec::new(),
        };
        Ok(RequestInfo {
            model: Some(model),
            streaming: obj.get("stream").and_then(Value::as_bool).unwrap_or(false),
            prompt,
            tools_offered,
            tool_results,
            rewritten_body: None,
            withhold_usage_chunk: false,
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
        _endpoint: &str,
        streaming: bool,
        limits: ObserveLimits,
    ) -> Box<dyn ResponseObserver> {
        if streaming {
            Box::new(ResponsesStreamObserver {
                sse: SseParser::with_max_line(limits.max_sse_line),
                ..Default::default()
            })
        } else {
            Box::new(JsonBodyObserver::new(observe_response, limits))
        }
    }
}

/// Observes a whole `response` object (the JSON body, or the payload of `response.completed`).
fn observe_response(v: &Value) -> Observation {
    let mut obs = Observation::default();
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        obs.error = Some(describe_error(err));
    }
    obs.model = str_at(v, &["model"]).map(str::to_owned);
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        obs.usage = openai_usage(u, "input_tokens", "output_tokens");
    }
    for item in v
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if str_at(item, &["type"]) == Some("function_call") {
            obs.tool_calls.push(ToolCall {
                id: str_at(item, &["call_id"])
                    .or_else(|| str_at(item, &["id"]))
                    .map(str::to_owned),
                name: str_at(item, &["name"]).unwrap_or_default().to_owned(),
                arguments: str_at(item, &["arguments"]).unwrap_or_default().to_owned(),
            });
        }
    }
    obs
}

/// Incremental observer of a Responses event stream.
#[derive(Default)]
pub struct ResponsesStreamObserver {
    sse: SseParser,
    /// The terminal event was seen.
    complete: bool,
    obs: Observation,
    /// Function calls seen in `response.output_item.done`, used if the stream never completes.
    partial_calls: Vec<ToolCall>,
}

impl ResponsesStreamObserver {
    fn on_event(obs: &mut Observation, partial: &mut Vec<ToolCall>, ev: SseEvent) {
        // Deltas (most of a stream) carry nothing the record needs; skip parsing them.
        if ev
            .event
            .as_deref()
            .is_some_and(|e| e.ends_with(".delta") || e.ends_with(".added"))
        {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        let ty = ev
            .event
            .as_deref()
            .or_else(|| str_at(&v, &["type"]))
            .unwrap_or("");
        match ty {
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(r) = v.get("response") {
                    let error = obs.error.take();
                    *obs = observe_response(r);
                    obs.error = obs.error.take().or(error);
                }
            }
            "response.created" => {
                obs.model = v
                    .get("response")
                    .and_then(|r| str_at(r, &["model"]))
                    .map(str::to_owned);
            }
            "response.output_item.done" => {
                if let Some(item) = v
                    .get("item")
                    .filter(|i| str_at(i, &["type"]) == Some("function_call"))
                {
                    partial.push(ToolCall {
                        id: str_at(item, &["call_id"]).map(str::to_owned),
                        name: str_at(item, &["name"]).unwrap_or_default().to_owned(),
                        arguments: str_at(item, &["arguments"]).unwrap_or_default().to_owned(),
                    });
                }
            }
            "error" => {
                let err = v.get("error").unwrap_or(&v);
                obs.error = Some(describe_error(err));
            }
            _ => {}
        }
    }
}

impl ResponseObserver for ResponsesStreamObserver {
    fn feed(&mut self, chunk: &[u8]) {
        let (obs, partial, complete) = (&mut self.obs, &mut self.partial_calls, &mut self.complete);
        self.sse.feed(chunk, |ev| {
            *complete |= matches!(
                ev.event.as_deref(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            );
            Self::on_event(obs, partial, ev)
        });
    }

    fn answer_complete(&self) -> bool {
        self.complete
    }

    fn finish(mut self: Box<Self>) -> Observation {
        let mut obs = std::mem::take(&mut self.obs);
        obs.truncated = self.sse.oversized_lines() > 0;
        if obs.tool_calls.is_empty() {
            obs.tool_calls = std::mem::take(&mut self.partial_calls);
        }
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Usage;
    use serde_json::json;

    #[test]
    fn parses_string_input_and_item_list_input() {
        let s = Bytes::from(
            r#"{"model":"gpt-4.1","input":"hello","tools":[{"type":"function","name":"f"},{"type":"web_search"}]}"#,
        );
        let info = OpenAiResponses.parse_request("/v1/responses", &s).unwrap();
        assert_eq!(info.prompt.as_deref(), Some("hello"));
        assert_eq!(info.tools_offered, vec!["f", "web_search"]);
        let items = Bytes::from(
            json!({"model": "m", "stream": true, "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "q1"}]},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"}
            ]})
            .to_string(),
        );
        let info = OpenAiResponses
            .parse_request("/v1/responses", &items)
            .unwrap();
        assert_eq!(info.prompt.as_deref(), Some("q2"));
        assert!(info.streaming);
    }

    #[test]
    fn stream_observer_reads_usage_and_function_calls_from_completed_event() {
        let completed = json!({"type": "response.completed", "response": {
            "model": "gpt-4.1",
            "output": [{"type": "function_call", "call_id": "call_7", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}],
            "usage": {"input_tokens": 40, "input_tokens_details": {"cached_tokens": 8}, "output_tokens": 6}
        }});
        let stream = format!(
            "event: response.created\ndata: {}\n\nevent: response.completed\ndata: {}\n\n",
            json!({"type": "response.created", "response": {"model": "gpt-4.1"}}),
            completed
        );
        let mut o = OpenAiResponses.observer("/v1/responses", true, ObserveLimits::default());
        for c in stream.as_bytes().chunks(11) {
            o.feed(c);
        }
        let obs = o.finish();
        assert_eq!(
            obs.usage,
            Usage {
                input_tokens: 40,
                output_tokens: 6,
                cache_read_tokens: 8,
                cache_write_tokens: 0
            }
        );
        assert_eq!(obs.tool_calls[0].id.as_deref(), Some("call_7"));
        assert_eq!(obs.tool_calls[0].name, "get_weather");
    }
}
