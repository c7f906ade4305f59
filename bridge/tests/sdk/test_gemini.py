"""The official `google-genai` SDK against Bridge (fake upstream behind it)."""

import json
import time
import uuid

import httpx
import pytest
from google import genai
from google.genai import errors, types

WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather",
    description="Current weather in a city",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")},
                            required=["city"]),
)])


def client(bridge, session_id, token=None, api_version=None, **headers):
    """The SDK pointed at Bridge; it appends `/{api_version}/models/...` itself (`v1` by default
    in google-genai 3, `v1beta` when asked)."""
    return genai.Client(
        api_key=token or bridge.token,
        http_options=types.HttpOptions(
            base_url=f"{bridge.url}/gemini",
            api_version=api_version,
            headers={"x-bridge-session": session_id, **headers},
        ),
    )


def by_session(session_id):
    return lambda r: r["context"]["session"] == session_id


def eventually(fn, timeout=10.0):
    """`fn()` until it stops raising AssertionError (limits reach a running gateway within 5 s)."""
    deadline = time.time() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_generate_content_is_answered_and_recorded_with_usage_and_cost(bridge, session_id):
    c = client(bridge, session_id)
    r = c.models.generate_content(
        model="gemini-2.5-flash", contents="hello gemini",
        config=types.GenerateContentConfig(system_instruction="be brief"),
    )
    assert r.text == "Hello from the fake upstream. You said: hello gemini"
    rec = bridge.wait_record(by_session(session_id))
    assert (rec["user"], rec["provider"]) == ("alice", "gemini")
    assert rec["endpoint"] == "/v1/models/{model}:generateContent"
    assert rec["model"] == "gemini-2.5-flash"
    assert rec["prompt"] == "hello gemini"
    assert rec["streaming"] is False and rec["outcome"] == "ok" and rec["status"] == 200
    assert rec["usage"]["input_tokens"] == r.usage_metadata.prompt_token_count
    assert rec["usage"]["output_tokens"] == r.usage_metadata.candidates_token_count
    assert rec["cost_usd"] > 0


