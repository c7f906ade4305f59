"""The official `anthropic` SDK against Bridge (fake upstream behind it)."""

import time

import anthropic
import httpx
import pytest

from conftest import ANTHROPIC_KEY, REMOTE_PROTOCOL_ERRORS

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(bridge, session_id, token=None, bearer=False, **headers):
    kw = {"auth_token": token or bridge.token} if bearer else {"api_key": token or bridge.token}
    return anthropic.Anthropic(
        base_url=f"{bridge.url}/anthropic",
        max_retries=0,
        default_headers={"x-bridge-session": session_id, **headers},
        **kw,
    )


def by_session(session_id):
    return lambda r: r["context"]["session"] == session_id


def test_non_streaming_message_is_answered_and_recorded_with_user_model_tokens_and_cost(bridge, session_id):
    c = client(bridge, session_id, **{"x-bridge-workspace": "ws-42", "x-bridge-template": "python-dev"})
    msg = c.messages.create(
        model="claude-sonnet-4-6", max_tokens=100,
        messages=[{"role": "user", "content": "Say hello to the bridge"}],
    )
    assert msg.content[0].text == "Hello from the fake upstream. You said: Say hello to the bridge"
    assert msg.usage.input_tokens > 0
    rec = bridge.wait_record(by_session(session_id))
    assert rec["user"] == "alice"
    assert rec["provider"] == "anthropic"
    assert rec["endpoint"] == "/v1/messages"
    assert rec["model"] == "claude-sonnet-4-6"
    assert rec["streaming"] is False
    assert rec["outcome"] == "ok" and rec["status"] == 200
    assert rec["prompt"] == "Say hello to the bridge"
    assert rec["usage"]["input_tokens"] == msg.usage.input_tokens
    assert rec["usage"]["output_tokens"] == msg.usage.output_tokens
    assert rec["cost_usd"] > 0
    assert rec["client"].startswith("Anthropic/Python")
    assert rec["context"] == {"workspace": "ws-42", "template": "python-dev", "session": session_id}


def test_streamed_tool_use_reaches_the_sdk_and_the_record_holds_tools_and_calls(bridge, session_id):
    c = client(bridge, session_id)
    with c.messages.stream(
        model="claude-sonnet-4-6", max_tokens=200, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Paris? use the weather tool"}],
    ) as stream:
        final = stream.get_final_message()
    tool_uses = [b for b in final.content if b.type == "tool_use"]
    assert len(tool_uses) == 1
    assert tool_uses[0].name == "get_weather"
    assert tool_uses[0].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    rec = bridge.wait_record(by_session(session_id))
    assert rec["streaming"] is True
    assert rec["outcome"] == "ok"
    assert rec["tools_offered"] == ["get_weather"]
    assert [(t["name"], t["id"]) for t in rec["tool_calls"]] == [("get_weather", tool_uses[0].id)]
    assert rec["tool_calls"][0]["arguments"].replace(" ", "") == '{"city":"Paris"}'
    assert rec["usage"]["input_tokens"] == final.usage.input_tokens
    assert rec["usage"]["output_tokens"] == final.usage.output_tokens
    assert rec["cost_usd"] > 0
    assert rec["ttfb_ms"] is not None and rec["ttfb_ms"] <= rec["duration_ms"]


def test_streamed_text_arrives_as_text_deltas(bridge, session_id):
    c = client(bridge, session_id)
    with c.messages.stream(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "stream me"}],
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from the fake upstream. You said: stream me"


def test_count_tokens_is_proxied(bridge, session_id):
    c = client(bridge, session_id)
    r = c.messages.count_tokens(model="claude-sonnet-4-6", messages=[{"role": "user", "content": "count me"}])
    assert r.input_tokens > 0
    rec = bridge.wait_record(by_session(session_id))
    assert rec["endpoint"] == "/v1/messages/count_tokens"
    assert rec["outcome"] == "ok"


def test_bearer_authorization_is_accepted_like_x_api_key(bridge, session_id):
    c = client(bridge, session_id, bearer=True)
    msg = c.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text.endswith("hi")


def test_unknown_token_is_refused_with_an_anthropic_authentication_error(bridge, session_id):
    c = client(bridge, session_id, token="brg_not-a-real-token")
    with pytest.raises(anthropic.AuthenticationError) as e:
        c.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"


