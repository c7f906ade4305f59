"""Chargeback and audit from real SDK traffic: `llm-bridge usage` and `llm-bridge interceptions` over
what the SDKs did, and the bridge's log (one JSON line per request, no secrets even at trace
level). Each test runs its own bridge, so the counts are exact."""

import csv
import io
import json
import time
from datetime import datetime, timezone

import anthropic
import httpx
import openai
import pytest

from conftest import ANTHROPIC_KEY, OPENAI_KEY, Bridge

WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def wait_count(b: Bridge, n: int, timeout: float = 10.0) -> list:
    deadline = time.time() + timeout
    while True:
        # Final records only: a request's intercept-start entry (`incomplete`) comes first.
        recs = [r for r in b.records() if r["outcome"] != "incomplete"]
        if len(recs) >= n:
            assert len(recs) == n, recs
            return recs
        assert time.time() < deadline, f"{len(recs)} of {n} records after {timeout}s"
        time.sleep(0.1)


def traffic(b: Bridge, bob_token: str) -> None:
    """alice: Anthropic with a tool call, OpenAI chat; bob: OpenAI Responses stream, Anthropic haiku."""
    a = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0)
    msg = a.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[WEATHER],
                            messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    assert msg.stop_reason == "tool_use"
    o = openai.OpenAI(base_url=f"{b.url}/openai/v1", api_key=b.token, max_retries=0)
    o.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi from alice"}])
    o = openai.OpenAI(base_url=f"{b.url}/openai/v1", api_key=bob_token, max_retries=0)
    with o.responses.stream(model="gpt-4.1", input="hi from bob") as s:
        s.get_final_response()
    a = anthropic.Anthropic(base_url=f"{b.url}/anthropic", auth_token=bob_token, max_retries=0)
    a.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "haiku"}])


@pytest.fixture
def own_bridge(tmp_path):
    b = Bridge(tmp_path, log_level="trace").start()
    yield b
    b.stop()


def test_usage_reports_who_used_what_at_what_cost_in_every_grouping_and_format(own_bridge):
    b = own_bridge
    traffic(b, b.create_key("bob"))
    recs = wait_count(b, 4)
    cost = {u: sum(r["cost_usd"] for r in recs if r["user"] == u) for u in ("alice", "bob")}
    assert all(c > 0 for c in cost.values())

    by_user = json.loads(b.cli("usage", "--since", "7d", "--by", "user", "--format", "json"))
    assert by_user["group_by"] == "user"
    rows = {r["key"]: r for r in by_user["rows"]}
    assert set(rows) == {"alice", "bob"}
    for user in ("alice", "bob"):
        assert rows[user]["requests"] == 2
        assert rows[user]["cost_usd"] == pytest.approx(cost[user], rel=1e-9)
        assert rows[user]["input_tokens"] == sum(r["usage"]["input_tokens"] for r in recs if r["user"] == user)
    assert by_user["total"]["requests"] == 4

    by_model = list(csv.reader(io.StringIO(b.cli("usage", "--since", "24h", "--by", "model", "--format", "csv"))))
    assert by_model[0] == ["model", "requests", "input_tokens", "output_tokens", "cache_read_tokens",
                           "cache_write_tokens", "cost_usd", "unpriced_requests"]
    assert sorted(r[0] for r in by_model[1:-1]) == ["claude-haiku-4-5", "claude-sonnet-4-6", "gpt-4.1", "gpt-4o"]
    assert by_model[-1][0] == "TOTAL" and by_model[-1][1] == "4"

    table = b.cli("usage", "--since", "30m", "--by", "provider").splitlines()
    assert table[0].split()[0] == "PROVIDER"
    assert [l.split()[:2] for l in table[1:] if l.strip() and not set(l) <= set("-+ ")] == \
        [["anthropic", "2"], ["openai", "2"], ["TOTAL", "4"]]

    by_day = json.loads(b.cli("usage", "--by", "day", "--format", "json"))
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert [(r["key"], r["requests"]) for r in by_day["rows"]] == [(today, 4)]

    future = json.loads(b.cli("usage", "--since", "2099-01-01", "--format", "json"))
    assert future["rows"] == [] and future["total"]["requests"] == 0


