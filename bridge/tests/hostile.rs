//! The request path against hostile clients and misbehaving upstreams, in-process over real
//! HTTP on loopback (the scripted upstream is driven by the test, event by event):
//!
//! - metering cannot be switched off by the client (`stream_options.include_usage: false`);
//! - a request that reached the upstream is recorded whatever the client does (leaves before
//!   the response headers, mid-stream) and whatever the upstream does (never answers, stalls
//!   mid-stream, never finishes after the client left), and `in flight` returns to zero;
//! - the intercept-start entry exists before the upstream sees the prompt;
//! - request bodies are bounded in time, size and total memory;
//! - the client picks neither the billing scope nor what else reaches the provider.
//!
//! No test sleeps for a fixed time to decide an outcome: each waits for a condition, bounded.

mod http_support;

use std::time::Duration;

use bridge::proxy::Limits;
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use http_support::{client, next_data, request, send, sse, Harness, TOKEN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chat_chunk(choices: Value, usage: Value) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o",
               "choices": choices, "usage": usage})
    )
}

#[tokio::test]
async fn an_openai_stream_that_opts_out_of_usage_is_still_metered_and_the_usage_chunk_is_withheld()
{
    let mut h = Harness::start().await;
    for opt_out in [
        json!({"include_usage": false}),
        json!({"include_usage": null}),
    ] {
        let c = client();
        let bearer = format!("Bearer {TOKEN}");
        let req = request(
            Method::POST,
            &format!("{}/openai/v1/chat/completions", h.url),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            json!({"model": "gpt-4o", "stream": true, "stream_options": opt_out,
                   "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        );
        let pending = tokio::spawn(async move { send(&c, req).await });
        let up = h.next_upstream_request().await;
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            sent["stream_options"]["include_usage"], true,
            "usage must be requested whatever the client says ({opt_out})"
        );
        let tx = up.respond(200, &[("content-type", "text/event-stream")]);
        let text = chat_chunk(
            json!([{"index": 0, "delta": {"content": "hello"}, "finish_reason": null}]),
            Value::Null,
        );
        let stop = chat_chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            Value::Null,
        );
        let usage = chat_chunk(
            json!([]),
            json!({"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}),
        );
        // Split the usage chunk across writes: the filter must still recognise it.
        let (u1, u2) = usage.split_at(30);
        for part in [text.as_str(), stop.as_str(), u1, u2, "data: [DONE]\n\n"] {
            assert!(tx.send(part.to_string()));
        }
        drop(tx);
        let (status, _, body) = pending.await.unwrap();
        assert_eq!(status, 200);
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(
            body,
            format!("{text}{stop}data: [DONE]\n\n"),
            "the client did not ask for the usage chunk"
        );
        let rec = h.next_record().await;
        assert_eq!(rec.outcome.as_str(), "ok");
        assert_eq!((rec.usage.input_tokens, rec.usage.output_tokens), (21, 5));
    }
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_headers_is_recorded_with_the_upstreams_usage() {
    let mut h = Harness::start().await;
    let c = client();
    let req = request(
        Method::POST,
        &format!("{}/anthropic/v1/messages", h.url),
        &[
            ("x-api-key", TOKEN),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        json!({"model": "claude-sonnet-4-6", "max_tokens": 100,
               "messages": [{"role": "user", "content": "a long answer please"}]})
        .to_string(),
    );
    let pending = tokio::spawn(async move { c.request(req).await });
    let up = h.next_upstream_request().await;
    // The intercept-start entry was made before the upstream got the prompt.
    let starts = h.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].outcome.as_str(), "incomplete");
    assert_eq!(starts[0].prompt.as_deref(), Some("a long answer please"));
    // The client gives up while the (non-streaming) upstream is still working.
    pending.abort();
    let _ = pending.await;
    // Give the bridge time to notice the closed connection before the answer comes (nothing
    // outside the bridge shows when it has; the outcome is asserted below either way).
    tokio::time::sleep(Duration::from_millis(100)).await;
    up.respond_json(
        200,
        &json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
                "content": [{"type": "text", "text": "done"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 17, "output_tokens": 300}}),
    );
    let rec = h.next_record().await;
    assert_eq!(
        rec.id, starts[0].id,
        "the final record replaces the start entry"
    );
    // The path under test: the answer came after the bridge saw the client leave (were the
    // 100 ms above not enough, this says so instead of silently testing another path).
    assert_eq!(rec.outcome.as_str(), "client_cancelled", "{rec:?}");
    assert_eq!((rec.usage.input_tokens, rec.usage.output_tokens), (17, 300));
    assert_eq!(rec.prompt.as_deref(), Some("a long answer please"));
    assert!(
        h.wait_in_flight_zero().await,
        "in flight leaked: {}",
        h.in_flight()
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_a_504_in_the_providers_format_and_a_record() {
    let limits = Limits {
        upstream_response_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut h = Harness::start_configured("", limits, &[]).await;
    let c = client();
    let bearer = format!("Bearer {TOKEN}");
    let req = request(
        Method::POST,
        &format!("{}/openai/v1/chat/completions", h.url),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello?"}]}).to_string(),
    );
    let pending = tokio::spawn(async move { send(&c, req).await });
    // The upstream takes the request and never answers.
    let _held = h.next_upstream_request().await;
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(status, 504);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream_response_timeout_secs"),
        "{v}"
    );
    let rec = h.next_record().await;
    assert_eq!(rec.outcome.as_str(), "upstream_unavailable");
    assert_eq!(rec.status, 504);
    assert_eq!(rec.prompt.as_deref(), Some("hello?"));
    assert!(
        h.wait_in_flight_zero().await,
        "in flight leaked: {}",
        h.in_flight()
    );
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_stream_is_cut_after_the_idle_timeout_and_recorded() {
    let limits = Limits {
        upstream_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut h = Harness::start_configured("", limits, &[]).await;
    let c = client();
    let req = request(
        Method::POST,
        &format!("{}/anthropic/v1/messages", h.url),
        &[("x-api-key", TOKEN), ("anthropic-version", "2023-06-01")],
        json!({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    );
    let pending = tokio::spawn(async move { c.request(req).await });
    let up = h.next_upstream_request().await;
    let tx = up.respond(200, &[("content-type", "text/event-stream")]);
    assert!(tx.send(sse(
        "message_start",
        json!({"type": "message_start", "message": {"model": "claude-sonnet-4-6",
            "usage": {"input_tokens": 9, "output_tokens": 1}}})
    )));
    let resp = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    next_data(&mut body, Duration::from_secs(10)).await.unwrap();
    // The upstream goes silent (its sender stays open): the stream must end with an error.
    let end = tokio::time::timeout(Duration::from_secs(10), body.collect()).await;
    assert!(matches!(end, Ok(Err(_))), "the stalled stream was not cut");
    let rec = h.next_record().await;
    assert_eq!(rec.outcome.as_str(), "upstream_unavailable");
    assert!(
        rec.error
            .as_deref()
            .unwrap()
            .contains("upstream_idle_timeout_secs"),
        "{:?}",
        rec.error
    );
    assert_eq!(rec.usage.input_tokens, 9);
    assert!(h.wait_in_flight_zero().await);
    drop(tx);
}

#[tokio::test]
async fn after_the_client_left_the_upstream_is_read_only_within_bounds_and_the_record_says_usage_is_partial(
) {
    let limits = Limits {
        drain_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut h = Harness::start_configured("", limits, &[]).await;
    let c = client();
    let req = request(
        Method::POST,
        &format!("{}/anthropic/v1/messages", h.url),
        &[("x-api-key", TOKEN), ("anthropic-version", "2023-06-01")],
        json!({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    );
    let pending = tokio::spawn(async move { c.request(req).await });
    let up = h.next_upstream_request().await;
    let tx = up.respond(200, &[("content-type", "text/event-stream")]);
    assert!(tx.send(sse(
        "message_start",
        json!({"type": "message_start", "message": {"model": "claude-sonnet-4-6",
            "usage": {"input_tokens": 9, "output_tokens": 1}}})
    )));
    let resp = pending.await.unwrap().unwrap();
    let mut body = resp.into_body();
    next_data(&mut body, Duration::from_secs(10)).await.unwrap();
    drop(body);
    // The upstream never finishes (keeps the stream open, sending keep-alives).
    let rec = tokio::select! {
        rec = h.next_record() => rec,
        () = async {
            while tx.send(": ping\n\n") {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::future::pending::<()>().await
        } => unreachable!(),
    };
    assert_eq!(rec.outcome.as_str(), "client_cancelled");
    let err = rec.error.as_deref().unwrap_or_default();
    assert!(
        err.starts_with("usage incomplete") && err.contains("drain_timeout_secs"),
        "{err}"
    );
    assert_eq!(rec.usage.input_tokens, 9);
    // And then the bridge lets go of the upstream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tx.send(": ping\n\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream connection kept open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.wait_in_flight_zero().await);
}

/// Sends raw bytes to the bridge and returns what it answers (bounded).
async fn raw_exchange(url: &str, head: &str, body_part: &[u8]) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body_part).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&out).contains("\r\n\r\n{") && out.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_request_body_that_never_ends_gets_a_408_in_the_providers_format() {
    let limits = Limits {
        request_body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut h = Harness::start_configured("", limits, &[]).await;
    let head = format!(
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {TOKEN}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let answer = raw_exchange(&h.url, &head, b"5\r\n{\"mod\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"type\":\"error\""), "{answer}");
    assert!(answer.contains("request_body_timeout_secs"), "{answer}");
    assert!(h.upstream_untouched());
}

#[tokio::test]
async fn request_bodies_are_bounded_in_size_and_in_total_memory() {
    let limits = Limits {
        max_request_body_bytes: 1024 * 1024,
        max_request_bodies_in_flight_bytes: 1024 * 1024,
        request_body_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let mut h = Harness::start_configured("", limits, &[]).await;
    let c = client();
    // Too large for one request: 413 in OpenAI's format.
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, body) = send(
        &c,
        request(
            Method::POST,
            &format!("{}/openai/v1/chat/completions", h.url),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            vec![b' '; 2 * 1024 * 1024],
        ),
    )
    .await;
    assert_eq!(status, 413);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_request_body_bytes"),
        "{v}"
    );
    // A slow client holding 700 KB in memory leaves no room for a second 700 KB body.
    let addr = h.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let len = 700 * 1024;
    slow.write_all(format!("POST /openai/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n").as_bytes()).await.unwrap();
    slow.write_all(&vec![b' '; 1024]).await.unwrap();
    // Wait (bounded) until the bridge holds it: then the second body is refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, _, body) = send(
            &c,
            request(
                Method::POST,
                &format!("{}/openai/v1/chat/completions", h.url),
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                vec![b' '; len],
            ),
        )
        .await;
        if status != 400 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        // 400: the body (spaces) was read and parsed: the slow one was not held yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_request_bodies_in_flight_bytes"),
        "{v}"
    );
    drop(slow);
    assert!(h.upstream_untouched());
}

#[tokio::test]
async fn the_client_picks_neither_the_billing_scope_nor_the_forwarded_headers() {
    let mut h = Harness::start_configured(
        "",
        Limits::default(),
        &[
            ("openai-organization", "org-server"),
            ("openai-project", "proj-server"),
        ],
    )
    .await;
    let c = client();
    let bearer = format!("Bearer {TOKEN}");
    let req = request(
        Method::POST,
        &format!("{}/openai/v1/chat/completions", h.url),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
            ("openai-organization", "org-client"),
            ("openai-project", "proj-client"),
            ("cookie", "session=abc"),
            ("x-forwarded-for", "10.1.2.3"),
            ("forwarded", "for=10.1.2.3"),
            ("x-real-ip", "10.1.2.3"),
            ("via", "1.1 corp-proxy"),
            ("openai-beta", "assistants=v2"),
            ("x-stainless-lang", "python"),
        ],
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    let pending = tokio::spawn(async move { send(&c, req).await });
    let up = h.next_upstream_request().await;
    assert_eq!(up.header("openai-organization"), Some("org-server"));
    assert_eq!(up.header("openai-project"), Some("proj-server"));
    assert_eq!(up.headers.get_all("openai-organization").iter().count(), 1);
    for dropped in ["cookie", "x-forwarded-for", "forwarded", "x-real-ip", "via"] {
        assert_eq!(up.header(dropped), None, "{dropped} reached the provider");
    }
    assert_eq!(up.header("openai-beta"), Some("assistants=v2"));
    assert_eq!(up.header("x-stainless-lang"), Some("python"));
    up.respond_json(
        200,
        &json!({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
    );
    let (status, _, _) = pending.await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_sse_line_over_the_bound_passes_to_the_client_but_is_not_buffered_and_the_record_says_so(
) {
    let limits = Limits {
        observe: bridge::providers::ObserveLimits {
            max_sse_line: 64 * 1024,
            ..Default::default()
        },
        ..Limits::default()
    };
    let mut h = Harness::start_configured("", limits, &[]).await;
    let c = client();
    let req = request(
        Method::POST,
        &format!("{}/anthropic/v1/messages", h.url),
        &[("x-api-key", TOKEN), ("anthropic-version", "2023-06-01")],
        json!({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    );
    let pending = tokio::spawn(async move { send(&c, req).await });
    let up = h.next_upstream_request().await;
    let tx = up.respond(200, &[("content-type", "text/event-stream")]);
    let start = sse(
        "message_start",
        json!({"type": "message_start", "message": {"model": "claude-sonnet-4-6",
            "usage": {"input_tokens": 9, "output_tokens": 1}}}),
    );
    assert!(tx.send(start.clone()));
    // One 4 MB line with no newline, sent in pieces.
    assert!(tx.send("event: content_block_delta\ndata: "));
    let piece = Bytes::from(vec![b'x'; 256 * 1024]);
    for _ in 0..16 {
        assert!(tx.send(piece.clone()));
    }
    let end = sse(
        "message_delta",
        json!({"type": "message_delta", "usage": {"output_tokens": 7}}),
    );
    assert!(tx.send(format!("\n\n{end}")));
    drop(tx);
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body.len(),
        start.len() + 33 + 16 * 256 * 1024 + 2 + end.len()
    );
    let rec = h.next_record().await;
    assert_eq!(rec.outcome.as_str(), "ok");
    assert_eq!((rec.usage.input_tokens, rec.usage.output_tokens), (9, 7));
    assert!(
        rec.error
            .as_deref()
            .unwrap_or_default()
            .contains("too large to inspect"),
        "{:?}",
        rec.error
    );
}
