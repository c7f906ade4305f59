//! Google Gemini API (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:countTokens`, and the models list `/v1beta/models`), under each API version Google serves
//! (`v1beta`, which most clients use; `v1`, the google-genai SDK's default; `v1alpha`).
//!
//! Unlike the other APIs the model is named in the *path*, not the body, so the gateway routes
//! on a path pattern and builds the upstream path from the model it decided on (after policy
//! and aliases, see [`ProviderAdapter::upstream_path`]). Streams are SSE only when the client
//! asks with `?alt=sse` (what the official SDKs do); without it the answer is one JSON array of
//! response chunks, which the JSON observer also reads. Every chunk is a whole
//! `GenerateContentResponse`: text and `functionCall` parts arrive whole in some chunk, and
//! `usageMetadata` is cumulative (the last one seen is the total). There is no terminal event:
//! the stream ends with the body.
//!
//! Token accounting: `promptTokenCount` *includes* `cachedContentTokenCount`, as OpenAI's
//! counts do (the pricing table knows this per provider); thinking tokens
//! (`thoughtsTokenCount`) are billed as output and recorded as such.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::{
    parse_json_object, since_last_model_turn, str_at, u64_at, user_typed, BadRequest, GatewayError,
    JsonBodyObserver, NullObserver, Observation, ObserveLimits, ProviderAdapter, RequestInfo,
    ResponseObserver, SseEvent, SseParser,
};
use crate::record::{Provider, ToolCall, ToolResult, Usage, MAX_TOOL_RESULTS};

pub struct Gemini;

/// The route endpoints (as records name them) per API version: generateContent,
/// streamGenerateContent, countTokens, models list, one model. `{model}` is filled from the
/// path.
const ENDPOINTS: [(&str, [&str; 5]); 3] = [
    (
        "v1beta",
        [
            "/v1beta/models/{model}:generateContent",
            "/v1beta/models/{model}:streamGenerateContent",
            "/v1beta/models/{model}:countTokens",
            "/v1beta/models",
            "/v1beta/models/{model}",
        ],
    ),
    (
        "v1",
        [
            "/v1/models/{model}:generateContent",
            "/v1/models/{model}:streamGenerateContent",
            "/v1/models/{model}:countTokens",
            "/v1/models",
            "/v1/models/{model}",
        ],
    ),
    (
        "v1alpha",
        [
            "/v1alpha/models/{model}:generateContent",
            "/v1alpha/models/{model}:streamGenerateContent",
            "/v1alpha/models/{model}:countTokens",
            "/v1alpha/models",
            "/v1alpha/models/{model}",
        ],
    ),
];

/// What a Gemini endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Generate,
    Stream,
    CountTokens,
    Models,
    /// `GET .../models/{model}`: one model's description.
    Model,
}

fn method_of(endpoint: &str) -> Method {
    match endpoint.rsplit_once(':').map(|(_, m)| m) {
        Some("generateContent") => Method::Generate,
        Some("streamGenerateContent") => Method::Stream,
        Some("countTokens") => Method::CountTokens,
        _ if endpoint.ends_with("/{model}") => Method::Model,
        _ => Method::Models,
    }
}

/// The endpoint pattern and model for a path below the provider prefix
/// (`/v1beta/models/gemini-2.5-flash:generateContent`), or `None` if it is not one of them.
/// The model is limited to the characters of Gemini's model ids, because it is put back into
/// the upstream URL.
pub fn endpoint_of(path: &str) -> Option<(&'static str, &str)> {
    let (version, rest) = path.strip_prefix('/')?.split_once("/models/")?;
    let (_, endpoints) = ENDPOINTS.iter().find(|(v, _)| *v == version)?;
    let (model, method) = rest.split_once(':')?;
    let endpoint = match method {
        "generateContent" => endpoints[0],
        "streamGenerateContent" => endpoints[1],
        "countTokens" => endpoints[2],
        _ => return None,
    };
    is_model_id(model).then_some((endpoint, model))
}

/// The models-list endpoint for a path below the provider prefix (`/v1beta/models`).
pub fn models_list(path: &str) -> Option<&'static str> {
    ENDPOINTS.iter().map(|(_, e)| e[3]).find(|e| *e == path)
}