def test_cached_prompt_tokens_are_recorded_as_part_of_the_input(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-cached-tokens": "1000"})
    r = c.models.generate_content(model="gemini-2.5-flash", contents="cached please")
    assert r.usage_metadata.cached_content_token_count == 1000
    rec = bridge.wait_record(by_session(session_id))
    assert rec["usage"]["cache_read_tokens"] == 1000
    assert rec["usage"]["input_tokens"] == r.usage_metadata.prompt_token_count


def test_streamed_content_arrives_in_chunks_and_usage_is_recorded(bridge, session_id):
    c = client(bridge, session_id, api_version="v1beta")
    chunks = list(c.models.generate_content_stream(model="gemini-2.5-pro", contents="stream for me"))
    assert len(chunks) > 3
    assert "".join(ch.text or "" for ch in chunks) == "Hello from the fake upstream. You said: stream for me"
    final = chunks[-1].usage_metadata
    rec = bridge.wait_record(by_session(session_id))
    assert rec["endpoint"] == "/v1beta/models/{model}:streamGenerateContent"
    assert rec["streaming"] is True and rec["outcome"] == "ok"
    assert rec["model"] == "gemini-2.5-pro"
    assert rec["usage"]["input_tokens"] == final.prompt_token_count
    assert rec["usage"]["output_tokens"] == final.candidates_token_count
    assert rec["cost_usd"] > 0


def test_function_calls_are_recorded_and_their_results_linked_in_the_next_request(bridge, session_id):
    c = client(bridge, session_id, **{"x-client-session-id": session_id})
    config = types.GenerateContentConfig(
        tools=[WEATHER],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    question = types.Content(role="user", parts=[types.Part(text="what's the weather in Paris?")])
    r = c.models.generate_content(model="gemini-2.5-flash", contents=[question], config=config)
    calls = r.function_calls
    assert calls and calls[0].name == "get_weather" and calls[0].args == {"city": "Paris"}
    rec = bridge.wait_record(by_session(session_id))
    assert rec["tools_offered"] == ["get_weather"]
    assert len(rec["tool_calls"]) == 1
    assert rec["tool_calls"][0]["name"] == "get_weather"
    assert json.loads(rec["tool_calls"][0]["arguments"]) == {"city": "Paris"}

    # The client sends the result back: recorded with the next request, keyed by the call's
    # name (the Gemini API gives calls no id).
    answer = types.Content(role="user", parts=[types.Part.from_function_response(
        name="get_weather", response={"temp_c": 21})])
    c.models.generate_content(model="gemini-2.5-flash",
                              contents=[question, r.candidates[0].content, answer], config=config)
    rec2 = bridge.wait_record(lambda x: by_session(session_id)(x) and x["id"] != rec["id"])
    assert [(t["id"], json.loads(t["content"])) for t in rec2["tool_results"]] == \
        [("get_weather", {"temp_c": 21})]
    # The thread shows the result under the call it answers (matched by the function's name).
    thread = bridge.cli("interceptions", "thread", session_id)
    assert '-> get_weather({"city":"Paris"})' in thread, thread
    assert '<- get_weather (13 bytes): {"temp_c":21}' in thread, thread


def test_streamed_function_call_is_recorded(bridge, session_id):
    c = client(bridge, session_id)
    config = types.GenerateContentConfig(
        tools=[WEATHER],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    calls = []
    for ch in c.models.generate_content_stream(model="gemini-2.5-flash",
                                               contents="weather in Paris?", config=config):
        calls += ch.function_calls or []
    assert [fc.name for fc in calls] == ["get_weather"]
    rec = bridge.wait_record(by_session(session_id))
    assert rec["streaming"] is True
    assert [t["name"] for t in rec["tool_calls"]] == ["get_weather"]


def test_count_tokens_is_proxied(bridge, session_id):
    c = client(bridge, session_id)
    r = c.models.count_tokens(model="gemini-2.5-flash", contents="how many tokens is this?")
    assert r.total_tokens > 0
    rec = bridge.wait_record(by_session(session_id))
    assert rec["endpoint"] == "/v1/models/{model}:countTokens"
    assert rec["model"] == "gemini-2.5-flash" and rec["outcome"] == "ok"


def test_models_list_is_proxied(bridge, session_id):
    for version in ("v1", "v1beta"):
        c = client(bridge, f"{session_id}-{version}", api_version=version)
        names = [m.name for m in c.models.list()]
        assert "models/gemini-2.5-flash" in names
        rec = bridge.wait_record(by_session(f"{session_id}-{version}"))
        assert rec["endpoint"] == f"/{version}/models"


def test_one_model_is_described_and_recorded_with_its_model(bridge, session_id):
    c = client(bridge, session_id, api_version="v1beta")
    m = c.models.get(model="gemini-2.5-pro")
    assert m.name == "models/gemini-2.5-pro" and m.input_token_limit > 0
    rec = bridge.wait_record(by_session(session_id))
    assert rec["endpoint"] == "/v1beta/models/{model}" and rec["model"] == "gemini-2.5-pro"


def test_unknown_token_raises_the_sdks_client_error_in_googles_format(bridge, session_id):
    c = client(bridge, session_id, token="not-a-bridge-token")
    with pytest.raises(errors.ClientError) as e:
        c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 401
    assert e.value.status == "UNAUTHENTICATED"
    assert "invalid bridge token" in e.value.message


def test_token_in_the_key_parameter_works_and_is_not_forwarded(bridge, session_id):
    url = f"{bridge.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    r = httpx.post(url, params={"alt": "sse", "key": bridge.token},
                   headers={"x-bridge-session": session_id},
                   json={"contents": [{"role": "user", "parts": [{"text": "query key"}]}]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith("data: ")
    # The fake upstream checks its own key; the bridge token stayed behind.
    assert "x-goog-api-key" in r.headers["x-fake-received-headers"].split(",")
    assert r.headers["x-fake-received-query"] == "alt=sse"
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "ok" and rec["usage"]["output_tokens"] > 0
    assert bridge.token not in (bridge.log_path.read_text())


def test_stream_without_alt_sse_is_a_json_array_and_still_metered(bridge, session_id):
    url = f"{bridge.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    r = httpx.post(url, headers={"x-goog-api-key": bridge.token, "x-bridge-session": session_id},
                   json={"contents": [{"parts": [{"text": "array please"}]}]})
    assert r.status_code == 200, r.text
    chunks = r.json()
    assert isinstance(chunks, list) and len(chunks) > 1
    rec = bridge.wait_record(by_session(session_id))
    assert rec["usage"]["output_tokens"] == chunks[-1]["usageMetadata"]["candidatesTokenCount"]


def test_bad_request_and_unknown_method_answer_in_googles_format(bridge):
    h = {"x-goog-api-key": bridge.token}
    r = httpx.post(f"{bridge.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent",
                   headers=h, json={"nope": 1})
    assert r.status_code == 400
    assert r.json()["error"] == {"code": 400, "status": "INVALID_ARGUMENT",
                                 "message": "missing required field `contents`"}
    r = httpx.post(f"{bridge.url}/gemini/v1beta/models/a%2Fb:generateContent", headers=h, json={})
    assert r.status_code == 404
    assert r.json()["error"]["status"] == "NOT_FOUND"


def test_upstream_errors_surface_in_the_sdk_and_are_recorded(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "overloaded"})
    with pytest.raises(errors.ServerError) as e:
        c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 503 and e.value.status == "UNAVAILABLE"
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_error" and rec["status"] == 503


def test_error_chunk_mid_stream_is_recorded(bridge, session_id):
    c = client(bridge, session_id, **{"x-fake-error": "mid-stream"})
    try:
        for _ in c.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
            pass
    except errors.APIError:
        pass  # the SDK may raise the error chunk; the record must say so either way
    rec = bridge.wait_record(by_session(session_id))
    assert rec["outcome"] == "upstream_error"
    assert "UNAVAILABLE" in rec["error"]


def test_a_denied_model_gets_permission_denied_naming_the_policy(bridge):
    user = f"gus-{uuid.uuid4().hex[:8]}"
    token = bridge.create_key(user)
    bridge.cli("limits", "set", "--user", user, "--deny-models", "gemini-*-pro")
    c = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=f"{bridge.url}/gemini"))

    def refused():
        try:
            c.models.generate_content(model="gemini-2.5-pro", contents="x")
        except errors.ClientError as e:
            return e
        raise AssertionError("not refused yet")

    e = eventually(refused)
    assert e.code == 403 and e.status == "PERMISSION_DENIED"
    assert f"deny_models of user {user}" in e.message
    assert c.models.generate_content(model="gemini-2.5-flash", contents="x").text
    rec = bridge.wait_record(lambda r: r["user"] == user and r["status"] == 403)
    assert rec["outcome"] == "rejected" and rec["provider"] == "gemini"


