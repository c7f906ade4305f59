"""The official `openai` SDK against Bridge (fake upstream behind it)."""

import json

import httpx
import openai
import pytest

from conftest import REMOTE_PROTOCOL_ERRORS

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_RESPONSES = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(bridge, session_id, token=None, **headers):
    return openai.OpenAI(
        base_url=f"{bridge.url}/openai/v1",
        api_key=token or bridge.token,
        max_retries=0,
        default_headers={"x-bridge-session": session_id, **headers},
    )


def by_session(session_id):
    return lambda r: r["context"]["session"] == session_id


def test_chat_completion_non_streaming_is_answered_and_recorded(bridge, session_id):
    c = client(bridge, session_id)
    r = c.chat.completions.create(model="gpt-4o", messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello openai"},
    ])
    assert r.choices[0].message.content == "Hello from the fake upstream. You said: hello openai"
    rec = bridge.wait_record(by_session(session_id))
    assert (rec["user"], rec["provider"], rec["endpoint"]) == ("alice", "openai", "/v1/chat/completions")
    assert rec["model"] == "gpt-4o"
    assert rec["prompt"] == "hello openai"
    assert rec["usage"]["input_tokens"] == r.usage.prompt_tokens
    assert rec["usage"]["output_tokens"] == r.usage.completion_tokens
    assert rec["cost_usd"] > 0
    assert rec["outcome"] == "ok"


def test_streamed_chat_tool_calls_reach_the_sdk_and_usage_is_recorded(bridge, session_id):
    c = client(bridge, session_id)
    stream = c.chat.completions.create(
        model="gpt-4o", stream=True, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather in Paris please"}],
    )
    name, args, call_id = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call_id = tc.id or call_id
                name += tc.function.name or ""
                args += tc.function.arguments or ""
    assert name == "get_weather"
    assert json.loads(args) == {"city": "Paris"}
    rec = bridge.wait_record(by_session(session_id))
    assert rec["streaming"] is True and rec["outcome"] == "ok"
    assert rec["tools_offered"] == ["get_weather"]
    assert rec["tool_calls"] == [{"id": call_id, "name": "get_weather", "arguments": args}]
    # The client did not ask for usage; the bridge asked upstream for it and recorded it.
    assert rec["usage"]["input_tokens"] > 0 and rec["usage"]["output_tokens"] > 0
    assert rec["cost_usd"] > 0


def test_streamed_chat_text_with_client_requested_usage(bridge, session_id):
    c = client(bridge, session_id)
    stream = c.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count words"}],
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == "Hello from the fake upstream. You said: count words"
    rec = bridge.wait_record(by_session(session_id))
    assert rec["usage"]["output_tokens"] == usage.completion_tokens


def test_responses_non_streaming_with_function_call(bridge, session_id):
    c = client(bridge, session_id)
    r = c.responses.create(model="gpt-4.1", input="what's the weather in Paris?", tools=[WEATHER_TOOL_RESPONSES])
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    rec = bridge.wait_record(by_session(session_id))
    assert rec["endpoint"] == "/v1/responses"
    assert rec["tool_calls"][0]["id"] == calls[0].call_id
    assert rec["tools_offered"] == ["get_weather"]
    assert rec["usage"]["input_tokens"] == r.usage.input_tokens
    assert rec["cost_usd"] > 0


def test_responses_streaming_text_and_completed_usage(bridge, session_id):
    c = client(bridge, session_id)
    stream = c.responses.create(model="gpt-4.1", input=[{"role": "user", "content": "stream a response"}], stream=True)
    text, completed = "", None
    for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            completed = event.response
    assert text == "Hello from the fake upstream. You said: stream a response"
    assert completed is not None
    rec = bridge.wait_record(by_session(session_id))
    assert rec["streaming"] is True and rec["outcome"] == "ok"
    assert rec["prompt"] == "stream a response"
    assert rec["usage"]["input_tokens"] == completed.usage.input_tokens
    assert rec["usage"]["output_tokens"] == completed.usage.output_tokens


def test_responses_stream_helper_assembles_the_final_response(bridge, session_id):
    c = client(bridge, session_id)
    with c.responses.stream(model="gpt-4.1", input="helper please") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello from the fake upstream. You said: helper please"


def test_models_list_is_proxied(bridge, session_id):
    c = client(bridge, session_id)
    ids = [m.id for m in c.models.list()]
    assert "gpt-4o" in ids
    rec = bridge.wait_record(by_session(session_id))
    assert rec["endpoint"] == "/v1/models"


def test_unknown_token_raises_openai_authentication_error_with_invalid_api_key_code(bridge, session_id):
    c = client(bridge, session_id, token="sk-definitely-not-a-bridge-token")
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"
    assert e.value.type == "invalid_request_error"