/// The one-model endpoint and model for a path below the provider prefix
/// (`/v1beta/models/gemini-2.5-flash`, what `client.models.get` asks for).
pub fn model_info(path: &str) -> Option<(&'static str, &str)> {
    let (version, model) = path.strip_prefix('/')?.split_once("/models/")?;
    let (_, endpoints) = ENDPOINTS.iter().find(|(v, _)| *v == version)?;
    is_model_id(model).then_some((endpoints[4], model))
}

/// Whether `m` is a plain model id, safe to put in a URL path segment.
fn is_model_id(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 200
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && m != "."
        && m != ".."
}

/// Gemini's canonical status name for an HTTP status (google.rpc.Code mapping).
fn status_name(status: u16, kind: GatewayError) -> &'static str {
    match (status, kind) {
        (401, _) => "UNAUTHENTICATED",
        (403, _) => "PERMISSION_DENIED",
        (404, _) => "NOT_FOUND",
        (408, _) | (504, _) => "DEADLINE_EXCEEDED",
        (429, _) => "RESOURCE_EXHAUSTED",
        (503, _) | (502, _) => "UNAVAILABLE",
        (_, GatewayError::Authentication) => "UNAUTHENTICATED",
        (_, GatewayError::PermissionDenied) => "PERMISSION_DENIED",
        (_, GatewayError::NotFound) => "NOT_FOUND",
        (_, GatewayError::BudgetExceeded | GatewayError::RateLimited) => "RESOURCE_EXHAUSTED",
        (_, GatewayError::NotConfigured | GatewayError::UpstreamUnavailable) => "UNAVAILABLE",
        (s, _) if s >= 500 => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    }
}

/// The HTTP status the gateway answers each error kind with, for [`Gemini::error_body`].
fn default_status(kind: GatewayError) -> u16 {
    match kind {
        GatewayError::Authentication => 401,
        GatewayError::InvalidRequest => 400,
        GatewayError::NotConfigured => 503,
        GatewayError::UpstreamUnavailable => 502,
        GatewayError::NotFound => 404,
        GatewayError::PermissionDenied => 403,
        GatewayError::BudgetExceeded | GatewayError::RateLimited => 429,
    }
}

