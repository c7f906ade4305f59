//! The request path end to end, in-process, against a scripted upstream that the test drives
//! event by event: streaming without buffering (proved by holding the upstream until the client
//! has its first event, not by timing), byte-for-byte pass-through, client cancellation and
//! upstream failures mid-stream with the records they leave, 401s in each provider's own format
//! on every route, the swap of the bridge token for the server-side key, and header
//! pass-through.

mod http_support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use http_support::{
    client, next_data, request, send, sse, Harness, ANTHROPIC_KEY, OPENAI_KEY, TOKEN,
};
use serde_json::{json, Value};

fn anthropic_stream_request(prompt: &str) -> String {
    json!({
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "stream": true,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string()
}

fn anthropic_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("x-api-key", TOKEN),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ]
}

fn message_start(input: u64, cache_read: u64) -> String {
    sse(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude-sonnet-4-6-20260101", "content": [],
            "usage": {"input_tokens": input, "output_tokens": 1,
                      "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": 0}}}),
    )
}

#[tokio::test]
async fn first_streamed_event_reaches_the_client_while_the_upstream_still_holds_the_rest() {
    let mut h = Harness::start().await;
    let c = client();
    let req = request(
        Method::POST,
        &format!("{}/anthropic/v1/messages", h.url),
        &anthropic_headers(),
        anthropic_stream_request("hello"),
    );
    let pending = tokio::spawn(async move { c.request(req).await });

    let up = h.next_upstream_request().await;
    let tx = up.respond(200, &[("content-type", "text/event-stream")]);
    let first = message_start(11, 0);
    assert!(tx.send(first.clone()));

    // The upstream sends nothing more until the client has the first event. A gateway that
    // buffered (the whole body, or until some size) would never deliver it: the test fails.
    let resp = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("response headers did not arrive while the upstream held the stream")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let got = next_data(&mut body, Duration::from_secs(10))
        .await
        .expect("first event");
    assert_eq!(got, Bytes::from(first.clone()));

    // The rest, split at awkward places (inside a line, inside a UTF-8 character), arrives
    // byte for byte.
    let rest = [
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "héllo wörld"}}),
        ),
        sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        sse(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
        ),
        sse("message_stop", json!({"type": "message_stop"})),
    ]
    .concat();
    let bytes = rest.as_bytes();
    let cut = rest.find('é').unwrap() + 1; // in the middle of the two-byte 'é'
    for part in [&bytes[..17], &bytes[17..cut], &bytes[cut..]] {
        assert!(tx.send(Bytes::copy_from_slice(part)));
    }
    drop(tx);
    let mut received = got.to_vec();
    received.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    assert_eq!(received, [first.as_bytes(), bytes].concat());

    let rec = h.next_record().await;
    assert_eq!(rec.outcome.as_str(), "ok");
    assert!(rec.streaming);
    assert_eq!(rec.user, "alice");
    assert_eq!((rec.usage.input_tokens, rec.usage.output_tokens), (11, 7));
    let ttfb = rec.ttfb_ms.expect("ttfb recorded");
    assert!(ttfb <= rec.duration_ms, "{ttfb} > {}", rec.duration_ms);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_is_recorded_with_the_usage_the_upstream_reports_after_it_left(
) {
    let mut h = Harness::start().await;
    let c = client();
    let req = request(
        Method::POST,
        &format!("{}/anthropic/v1/messages", h.url),
        &[
            ("x-api-key", TOKEN),
            ("anthropic-version", "2023-06-01"),
            ("x-bridge-session", "sess-cancel"),
        ],
        anthropic_stream_request("weather in Paris?"),
    );
    let pending = tokio::spawn(async move { c.request(req).await });
    let up = h.next_upstream_request().await;
    let tx = up.respond(200, &[("content-type", "text/event-stream")]);
    for ev in [
        message_start(40, 12),
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Par"}}),
        ),
    ] {
        assert!(tx.send(ev));
    }
    let resp = pending.await.unwrap().unwrap();
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("Par") {
        seen.extend_from_slice(&next_data(&mut body, Duration::from_secs(10)).await.unwrap());
    }
    drop(body); // the client goes away mid-answer

    // The bridge keeps reading the upstream for the usage it reports at the end (bounded in
    // time and bytes): the record is not an under-count.
    for ev in [
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "is\"}"}}),
        ),
        sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        sse(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 11}}),
        ),
        sse("message_stop", json!({"type": "message_stop"})),
    ] {
        let _ = tx.send(ev);
    }
    drop(tx);

    let rec = h.next_record().await;
    assert_eq!(rec.outcome.as_str(), "client_cancelled");
    assert_eq!(rec.status, 200);
    assert_eq!(rec.prompt.as_deref(), Some("weather in Paris?"));
    assert_eq!(rec.usage.input_tokens, 40);
    assert_eq!(rec.usage.output_tokens, 11);
    assert_eq!(rec.usage.cache_read_tokens, 12);
    assert_eq!(rec.tool_calls.len(), 1);
    assert_eq!(rec.tool_calls[0].name, "get_weather");
    assert_eq!(rec.tool_calls[0].id.as_deref(), Some("toolu_9"));
    assert_eq!(rec.tool_calls[0].arguments, "{\"city\": \"Paris\"}");
    assert_eq!(rec.context.session.as_deref(), Some("sess-cancel"));
    assert_eq!(rec.error, None, "usage is complete: no caveat");
    assert!(rec.ttfb_ms.is_some());
    assert_eq!(h.in_flight(), 0);
}