def test_missing_token_is_refused_with_401_in_anthropic_format(bridge):
    r = httpx.post(f"{bridge.url}/anthropic/v1/messages", json={"model": "m", "messages": []},
                   headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_revoked_token_is_refused_within_seconds(bridge, session_id):
    token = bridge.create_key("bob")
    c = client(bridge, session_id, token=token)
    c.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    bridge.revoke_key_of("bob")
    # README: "takes effect on running gateways within 5 s" (the key cache's lifetime).
    revoked = time.monotonic()
    while True:
        try:
            c.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        except anthropic.AuthenticationError as e:
            assert e.status_code == 401
            break
        assert time.monotonic() - revoked < 5.5, "revoked token still accepted after 5.5 s"
        time.sleep(0.1)


def test_body_that_is_not_json_or_lacks_model_gets_400_in_anthropic_format(bridge):
    h = {"x-api-key": bridge.token, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    r = httpx.post(f"{bridge.url}/anthropic/v1/messages", content=b"{not json", headers=h)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{bridge.url}/anthropic/v1/messages", json={"messages": []}, headers=h)
    assert r.status_code == 400
    assert "model" in r.json()["error"]["message"]


def test_upstream_sees_the_server_key_and_never_the_bridge_token_or_bridge_headers(bridge, session_id):
    c = client(bridge, session_id, **{"anthropic-beta": "tools-2024-04-04"})
    raw = c.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    # The fake upstream answers 200 only for ANTHROPIC_KEY; it lists the headers it received.
    assert raw.http_response.status_code == 200
    received = raw.headers["x-fake-received-headers"].split(",")
    assert "x-api-key" in received and "anthropic-version" in received and "anthropic-beta" in received
    assert "authorization" not in received
    assert not [h for h in received if h.startswith("x-bridge-")]
    assert any(h.startswith("x-stainless-") for h in received)
    assert raw.headers["request-id"].startswith("req_")
    assert ANTHROPIC_KEY not in bridge.log_path.read_text()
    assert bridge.token not in bridge.log_path.read_text()


def test_first_streamed_event_reaches_the_client_before_the_upstream_finishes(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-hold-ms": "1500"})
    t0 = time.monotonic()
    first = None
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                           messages=[{"role": "user", "content": "slow"}]) as stream:
        for _event in stream:
            if first is None:
                first = time.monotonic() - t0
    total = time.monotonic() - t0
    assert total >= 1.5
    assert first < 0.5, f"first event after {first:.3f}s: the bridge buffered the stream"


def test_client_that_disconnects_mid_stream_is_recorded_as_client_cancelled(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-delay-ms": "200"})
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                           messages=[{"role": "user", "content": "one two three four five six"}]) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break  # leaving the block closes the connection mid-stream
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "client_cancelled"
    assert rec["usage"]["input_tokens"] > 0  # what was seen before the cut is kept
    assert rec["prompt"] == "one two three four five six"


def test_overloaded_upstream_surfaces_as_529_and_is_recorded_as_upstream_error(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "overloaded"})
    with pytest.raises(anthropic.APIStatusError) as e:
        c.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 529
    assert e.value.body["error"]["type"] == "overloaded_error"
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_error"
    assert rec["status"] == 529
    assert "overloaded" in rec["error"]


def test_error_event_mid_stream_raises_in_the_sdk_and_is_recorded_as_upstream_error(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "mid-stream"})
    with pytest.raises(anthropic.APIStatusError) as e:
        with c.messages.stream(model="claude-sonnet-4-6", max_tokens=10,
                               messages=[{"role": "user", "content": "hi there"}]) as stream:
            for _ in stream:
                pass
    # The error event arrived inside a 200 stream; the SDK raises it with its own type.
    assert e.value.status_code == 200
    assert e.value.body["error"]["type"] == "overloaded_error"
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_error"
    assert rec["status"] == 200
    assert rec["error"] == "overloaded_error: Overloaded"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_cache_tokens_are_recorded_as_reported_and_priced_at_cache_rates(bridge, session_id, stream):
    c = client(bridge, session_id, **{"x-fake-cached-tokens": "1000,200"})
    kw = dict(model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "cached prompt"}])
    if stream:
        with c.messages.stream(**kw) as s:
            usage = s.get_final_message().usage
    else:
        usage = c.messages.create(**kw).usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (1000, 200)
    rec = bridge.wait_record(by_session(session_id))
    u = rec["usage"]
    assert (u["input_tokens"], u["output_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert (u["cache_read_tokens"], u["cache_write_tokens"]) == (1000, 200)
    # claude-sonnet-4*: $3 input, $15 output, $0.30 cache read, $3.75 cache write per million.
    expected = (u["input_tokens"] * 3 + u["output_tokens"] * 15 + 1000 * 0.30 + 200 * 3.75) / 1e6
    assert rec["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_upstream_connection_cut_mid_stream_fails_in_the_sdk_and_is_recorded_with_what_was_seen(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "disconnect"})
    with pytest.raises((anthropic.APIConnectionError, *REMOTE_PROTOCOL_ERRORS)) as e:
        with c.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                               messages=[{"role": "user", "content": "a long answer please"}]) as stream:
            for _ in stream:
                pass
    cause = e.value.__cause__ if isinstance(e.value, anthropic.APIConnectionError) else e.value
    assert "incomplete chunked read" in str(cause), repr(e.value)
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_unavailable"
    assert "broke mid-answer" in rec["error"]
    assert rec["usage"]["input_tokens"] > 0  # message_start arrived before the cut
    assert rec["prompt"] == "a long answer please"
