"""An agent session as a thread: the client's own session id, the tool results it sends back
(linked to the model's tool calls by id), `llm-bridge interceptions thread`, and rejected
requests as records — through the official SDKs."""

import json
import time
import uuid

import anthropic
import openai
import pytest

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def by_client_session(sid):
    return lambda r: r.get("client_session") == sid


def records_of(bridge, sid, n):
    """The `n` final records of client session `sid`, oldest first."""
    bridge.wait_record(by_client_session(sid))
    for _ in range(100):
        recs = [r for r in bridge.records() if r.get("client_session") == sid and r["outcome"] != "incomplete"]
        if len(recs) >= n:
            return sorted(recs, key=lambda r: r["started_at"])
        time.sleep(0.1)
    raise AssertionError(f"expected {n} records of {sid}, got {len(recs)}")


def test_a_claude_code_session_is_one_thread_with_each_tool_result_under_its_call(bridge):
    sid = str(uuid.uuid4())
    c = anthropic.Anthropic(base_url=f"{bridge.url}/anthropic", api_key=bridge.token, max_retries=0,
                            default_headers={"x-claude-code-session-id": sid})
    ask = [{"role": "user", "content": "What is the weather in Paris? use the weather tool"}]
    first = c.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[WEATHER_TOOL], messages=ask)
    call = next(b for b in first.content if b.type == "tool_use")
    big = "x" * 10_000
    follow = ask + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18°C and sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_other", "content": [{"type": "text", "text": big}],
             "is_error": True},
        ]},
    ]
    c.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[WEATHER_TOOL], messages=follow)

    r1, r2 = records_of(bridge, sid, 2)
    assert [t["id"] for t in r1["tool_calls"]] == [call.id]
    assert r1["tool_results"] == []
    assert r2["tool_results"][0] == {"id": call.id, "size": len("18°C and sunny".encode()),
                                     "content": "18°C and sunny", "is_error": False}
    # Size limits: the text is cut, its size kept.
    assert r2["tool_results"][1]["size"] == 10_000
    assert len(r2["tool_results"][1]["content"]) == 4096 and r2["tool_results"][1]["is_error"] is True
    # The user's prompt is still what they typed, not the tool result.
    assert r2["prompt"] == "What is the weather in Paris? use the weather tool"
    assert r1["client_addr"] == "127.0.0.1"

    thread = bridge.cli("interceptions", "thread", sid)
    assert "-> get_weather(" in thread, thread
    assert f"<- {call.id} (15 bytes): 18°C and sunny" in thread, thread
    assert thread.strip().splitlines()[-1].startswith("2 requests, $"), thread
    as_json = json.loads(bridge.cli("interceptions", "thread", sid, "--format", "json"))
    assert [r["id"] for r in as_json] == [r1["id"], r2["id"]]
    listed = json.loads(bridge.cli("interceptions", "list", "--client-session", sid, "--format", "json"))
    assert {r["id"] for r in listed} >= {r1["id"], r2["id"]}


def test_a_history_sent_again_does_not_record_old_tool_results_again(bridge):
    sid = str(uuid.uuid4())
    c = openai.OpenAI(base_url=f"{bridge.url}/openai/v1", api_key=bridge.token, max_retries=0,
                      default_headers={"session_id": sid})  # Codex's header
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER_FUNCTION])
    call = first.choices[0].message.tool_calls[0]
    msgs += [first.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "rainy, 11°C"}]
    second = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER_FUNCTION])
    # The next turn resends everything: only what is new since the model's last turn counts.
    msgs += [second.choices[0].message.model_dump(exclude_none=True),
             {"role": "user", "content": "thanks"}]
    c.chat.completions.create(model="gpt-4o", messages=msgs)

    r1, r2, r3 = records_of(bridge, sid, 3)
    assert [t["id"] for t in r1["tool_calls"]] == [call.id]
    assert [t["id"] for t in r2["tool_results"]] == [call.id]
    assert r2["tool_results"][0]["content"] == "rainy, 11°C"
    assert r3["tool_results"] == []


def test_responses_function_call_outputs_are_recorded_with_their_call_ids(bridge):
    sid = f"generic-{uuid.uuid4()}"
    c = openai.OpenAI(base_url=f"{bridge.url}/openai/v1", api_key=bridge.token, max_retries=0,
                      default_headers={"x-client-session-id": sid})
    c.responses.create(model="gpt-4.1", input=[
        {"role": "user", "content": "what is the weather?"},
        {"type": "function_call", "call_id": "call_abc", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_abc", "output": "windy"},
    ])
    (rec,) = records_of(bridge, sid, 1)
    assert rec["tool_results"] == [{"id": "call_abc", "size": 5, "content": "windy", "is_error": False}]


def test_a_wrong_token_is_a_rejected_record_with_its_source_and_token_prefix_only(bridge):
    bad = "brg_" + "z" * 40
    c = anthropic.Anthropic(base_url=f"{bridge.url}/anthropic", api_key=bad, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        c.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    for _ in range(100):
        rejected = json.loads(bridge.cli("interceptions", "list", "--outcome", "rejected", "--format", "json"))
        mine = [r for r in rejected if "brg_zzzz" in (r.get("error") or "")]
        if mine:
            break
        time.sleep(0.1)
    assert mine, rejected
    r = mine[0]
    assert r["outcome"] == "rejected" and r["status"] == 401
    assert r["client_addr"] == "127.0.0.1"
    assert bad not in json.dumps(r)
    assert all(x["outcome"] == "rejected" for x in rejected)