def test_chat_body_without_model_gets_400_in_openai_format(bridge):
    r = httpx.post(f"{bridge.url}/openai/v1/chat/completions", json={"messages": []},
                   headers={"authorization": f"Bearer {bridge.token}"})
    assert r.status_code == 400
    assert "model" in r.json()["error"]["message"]


def test_upstream_error_status_surfaces_in_the_sdk_and_is_recorded(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "overloaded"})
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_error" and rec["status"] == 503


def test_error_chunk_mid_stream_raises_api_error_and_is_recorded(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "mid-stream"})
    with pytest.raises(openai.APIError) as e:
        for _ in c.chat.completions.create(model="gpt-4o", stream=True,
                                           messages=[{"role": "user", "content": "hi"}]):
            pass
    # The SDK raises the stream's error chunk as an APIError carrying its type (no status:
    # the response itself was a 200).
    assert type(e.value) is openai.APIError, repr(e.value)
    assert e.value.type == "server_error"
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_error"
    assert "server_error" in rec["error"]


def test_health_ready_and_metrics_endpoints(bridge, session_id):
    assert httpx.get(f"{bridge.url}/healthz").status_code == 200
    ready = httpx.get(f"{bridge.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "store": "ok", "store_error": None,
                            "spooled_records": 0, "spooled_bytes": 0}

    c = client(bridge, session_id)
    r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "metrics"}])
    bridge.wait_record(by_session(session_id))
    metrics = httpx.get(f"{bridge.url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    series = {}
    for line in metrics.text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP bridge_", "# TYPE bridge_")), line
            continue
        name, value = line.rsplit(" ", 1)
        series[name] = float(value)
    key = 'bridge_requests_total{provider="openai",model="gpt-4o-mini",outcome="ok"}'
    assert series[key] >= 1
    assert series['bridge_tokens_total{provider="openai",model="gpt-4o-mini",type="input"}'] >= r.usage.prompt_tokens
    assert series['bridge_cost_usd_total{provider="openai",model="gpt-4o-mini"}'] > 0
    assert series['bridge_request_duration_seconds_count{provider="openai"}'] >= 1
    assert series['bridge_request_duration_seconds_bucket{provider="openai",le="+Inf"}'] == \
        series['bridge_request_duration_seconds_count{provider="openai"}']
    assert series['bridge_requests_in_flight{provider="openai"}'] == 0
    assert series["bridge_spool_records"] == 0
    assert series["bridge_records_stored_total"] >= 1
    assert "# TYPE bridge_request_duration_seconds histogram" in metrics.text


def test_cached_prompt_tokens_are_recorded_and_billed_at_the_cached_rate(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-cached-tokens": "500"})
    r = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "cache me"}])
    assert r.usage.prompt_tokens_details.cached_tokens == 500
    rec = bridge.wait_record(by_session(session_id))
    u = rec["usage"]
    assert (u["input_tokens"], u["cache_read_tokens"]) == (r.usage.prompt_tokens, 500)
    # gpt-4o: $2.50 input (of which cached: $1.25), $10 output per million; OpenAI counts the
    # cached tokens inside prompt_tokens.
    expected = ((r.usage.prompt_tokens - 500) * 2.5 + 500 * 1.25 + r.usage.completion_tokens * 10) / 1e6
    assert rec["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_responses_stream_records_cached_tokens_from_the_completed_event(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-cached-tokens": "64"})
    with c.responses.stream(model="gpt-4.1", input="cached responses") as stream:
        final = stream.get_final_response()
    assert final.usage.input_tokens_details.cached_tokens == 64
    rec = bridge.wait_record(by_session(session_id))
    assert rec["usage"]["cache_read_tokens"] == 64
    assert rec["usage"]["input_tokens"] == final.usage.input_tokens


@pytest.mark.parametrize("method,path", [
    ("POST", "/openai/v1/chat/completions"),
    ("POST", "/openai/v1/responses"),
    ("GET", "/openai/v1/models"),
])
def test_missing_token_gets_401_in_openai_format_on_every_route(bridge, method, path):
    r = httpx.request(method, f"{bridge.url}{path}", json={"model": "gpt-4o", "input": "x"} if method == "POST" else None)
    assert r.status_code == 401
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "bridge token" in err["message"]


def test_upstream_connection_cut_mid_stream_is_recorded_as_upstream_unavailable(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "disconnect"})
    with pytest.raises((openai.APIConnectionError, *REMOTE_PROTOCOL_ERRORS)) as e:
        for _ in c.chat.completions.create(model="gpt-4o", stream=True,
                                           messages=[{"role": "user", "content": "long answer"}]):
            pass
    cause = e.value.__cause__ if isinstance(e.value, openai.APIConnectionError) else e.value
    assert isinstance(cause, REMOTE_PROTOCOL_ERRORS), repr(cause)
    assert "incomplete chunked read" in str(cause), repr(e.value)
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_unavailable"
    assert rec["prompt"] == "long answer"
