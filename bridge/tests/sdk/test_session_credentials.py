"""Boundary session credentials (`x-bridge-session-token`) with the official SDKs.

An agent enrolled with `llm-bridge agents create` registers a session through the agent API;
the SDK then sends the session's credential as a header, as `boundary run` makes Claude Code
do through ANTHROPIC_CUSTOM_HEADERS. A valid credential attributes the request to the
enrolment's template and workspace; a tampered one is a 403 the SDK raises as
PermissionDeniedError, recorded as rejected; `control_plane.require_session` refuses requests
without one.
"""

import hashlib
import secrets
import time

import anthropic
import httpx
import openai
import pytest

from conftest import Bridge


def enrol(bridge, template, workspace):
    """An agent token for `template` (printed once on stdout)."""
    args = ["agents", "create", "--template", template, "--workspace", workspace]
    return bridge.cli(*args).strip().splitlines()[-1].strip()


def register_session(bridge, agent_token, session_id):
    """Registers a session as the agent does; returns the credential it would hand out."""
    credential = f"bnd_sess_{session_id}_{secrets.token_urlsafe(32)}"
    r = httpx.post(
        f"{bridge.url}/boundary/v1/sessions",
        headers={"authorization": f"Bearer {agent_token}", "x-boundary-agent-version": "0.1.0",
                 "x-boundary-agent-host": "sdk-test-host"},
        json={"session_id": session_id,
              "credential_sha256": hashlib.sha256(credential.encode()).hexdigest(),
              "user_name": "alice", "uid": 1000, "command": "python", "started_at": "2026-11-26T10:00:00Z"},
        timeout=10,
    )
    assert r.status_code == 204, r.text
    return credential


def anthropic_client(bridge, **headers):
    return anthropic.Anthropic(base_url=f"{bridge.url}/anthropic", api_key=bridge.token,
                               max_retries=0, default_headers=headers)


def ask(client):
    return client.messages.create(model="claude-sonnet-4-6", max_tokens=20,
                                  messages=[{"role": "user", "content": "hello from a governed session"}])


def test_a_valid_session_credential_records_the_enrolments_session_template_and_workspace(bridge):
    agent = enrol(bridge, "python-dev", "ws-7")
    sid = f"sess-valid-{time.time_ns()}"
    credential = register_session(bridge, agent, sid)
    # The client's own claims are not believed: the enrolment says who this is.
    c = anthropic_client(bridge, **{"x-bridge-session-token": credential, "x-bridge-session": sid,
                                    "x-bridge-template": "claimed", "x-bridge-workspace": "claimed"})
    msg = ask(c)
    assert msg.content[0].text.startswith("Hello from the fake upstream")
    rec = bridge.wait_record(lambda r: r["context"]["session"] == sid)
    assert rec["outcome"] == "ok" and rec["user"] == "alice"
    assert rec["context"] == {"workspace": "ws-7", "template": "python-dev", "session": sid}


def test_a_tampered_session_credential_is_a_403_permission_error_and_is_recorded_as_rejected(bridge):
    agent = enrol(bridge, "python-dev", "ws-7")
    sid = f"sess-tampered-{time.time_ns()}"
    credential = register_session(bridge, agent, sid)
    tampered = credential[:-4] + ("AAAA" if not credential.endswith("AAAA") else "BBBB")
    marker = f"tampered-{time.time_ns()}"
    c = anthropic_client(bridge, **{"x-bridge-session-token": tampered, "x-client-session-id": marker})
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        ask(c)
    assert e.value.status_code == 403
    assert "session credential invalid" in e.value.message
    rec = bridge.wait_record(lambda r: r.get("client_session") == marker)
    assert rec["outcome"] == "rejected" and rec["status"] == 403
    assert rec["error"].startswith("session credential")
    assert rec["context"]["session"] is None
    # The same in the OpenAI SDK's format.
    o = openai.OpenAI(base_url=f"{bridge.url}/openai/v1", api_key=bridge.token, max_retries=0,
                      default_headers={"x-bridge-session-token": tampered})
    with pytest.raises(openai.PermissionDeniedError) as e:
        o.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403
    assert "session credential invalid" in e.value.message


@pytest.fixture
def strict_bridge(tmp_path):
    b = Bridge(tmp_path)
    b.config.write_text(b.config.read_text() + "control_plane:\n  require_session: true\n")
    b.start()
    yield b
    b.stop()


def test_require_session_refuses_a_request_without_a_credential_and_admits_one_with_it(strict_bridge):
    b = strict_bridge
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        ask(anthropic_client(b))
    assert e.value.status_code == 403
    assert "AI traffic only from governed sessions" in e.value.message
    refused = b.wait_record(lambda r: r["outcome"] == "rejected")
    assert refused["error"].startswith("session credential required")
    agent = enrol(b, "python-dev", "ws-9")
    sid = f"sess-strict-{time.time_ns()}"
    credential = register_session(b, agent, sid)
    msg = ask(anthropic_client(b, **{"x-bridge-session-token": credential}))
    assert msg.content[0].text.startswith("Hello from the fake upstream")
    rec = b.wait_record(lambda r: r["context"]["session"] == sid)
    assert rec["context"]["template"] == "python-dev" and rec["context"]["workspace"] == "ws-9"