/// The text the user typed in one `Content`: its text parts without client-injected blocks.
fn content_text(content: &Value) -> Option<String> {
    let texts: Vec<String> = content
        .get("parts")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .filter_map(user_typed)
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

/// A `Content`'s role; Gemini reads a missing role as the user's.
fn role(content: &Value) -> &str {
    content
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or("user")
}

/// A field by its JSON (camelCase) name, or the proto (snake_case) name the API also accepts.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

impl ProviderAdapter for Gemini {
    fn provider(&self) -> Provider {
        Provider::Gemini
    }

    fn parse_request(&self, endpoint: &str, body: &Bytes) -> Result<RequestInfo, BadRequest> {
        let Some((pattern, model)) = endpoint_of(endpoint).or_else(|| model_info(endpoint)) else {
            return Err(BadRequest(format!("no Gemini method at {endpoint}")));
        };
        let method = method_of(pattern);
        if method == Method::Model {
            // A GET: no body, only the model, so that policy and aliases apply to it too.
            return Ok(RequestInfo {
                model: Some(model.to_owned()),
                ..RequestInfo::default()
            });
        }
        let whole = Value::Object(parse_json_object(body)?);
        // countTokens takes either `contents` or a whole `generateContentRequest`.
        let request = match whole.get("generateContentRequest") {
            Some(r) if method == Method::CountTokens && r.is_object() => r,
            _ => &whole,
        };
        let contents = match request.get("contents") {
            Some(Value::Array(c)) => c.as_slice(),
            Some(_) => return Err(BadRequest("`contents` must be a list".into())),
            None if method == Method::CountTokens => &[],
            None => return Err(BadRequest("missing required field `contents`".into())),
        };
        let prompt = contents
            .iter()
            .rev()
            .filter(|c| role(c) == "user")
            .find_map(content_text);
        let tool_results = since_last_model_turn(contents, |c| role(c) == "model")
            .iter()
            .filter_map(|c| c.get("parts").and_then(Value::as_array))
            .flatten()
            .filter_map(|p| field(p, "functionResponse", "function_response"))
            .filter_map(|fr| {
                let id = str_at(fr, &["id"])
                    .filter(|i| !i.is_empty())
                    .or_else(|| str_at(fr, &["name"]))?;
                let text = match fr.get("response") {
                    Some(r) => r.to_string(),
                    None => String::new(),
                };
                Some(ToolResult::new(id.to_owned(), &text, false))
            })
            .take(MAX_TOOL_RESULTS)
            .collect();
        let tools_offered = request
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| field(t, "functionDeclarations", "function_declarations"))
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|d| str_at(d, &["name"]).map(str::to_owned))
            .collect();
        Ok(RequestInfo {
            model: Some(model.to_owned()),
            streaming: method == Method::Stream,
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
        headers.insert("x-goog-api-key", key);
    }

    fn error_body(&self, kind: GatewayError, message: &str) -> Bytes {
        self.error_body_for(default_status(kind), kind, message)
    }

    fn error_body_for(&self, status: u16, kind: GatewayError, message: &str) -> Bytes {
        Bytes::from(
            json!({"error": {"code": status, "message": message,
                             "status": status_name(status, kind)}})
            .to_string(),
        )
    }

    fn upstream_path<'a>(&self, endpoint: &'a str, model: Option<&str>) -> Option<Cow<'a, str>> {
        match model {
            Some(m) if endpoint.contains("{model}") && is_model_id(m) => {
                Some(Cow::Owned(endpoint.replace("{model}", m)))
            }
            _ if endpoint.contains("{model}") => None,
            _ => Some(Cow::Borrowed(endpoint)),
        }
    }

    fn with_model(&self, body: &Bytes, model: &str) -> Option<Bytes> {
        // The model is in the path ([`Self::upstream_path`]); only countTokens' nested request
        // may name it again, and must then name the same one.
        if !is_model_id(model) {
            return None;
        }
        let mut v: Value = serde_json::from_slice(body).ok()?;
        match v
            .get_mut("generateContentRequest")
            .and_then(|r| r.get_mut("model"))
        {
            Some(m) => *m = Value::String(format!("models/{model}")),
            None => return Some(body.clone()),
        }
        serde_json::to_vec(&v).ok().map(Bytes::from)
    }

    fn observer(
        &self,
        endpoint: &str,
        streaming: bool,
        limits: ObserveLimits,
    ) -> Box<dyn ResponseObserver> {
        match (method_of(endpoint), streaming) {
            (Method::Generate | Method::Stream, true) => Box::new(StreamObserver {
                sse: SseParser::with_max_line(limits.max_sse_line),
                obs: Observation::default(),
            }),
            (Method::Generate | Method::Stream, false) => {
                Box::new(JsonBodyObserver::new(observe_json, limits))
            }
            _ => Box::new(NullObserver),
        }
    }
}

/// Gemini `usageMetadata` → record usage, as reported (input includes the cached part).
fn gemini_usage(u: &Value) -> Usage {
    let n = |k: &str| u64_at(u, &[k]).unwrap_or(0);
    Usage {
        // Tokens of tool-use prompts (e.g. search results) are billed as input.
        input_tokens: n("promptTokenCount") + n("toolUsePromptTokenCount"),
        output_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
        cache_read_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: 0,
    }
}

/// "STATUS: message" from a Gemini error object.
fn describe(err: &Value) -> String {
    let kind = str_at(err, &["status"])
        .map(str::to_owned)
        .or_else(|| u64_at(err, &["code"]).map(|c| c.to_string()))
        .unwrap_or_else(|| "error".into());
    match str_at(err, &["message"]) {
        Some(m) => format!("{kind}: {m}"),
        None => kind,
    }
}