#[tokio::test]
async fn an_upstream_connection_that_breaks_mid_stream_is_recorded_as_upstream_unavailable() {
    let mut h = Harness::start().await;
    let c = client();
    let req = request(
        Method::POST,
        &format!("{}/anthropic/v1/messages", h.url),
        &anthropic_headers(),
        anthropic_stream_request("tell me a story"),
    );
    let pending = tokio::spawn(async move { c.request(req).await });
    let up = h.next_upstream_request().await;
    let tx = up.respond(200, &[("content-type", "text/event-stream")]);
    assert!(tx.send(message_start(30, 0)));
    let resp = pending.await.unwrap().unwrap();
    let mut body = resp.into_body();
    next_data(&mut body, Duration::from_secs(10))
        .await
        .expect("first event");
    tx.cut();
    // The client sees the answer end abnormally, not a clean end of stream.
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the client was left hanging");
    assert!(
        rest.is_err(),
        "a cut upstream must not look like a complete answer"
    );

    let rec = h.next_record().await;
    assert_eq!(rec.outcome.as_str(), "upstream_unavailable");
    assert_eq!(rec.usage.input_tokens, 30);
    let err = rec.error.unwrap();
    assert!(err.contains("broke mid-answer"), "{err}");
}

#[tokio::test]
async fn an_upstream_error_answer_passes_through_verbatim_and_is_recorded_as_upstream_error() {
    let mut h = Harness::start().await;
    let c = client();
    for (path, headers, body, err_body, expected_error) in [
        (
            "/anthropic/v1/messages",
            anthropic_headers(),
            anthropic_stream_request("hi"),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}),
            "rate_limit_error: Number of request tokens has exceeded your per-minute rate limit",
        ),
        (
            "/openai/v1/chat/completions",
            vec![("authorization", "Bearer brg_gateway-test-token")],
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
            json!({"error": {"message": "Rate limit reached for gpt-4o", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
            "requests: Rate limit reached for gpt-4o",
        ),
    ] {
        let req = request(Method::POST, &format!("{}{path}", h.url), &headers, body);
        let c2 = c.clone();
        let pending = tokio::spawn(async move { send(&c2, req).await });
        let up = h.next_upstream_request().await;
        let tx = up.respond(
            429,
            &[
                ("content-type", "application/json"),
                ("retry-after", "7"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("request-id", "req_upstream_1"),
            ],
        );
        tx.send(err_body.to_string());
        drop(tx);
        let (status, resp_headers, resp_body) = pending.await.unwrap();
        assert_eq!(status, 429);
        assert_eq!(resp_headers["retry-after"], "7");
        assert_eq!(resp_headers["anthropic-ratelimit-requests-remaining"], "0");
        assert_eq!(resp_headers["request-id"], "req_upstream_1");
        assert_eq!(resp_body, Bytes::from(err_body.to_string()));
        let rec = h.next_record().await;
        assert_eq!(rec.outcome.as_str(), "upstream_error");
        assert_eq!(rec.status, 429);
        assert_eq!(rec.error.as_deref(), Some(expected_error));
    }
}

#[tokio::test]
async fn missing_or_unknown_tokens_get_401_in_the_providers_own_format_on_every_route() {
    let mut h = Harness::start().await;
    let c = client();
    let anthropic_body = json!({"model": "claude-sonnet-4-6", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let openai_body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let routes = [
        (
            Method::POST,
            "/anthropic/v1/messages",
            &anthropic_body,
            true,
        ),
        (
            Method::POST,
            "/anthropic/v1/messages/count_tokens",
            &anthropic_body,
            true,
        ),
        (
            Method::POST,
            "/openai/v1/chat/completions",
            &openai_body,
            false,
        ),
        (Method::POST, "/openai/v1/responses", &openai_body, false),
        (Method::GET, "/openai/v1/models", &String::new(), false),
    ];
    let credentials: [&[(&str, &str)]; 5] = [
        &[],
        &[("x-api-key", "brg_unknown-token")],
        &[("authorization", "Bearer brg_unknown-token")],
        &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
        // A provider key is not a bridge token.
        &[("x-api-key", ANTHROPIC_KEY)],
    ];
    for (method, path, body, anthropic) in &routes {
        for creds in credentials {
            let req = request(
                method.clone(),
                &format!("{}{path}", h.url),
                creds,
                (*body).clone(),
            );
            let (status, headers, body) = send(&c, req).await;
            assert_eq!(status, 401, "{path} {creds:?}");
            assert_eq!(headers["content-type"], "application/json");
            let v: Value = serde_json::from_slice(&body).unwrap();
            if *anthropic {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["error"]["type"], "authentication_error", "{v}");
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("bridge token"));
            } else {
                assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
                assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
                assert!(v["error"]["param"].is_null());
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("bridge token"));
            }
        }
    }
    assert!(
        h.upstream_untouched(),
        "an unauthenticated request reached the upstream"
    );
}

#[tokio::test]
async fn the_bridge_token_from_either_header_is_swapped_for_the_server_side_key() {
    let mut h = Harness::start().await;
    let c = client();
    let bearer = format!("Bearer {TOKEN}");
    let cases: [(&str, (&str, &str), &str); 4] = [
        ("/anthropic/v1/messages", ("x-api-key", TOKEN), "anthropic"),
        (
            "/anthropic/v1/messages",
            ("authorization", &bearer),
            "anthropic",
        ),
        (
            "/openai/v1/chat/completions",
            ("authorization", &bearer),
            "openai",
        ),
        (
            "/openai/v1/chat/completions",
            ("x-api-key", TOKEN),
            "openai",
        ),
    ];
    for (path, cred, provider) in cases {
        let body = json!({"model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
        let req = request(
            Method::POST,
            &format!("{}{path}", h.url),
            &[cred, ("anthropic-version", "2023-06-01")],
            body,
        );
        let c2 = c.clone();
        let pending = tokio::spawn(async move { send(&c2, req).await });
        let up = h.next_upstream_request().await;
        if provider == "anthropic" {
            assert_eq!(up.header("x-api-key"), Some(ANTHROPIC_KEY), "{cred:?}");
            assert_eq!(up.header("authorization"), None, "{cred:?}");
        } else {
            let expected = format!("Bearer {OPENAI_KEY}");
            assert_eq!(up.header("authorization"), Some(expected.as_str()));
            assert_eq!(up.header("x-api-key"), None, "{cred:?}");
        }
        let raw: Vec<u8> = up
            .headers
            .values()
            .flat_map(|v| v.as_bytes().to_vec())
            .collect();
        assert!(
            !String::from_utf8_lossy(&raw).contains(TOKEN),
            "the bridge token reached the upstream"
        );
        up.respond_json(200, &json!({"ok": true}));
        let (status, _, _) = pending.await.unwrap();
        assert_eq!(status, 200);
        let rec = h.next_record().await;
        assert_eq!(
            (rec.user.as_str(), rec.provider.as_str()),
            ("alice", provider)
        );
        assert_eq!(rec.key_id.as_deref(), Some("key_alice"));
    }
}

#[tokio::test]
async fn client_headers_and_query_pass_through_while_credentials_and_bridge_headers_stay_behind() {
    let mut h = Harness::start_with_prefix("/chained/gw").await;
    let c = client();
    let req = request(
        Method::POST,
        // Claude Code calls /v1/messages?beta=true.
        &format!("{}/anthropic/v1/messages?beta=true", h.url),
        &[
            ("x-api-key", TOKEN),
            ("anthropic-version", "2023-06-01"),
            (
                "anthropic-beta",
                "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
            ),
            ("anthropic-dangerous-direct-browser-access", "true"),
            ("x-stainless-lang", "python"),
            ("x-app", "cli"),
            ("user-agent", "claude-cli/2.0.0 (external, cli)"),
            ("content-type", "application/json"),
            ("x-bridge-workspace", "ws-7"),
            ("x-bridge-template", "rust-dev"),
            ("x-bridge-session", "sess-42"),
            ("accept-encoding", "gzip, br"),
        ],
        json!({"model": "claude-opus-4-1", "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "look"}]}]})
        .to_string(),
    );
    let pending = tokio::spawn(async move { send(&c, req).await });
    let up = h.next_upstream_request().await;
    assert_eq!(up.uri.path(), "/chained/gw/v1/messages");
    assert_eq!(up.uri.query(), Some("beta=true"));
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        up.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14")
    );
    assert_eq!(
        up.header("anthropic-dangerous-direct-browser-access"),
        Some("true")
    );
    assert_eq!(up.header("x-stainless-lang"), Some("python"));
    assert_eq!(up.header("x-app"), Some("cli"));
    assert_eq!(
        up.header("user-agent"),
        Some("claude-cli/2.0.0 (external, cli)")
    );
    for stripped in [
        "x-bridge-workspace",
        "x-bridge-template",
        "x-bridge-session",
        "authorization",
        // Asked uncompressed, so the bridge can read usage from the answer.
        "accept-encoding",
    ] {
        assert_eq!(up.header(stripped), None, "{stripped} was forwarded");
    }
    let tx = up.respond(
        200,
        &[
            ("content-type", "application/json"),
            ("request-id", "req_abc"),
            ("anthropic-organization-id", "org-1"),
        ],
    );
    tx.send(
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-1",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 9, "output_tokens": 2,
                      "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50}})
        .to_string(),
    );
    drop(tx);
    let (status, headers, _) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["request-id"], "req_abc");
    assert_eq!(headers["anthropic-organization-id"], "org-1");
    let rec = h.next_record().await;
    assert_eq!(rec.context.workspace.as_deref(), Some("ws-7"));
    assert_eq!(rec.context.template.as_deref(), Some("rust-dev"));
    assert_eq!(rec.context.session.as_deref(), Some("sess-42"));
    assert_eq!(
        rec.client.as_deref(),
        Some("claude-cli/2.0.0 (external, cli)")
    );
    assert_eq!(rec.prompt.as_deref(), Some("look"));
    assert_eq!(
        (
            rec.usage.input_tokens,
            rec.usage.output_tokens,
            rec.usage.cache_read_tokens,
            rec.usage.cache_write_tokens
        ),
        (9, 2, 100, 50)
    );
}