def test_interceptions_show_the_prompt_the_tools_and_the_tool_calls(own_bridge):
    b = own_bridge
    traffic(b, b.create_key("bob"))
    wait_count(b, 4)
    bob = json.loads(b.cli("interceptions", "list", "--user", "bob", "--format", "json"))
    assert sorted(r["model"] for r in bob) == ["claude-haiku-4-5", "gpt-4.1"]
    listing = b.cli("interceptions", "list", "--since", "1h")
    assert len([l for l in listing.splitlines() if "alice" in l or "bob" in l]) == 4

    alice = json.loads(b.cli("interceptions", "list", "--user", "alice", "--format", "json"))
    tool_rec = next(r for r in alice if r["tool_calls"])
    shown = b.cli("interceptions", "show", tool_rec["id"][:13])
    assert "user:        alice" in shown
    assert "model:       claude-sonnet-4-6" in shown
    assert "tools offered: get_weather" in shown
    call = tool_rec["tool_calls"][0]
    assert f"  - get_weather ({call['id']}): " in shown and '"city":"Paris"' in shown
    assert shown.rstrip().endswith("What is the weather in Paris?")
    full = json.loads(b.cli("interceptions", "show", tool_rec["id"], "--format", "json"))
    assert full == tool_rec

    rows = list(csv.DictReader(io.StringIO(b.cli("interceptions", "list", "--format", "csv"))))
    assert len(rows) == 4
    row = next(r for r in rows if r["id"] == tool_rec["id"])
    assert row["user"] == "alice" and row["model"] == "claude-sonnet-4-6" and row["outcome"] == "ok"
    assert row["prompt"] == "What is the weather in Paris?"
    assert row["tools_offered"] == "get_weather"
    assert row["tool_calls"] == f"get_weather({call['arguments']})"
    assert float(row["cost_usd"]) == pytest.approx(tool_rec["cost_usd"], abs=1e-6)
    assert int(row["input_tokens"]) == tool_rec["usage"]["input_tokens"]


def test_log_has_one_json_line_per_request_and_no_secret_even_at_trace_level(own_bridge):
    b = own_bridge
    bob_token = b.create_key("bob")
    traffic(b, bob_token)
    # Refused attempts: their credentials must not be logged either.
    for headers in ({"x-api-key": "brg_wrong-secret-token-1"},
                    {"authorization": "Bearer sk-ant-user-pasted-their-provider-key"}):
        r = httpx.post(f"{b.url}/anthropic/v1/messages", headers={**headers, "anthropic-version": "2023-06-01"},
                       json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []})
        assert r.status_code == 401
    # Four answered requests and two failed authentications (recorded, with a token prefix).
    wait_count(b, 6)
    b.stop()
    text = b.log_path.read_text()
    for secret in (ANTHROPIC_KEY, OPENAI_KEY, b.token, bob_token, "brg_wrong-secret-token-1",
                   "sk-ant-user-pasted-their-provider-key"):
        assert secret not in text, f"{secret[:12]}… appears in the log"
        # Nor in a form a log shipper would decode.
        assert secret.encode().hex() not in text
    lines = [json.loads(l) for l in text.splitlines() if l.strip()]
    records = [l for l in lines if l.get("message") == "interception"]
    assert len(records) == 6
    rejected = [l for l in records if l["status"] == 401]
    assert len(rejected) == 2 and all(l["user"] == "-" and l["outcome"] == "rejected" for l in rejected)
    records = [l for l in records if l["status"] != 401]
    first = next(l for l in records if l["model"] == "claude-sonnet-4-6")
    assert first["user"] == "alice" and first["provider"] == "anthropic" and first["outcome"] == "ok"
    assert first["tool_calls"] == "get_weather" and first["tools_offered"] == "get_weather"
    assert first["prompt"] == "What is the weather in Paris?"
    assert first["input_tokens"] > 0 and first["cost_usd"] > 0
    failed = [l for l in lines if l.get("message") == "authentication failed"]
    assert len(failed) == 2
    for l in failed:
        assert l["client_addr"].startswith("127.0.0.1:") and l["path"] == "/anthropic/v1/messages"
        assert l["key_prefix"].endswith("…") and len(l["key_prefix"]) < 12