/// Folds one `GenerateContentResponse` (a whole answer or one stream chunk) into `obs`.
fn observe_chunk(obs: &mut Observation, v: &Value) {
    if let Some(err) = v.get("error") {
        obs.error = Some(describe(err));
        return;
    }
    if obs.model.is_none() {
        obs.model = str_at(v, &["modelVersion"]).map(str::to_owned);
    }
    if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
        // Counts are running totals; a later chunk that leaves a count out (a last chunk with
        // only the prompt count, say) must not erase it.
        let (old, new) = (&mut obs.usage, gemini_usage(u));
        old.input_tokens = old.input_tokens.max(new.input_tokens);
        old.output_tokens = old.output_tokens.max(new.output_tokens);
        old.cache_read_tokens = old.cache_read_tokens.max(new.cache_read_tokens);
    }
    let parts = v
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("content")?.get("parts")?.as_array())
        .flatten();
    for p in parts {
        if let Some(fc) = p.get("functionCall") {
            obs.tool_calls.push(ToolCall {
                id: str_at(fc, &["id"]).map(str::to_owned),
                name: str_at(fc, &["name"]).unwrap_or_default().to_owned(),
                arguments: fc.get("args").map(Value::to_string).unwrap_or_default(),
            });
        }
    }
}

/// A JSON answer: one response object, an error, or (a stream without `alt=sse`) an array of
/// response chunks.
fn observe_json(v: &Value) -> Observation {
    let mut obs = Observation::default();
    match v {
        Value::Array(chunks) => chunks.iter().for_each(|c| observe_chunk(&mut obs, c)),
        other => observe_chunk(&mut obs, other),
    }
    obs
}

/// Incremental observer of an `alt=sse` stream.
pub struct StreamObserver {
    sse: SseParser,
    obs: Observation,
}

impl StreamObserver {
    fn on_event(obs: &mut Observation, ev: SseEvent) {
        // Most chunks are text only: parse those that can carry something to record.
        let interesting = obs.model.is_none()
            || ev.data.contains("\"functionCall\"")
            || super::has_object_member(&ev.data, "usageMetadata")
            || super::has_object_member(&ev.data, "error");
        if !interesting {
            return;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
            observe_chunk(obs, &v);
        }
    }
}

impl ResponseObserver for StreamObserver {
    fn feed(&mut self, chunk: &[u8]) {
        let obs = &mut self.obs;
        self.sse.feed(chunk, |ev| Self::on_event(obs, ev));
    }