def test_an_alias_is_sent_upstream_in_the_path(bridge):
    template = f"tpl-{uuid.uuid4().hex[:8]}"
    bridge.cli("limits", "set", "--template", template, "--alias", "gem-fast=gemini-2.5-flash")
    c = genai.Client(api_key=bridge.token, http_options=types.HttpOptions(
        base_url=f"{bridge.url}/gemini", headers={"x-bridge-template": template}))

    def aliased():
        r = c.models.generate_content(model="gem-fast", contents="hi")
        assert r.model_version == "gemini-2.5-flash", r.model_version
        return r

    eventually(aliased)


def test_a_used_up_budget_gets_resource_exhausted(bridge):
    user = f"gbud-{uuid.uuid4().hex[:8]}"
    token = bridge.create_key(user)
    bridge.cli("limits", "set", "--user", user, "--budget", "day=0.00001")
    c = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=f"{bridge.url}/gemini"))
    served, deadline = 0, time.time() + 15
    while True:
        try:
            c.models.generate_content(model="gemini-2.5-flash", contents="spend a little")
            served += 1
        except errors.ClientError as e:
            refused = e
            break
        assert time.time() < deadline, f"{served} requests and still not refused"
    assert served >= 1
    assert refused.code == 429 and refused.status == "RESOURCE_EXHAUSTED"
    assert f"day budget of user {user}" in refused.message and "is used up" in refused.message
    rec = bridge.wait_record(lambda r: r["user"] == user and r["status"] == 429)
    assert rec["outcome"] == "rejected" and rec["provider"] == "gemini"


def test_requests_per_minute_get_resource_exhausted_with_retry_after(bridge):
    user = f"grate-{uuid.uuid4().hex[:8]}"
    token = bridge.create_key(user)
    bridge.cli("limits", "set", "--user", user, "--requests-per-minute", "2")
    c = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=f"{bridge.url}/gemini"))
    served, deadline = 0, time.time() + 15
    while True:
        try:
            c.models.generate_content(model="gemini-2.5-flash", contents="x")
            served += 1
        except errors.ClientError as e:
            refused = e
            break
        assert time.time() < deadline, f"{served} requests and still not limited"
    assert refused.code == 429 and refused.status == "RESOURCE_EXHAUSTED"
    assert "requests_per_minute 2" in refused.message
    assert 1 <= int(refused.response.headers["retry-after"]) <= 60


def test_the_sdk_configured_by_environment_variables_reaches_bridge(bridge, session_id, monkeypatch):
    """What the README tells users: GOOGLE_GEMINI_BASE_URL and GEMINI_API_KEY, no code change."""
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"{bridge.url}/gemini")
    monkeypatch.setenv("GEMINI_API_KEY", bridge.token)
    c = genai.Client(http_options=types.HttpOptions(headers={"x-bridge-session": session_id}))
    assert c.models.generate_content(model="gemini-2.5-flash", contents="from env").text
    rec = bridge.wait_record(by_session(session_id))
    assert rec["provider"] == "gemini" and rec["prompt"] == "from env"


def test_the_provider_root_answers_probes(bridge):
    for path in ("/gemini", "/gemini/v1beta", "/gemini/v1/"):
        assert httpx.head(f"{bridge.url}{path}").status_code == 200, path
    r = httpx.get(f"{bridge.url}/gemini")
    assert r.json()["provider"] == "gemini"
