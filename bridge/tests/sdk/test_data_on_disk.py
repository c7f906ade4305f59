"""What the official SDKs' requests leave on disk: a record in the store before the SDK call
returns (a report right after it counts it), and with `prompt_recording: redacted | none`, no
secret in the SQLite file (read directly) or the log."""

import json
import sqlite3
import subprocess

import anthropic
import openai
import pytest

from conftest import BRIDGE_BIN, Bridge

SECRETS = {
    "api_key": "sk-proj-Qw3rTy7uIoP9aSdFgHjKl0",
    "aws_access_key": "AKIAZ7EXAMPLEKEY1234",
    "github_token": "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "jwt": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ.aW52YWxpZC1zaWduYXR1cmUtaGVyZQ",
    "bearer_token": "Bearer tok3n.V4lue-Not_For-Logs",
}


def secret_prompt() -> str:
    return ("What is the weather in Paris? Debug this: curl -H 'Authorization: "
            f"{SECRETS['bearer_token']}' with OPENAI_API_KEY={SECRETS['api_key']}, "
            f"aws {SECRETS['aws_access_key']}, gh {SECRETS['github_token']}, jwt {SECRETS['jwt']}")


def start(tmp_path, mode):
    # Read-after-write on: the tests read the store right after each call.
    b = Bridge(tmp_path)
    b.config.write_text(b.config.read_text() + f"prompt_recording: {mode}\nlimits: {{ record_wait_ms: 5000 }}\n")
    return b.start()


def stored(b):
    with sqlite3.connect(b.db) as db:
        return db.execute("SELECT user_name, prompt, tool_calls FROM interceptions "
                          "WHERE outcome = 'ok' ORDER BY started_at").fetchall()


def send_both(b):
    tools = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]
    a = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0)
    a.messages.create(model="claude-sonnet-4-6", max_tokens=64, tools=tools,
                      messages=[{"role": "user", "content": secret_prompt()}])
    o = openai.OpenAI(base_url=f"{b.url}/openai/v1", api_key=b.token, max_retries=0)
    stream = o.chat.completions.create(model="gpt-4.1", stream=True,
                                       messages=[{"role": "user", "content": secret_prompt()}])
    for _ in stream:
        pass


def everything_on_disk(b) -> str:
    b.stop()  # a clean stop: everything that will be written is written
    text = b.log_path.read_text()
    for f in b.tmp.rglob("*"):
        if f.is_file() and f.name != "bridge.log":
            text += f.read_bytes().decode("utf-8", "replace")
    return text


def test_a_report_right_after_an_sdk_call_counts_it(tmp_path):
    """Each SDK call, streaming or not, is in the store when it returns. Streaming SDKs stop
    reading at the terminal event (`message_stop`, `[DONE]`, `response.completed`), before the
    HTTP body ends: with `limits.record_wait_ms` the bridge holds that event until the record
    is stored."""
    b = Bridge(tmp_path)
    b.config.write_text(b.config.read_text() + "limits: { record_wait_ms: 5000 }\n")
    b.start()
    try:
        a = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0)
        o = openai.OpenAI(base_url=f"{b.url}/openai/v1", api_key=b.token, max_retries=0)
        hi = [{"role": "user", "content": "hi"}]

        def anthropic_stream():
            with a.messages.stream(model="claude-sonnet-4-6", max_tokens=16, messages=hi) as s:
                s.get_final_message()

        def chat_stream():
            for _ in o.chat.completions.create(model="gpt-4.1", stream=True, messages=hi):
                pass

        def responses_stream():
            for _ in o.responses.create(model="gpt-4.1", input="hi", stream=True):
                pass

        calls = [
            lambda: a.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=hi),
            anthropic_stream,
            lambda: o.chat.completions.create(model="gpt-4.1", messages=hi),
            chat_stream,
            lambda: o.responses.create(model="gpt-4.1", input="hi"),
            responses_stream,
        ]
        n = 0
        for _round in range(5):
            for call in calls:
                call()
                n += 1
                with sqlite3.connect(b.db) as db:
                    stored_now = db.execute("SELECT COUNT(*) FROM interceptions").fetchone()[0]
                assert stored_now == n, (call, stored_now, n)
        report = json.loads(b.cli("usage", "--by", "user", "--format", "json"))
        assert report["total"]["requests"] == n, report
    finally:
        b.stop()


def test_redacted_records_keep_the_prompt_without_its_secrets(tmp_path):
    b = start(tmp_path, "redacted")
    send_both(b)
    rows = stored(b)
    assert len(rows) == 2, rows
    for _user, prompt, _calls in rows:
        assert prompt.startswith("What is the weather in Paris?"), prompt
        for kind in SECRETS:
            assert f"[REDACTED:{kind}]" in prompt, (kind, prompt)
    disk = everything_on_disk(b)
    for kind, secret in SECRETS.items():
        token = secret.split()[-1]
        assert token not in disk, f"{kind} found on disk"


def test_no_prompt_recording_keeps_usage_and_tool_names_only(tmp_path):
    b = start(tmp_path, "none")
    send_both(b)
    rows = stored(b)
    assert len(rows) == 2, rows
    assert all(prompt is None for _u, prompt, _c in rows), rows
    calls = json.loads(rows[0][2])
    assert [c["name"] for c in calls] == ["get_weather"] and calls[0]["arguments"] == ""
    report = json.loads(b.cli("usage", "--by", "user", "--format", "json"))
    assert report["total"]["requests"] == 2 and report["total"]["input_tokens"] > 0
    disk = everything_on_disk(b)
    assert "weather in Paris" not in disk
    for secret in SECRETS.values():
        assert secret.split()[-1] not in disk


def test_a_bad_prompt_recording_is_refused_with_its_line(tmp_path):
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text("listen: 127.0.0.1:0\nprompt_recording: partial\n")
    r = subprocess.run([BRIDGE_BIN, "serve", "--config", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=30)
    assert r.returncode != 0
    assert f"{cfg}:2:" in r.stderr and "partial" in r.stderr and "redacted" in r.stderr, r.stderr