    fn finish(mut self: Box<Self>) -> Observation {
        let mut obs = std::mem::take(&mut self.obs);
        obs.truncated = self.sse.oversized_lines() > 0;
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATE: &str = ENDPOINTS[0].1[0];
    const STREAM: &str = ENDPOINTS[0].1[1];
    const COUNT_TOKENS: &str = ENDPOINTS[0].1[2];
    const MODELS: &str = ENDPOINTS[0].1[3];

    fn parse(endpoint: &str, body: Value) -> Result<RequestInfo, BadRequest> {
        Gemini.parse_request(endpoint, &Bytes::from(body.to_string()))
    }

    #[test]
    fn paths_name_the_method_and_a_model_that_is_safe_in_a_url() {
        assert_eq!(
            endpoint_of("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some((GENERATE, "gemini-2.5-flash"))
        );
        assert_eq!(
            endpoint_of("/v1beta/models/gemini-2.0-flash-001:streamGenerateContent"),
            Some((STREAM, "gemini-2.0-flash-001"))
        );
        assert_eq!(
            endpoint_of("/v1beta/models/m:countTokens"),
            Some((COUNT_TOKENS, "m"))
        );
        assert_eq!(
            endpoint_of("/v1/models/m:streamGenerateContent"),
            Some(("/v1/models/{model}:streamGenerateContent", "m"))
        );
        assert_eq!(models_list("/v1/models"), Some("/v1/models"));
        assert_eq!(
            model_info("/v1beta/models/gemini-2.5-pro"),
            Some(("/v1beta/models/{model}", "gemini-2.5-pro"))
        );
        assert_eq!(model_info("/v1beta/models/a/b"), None);
        let info = Gemini
            .parse_request("/v1/models/gemini-2.5-pro", &Bytes::new())
            .unwrap();
        assert_eq!(info.model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!(
            Gemini.upstream_path("/v1/models/{model}", Some("gemini-2.5-pro")),
            Some(Cow::Borrowed("/v1/models/gemini-2.5-pro"))
        );
        assert_eq!(models_list("/v2/models"), None);
        for bad in [
            "/v1beta/models/:generateContent",
            "/v1beta/models/a/b:generateContent",
            "/v1beta/models/..:generateContent",
            "/v1beta/models/a%2Fb:generateContent",
            "/v1beta/models/m:embedContent",
            "/v1beta/models/m",
            "/v2/models/m:generateContent",
            "/x/v1/models/m:generateContent",
        ] {
            assert_eq!(endpoint_of(bad), None, "{bad}");
        }
        assert_eq!(
            Gemini.upstream_path(STREAM, Some("gemini-2.5-pro")),
            Some(Cow::Borrowed(
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
            ))
        );
        assert_eq!(Gemini.upstream_path(STREAM, Some("a/../b")), None);
        assert_eq!(
            Gemini.upstream_path(MODELS, None),
            Some(Cow::Borrowed(MODELS))
        );
    }

    #[test]
    fn request_gives_model_from_path_last_user_text_tools_and_new_tool_results() {
        let info = parse(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "old question"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                        {"functionResponse": {"id": "fc_7", "name": "other", "response": {"ok": true}}}
                    ]}
                ],
                "tools": [{"functionDeclarations": [{"name": "get_weather"}, {"name": "other"}]},
                          {"googleSearch": {}}]
            }),
        )
        .unwrap();
        assert_eq!(info.model.as_deref(), Some("gemini-2.5-flash"));
        assert!(info.streaming);
        assert_eq!(info.prompt.as_deref(), Some("old question"));
        assert_eq!(info.tools_offered, ["get_weather", "other"]);
        let results: Vec<(&str, &str)> = info
            .tool_results
            .iter()
            .map(|r| (r.id.as_str(), r.content.as_str()))
            .collect();
        assert_eq!(
            results,
            [
                ("get_weather", r#"{"temp":21}"#),
                ("fc_7", r#"{"ok":true}"#)
            ]
        );
    }

    #[test]
    fn prompt_skips_injected_blocks_and_missing_role_means_user() {
        let info = parse(
            "/v1beta/models/m:generateContent",
            json!({"contents": [{"parts": [{"text": "<system-reminder>x</system-reminder>"},
                                           {"text": "hello there"}]}]}),
        )
        .unwrap();
        assert_eq!(info.prompt.as_deref(), Some("hello there"));
        assert!(!info.streaming);
        assert!(info.tool_results.is_empty());
    }

    #[test]
    fn count_tokens_accepts_a_nested_request_and_bad_bodies_are_refused() {
        let info = parse(
            "/v1beta/models/m:countTokens",
            json!({"generateContentRequest": {"model": "models/m",
                   "contents": [{"role": "user", "parts": [{"text": "count me"}]}]}}),
        )
        .unwrap();
        assert_eq!(info.prompt.as_deref(), Some("count me"));
        assert!(parse("/v1beta/models/m:countTokens", json!({})).is_ok());
        let e = parse("/v1beta/models/m:generateContent", json!({})).unwrap_err();
        assert!(e.0.contains("contents"), "{}", e.0);
        let e = parse("/v1beta/models/m:generateContent", json!({"contents": 1})).unwrap_err();
        assert!(e.0.contains("list"), "{}", e.0);
        let rewritten = Gemini
            .with_model(
                &Bytes::from(r#"{"generateContentRequest":{"model":"models/a","contents":[]}}"#),
                "b",
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(v["generateContentRequest"]["model"], "models/b");
        let plain = Bytes::from(r#"{"contents":[]}"#);
        assert_eq!(Gemini.with_model(&plain, "b"), Some(plain.clone()));
        assert_eq!(Gemini.with_model(&plain, "b/c"), None);
    }

    const USAGE: &str = r#"{"promptTokenCount":40,"candidatesTokenCount":9,"thoughtsTokenCount":3,"cachedContentTokenCount":16,"totalTokenCount":52}"#;

    #[test]
    fn sse_stream_yields_the_last_usage_model_and_function_calls() {
        let stream = format!(
            concat!(
                "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"Hel\"}}]}},\"index\":0}}],",
                "\"usageMetadata\":{{\"promptTokenCount\":40,\"totalTokenCount\":40}},\"modelVersion\":\"gemini-2.5-flash\"}}\r\n\r\n",
                "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"functionCall\":{{\"name\":\"get_weather\",\"args\":{{\"city\":\"Paris\"}}}}}}]}},",
                "\"finishReason\":\"STOP\",\"index\":0}}],\"usageMetadata\":{},\"modelVersion\":\"gemini-2.5-flash\"}}\r\n\r\n",
            ),
            USAGE
        );
        let mut o = Gemini.observer(STREAM, true, ObserveLimits::default());
        for chunk in stream.as_bytes().chunks(7) {
            o.feed(chunk);
        }
        assert!(!o.answer_complete());
        let obs = o.finish();
        assert_eq!(obs.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            obs.usage,
            Usage {
                input_tokens: 40,
                output_tokens: 12,
                cache_read_tokens: 16,
                cache_write_tokens: 0
            }
        );
        assert_eq!(obs.tool_calls.len(), 1);
        assert_eq!(obs.tool_calls[0].id, None);
        assert_eq!(obs.tool_calls[0].name, "get_weather");
        assert_eq!(obs.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(obs.error, None);
    }

    #[test]
    fn json_answers_errors_and_unframed_streams_are_observed() {
        let one = format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"functionCall":{{"id":"fc_1","name":"f","args":{{}}}}}}]}}}}],"usageMetadata":{USAGE},"modelVersion":"gemini-2.5-pro"}}"#
        );
        let mut o = Gemini.observer(GENERATE, false, ObserveLimits::default());
        o.feed(one.as_bytes());
        let obs = o.finish();
        assert_eq!(obs.usage.input_tokens, 40);
        assert_eq!(obs.tool_calls[0].id.as_deref(), Some("fc_1"));
        assert_eq!(obs.model.as_deref(), Some("gemini-2.5-pro"));

        // `:streamGenerateContent` without `alt=sse`: a JSON array of chunks.
        let mut o = Gemini.observer(STREAM, false, ObserveLimits::default());
        o.feed(
            format!(
                r#"[{{"modelVersion":"m"}},{{"usageMetadata":{USAGE}}},{{"usageMetadata":{{"promptTokenCount":40}}}}]"#
            )
            .as_bytes(),
        );
        let usage = o.finish().usage;
        assert_eq!((usage.input_tokens, usage.output_tokens), (40, 12));

        let mut o = Gemini.observer(GENERATE, false, ObserveLimits::default());
        o.feed(
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(
            o.finish().error.as_deref(),
            Some("RESOURCE_EXHAUSTED: Quota exceeded")
        );
    }

    #[test]
    fn errors_use_googles_format_with_the_answered_status() {
        let cases = [
            (GatewayError::Authentication, 401, "UNAUTHENTICATED"),
            (GatewayError::InvalidRequest, 400, "INVALID_ARGUMENT"),
            (GatewayError::InvalidRequest, 413, "INVALID_ARGUMENT"),
            (GatewayError::NotConfigured, 503, "UNAVAILABLE"),
            (GatewayError::UpstreamUnavailable, 502, "UNAVAILABLE"),
            (GatewayError::NotFound, 404, "NOT_FOUND"),
            (GatewayError::PermissionDenied, 403, "PERMISSION_DENIED"),
            (GatewayError::BudgetExceeded, 429, "RESOURCE_EXHAUSTED"),
            (GatewayError::RateLimited, 429, "RESOURCE_EXHAUSTED"),
        ];
        for (kind, status, name) in cases {
            let v: Value =
                serde_json::from_slice(&Gemini.error_body_for(status, kind, "why")).unwrap();
            assert_eq!(v["error"]["code"], status, "{kind:?}");
            assert_eq!(v["error"]["status"], name, "{kind:?}");
            assert_eq!(v["error"]["message"], "why");
            let v: Value = serde_json::from_slice(&Gemini.error_body(kind, "why")).unwrap();
            assert_eq!(
                v["error"]["status"],
                status_name(default_status(kind), kind)
            );
        }
    }
}
