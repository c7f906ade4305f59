"""Model policy through the official SDKs: limits set with `llm-bridge limits`, enforced by a
running gateway within its refresh interval, refused in each provider's own error format."""

import time
import uuid

import anthropic
import openai
import pytest


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


def test_a_denied_model_gets_the_anthropic_permission_error_naming_the_policy(bridge):
    user = f"gina-{uuid.uuid4().hex[:8]}"
    token = bridge.create_key(user)
    bridge.cli("limits", "set", "--user", user, "--deny-models", "claude-opus-*")
    c = anthropic.Anthropic(base_url=f"{bridge.url}/anthropic", api_key=token, max_retries=0)

    def refused():
        try:
            c.messages.create(model="claude-opus-4-8", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        except anthropic.PermissionDeniedError as e:
            return e
        raise AssertionError("not refused yet")

    e = eventually(refused)
    assert e.status_code == 403
    assert e.body["error"]["type"] == "permission_error"
    assert f"deny_models of user {user}" in e.message
    # Other models still work, and the refusal is a record.
    ok = c.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert ok.content
    rec = bridge.wait_record(lambda r: r["user"] == user and r["status"] == 403)
    assert rec["outcome"] == "rejected" and "claude-opus-*" in rec["error"]


def test_a_template_alias_sends_the_pinned_model_and_an_allow_list_refuses_the_rest(bridge):
    template = f"tpl-{uuid.uuid4().hex[:8]}"
    bridge.cli("limits", "set", "--template", template, "--alias", "fast=gpt-4o-mini",
               "--allow-models", "gpt-4o-mini,gpt-4.1")
    c = openai.OpenAI(base_url=f"{bridge.url}/openai/v1", api_key=bridge.token, max_retries=0,
                      default_headers={"x-bridge-template": template})

    def aliased():
        r = c.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
        assert r.model == "gpt-4o-mini", r.model
        return r

    eventually(aliased)
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403
    assert e.value.body["code"] == "model_not_allowed"
    assert f"allow_models of template {template}" in e.value.body["message"]
    # Without the template header the template's limits do not apply.
    plain = openai.OpenAI(base_url=f"{bridge.url}/openai/v1", api_key=bridge.token, max_retries=0)
    assert plain.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}]).choices

    explained = bridge.cli("limits", "explain", "--user", "alice", "--template", template, "--model", "fast")
    assert "fast: allowed as gpt-4o-mini" in explained, explained


def test_a_used_up_budget_refuses_the_next_request_in_each_providers_format_and_a_stream_finishes(bridge):
    user = f"bud-{uuid.uuid4().hex[:8]}"
    token = bridge.create_key(user)
    # One fake-upstream answer costs about $0.0002 on claude-sonnet-4-6.
    bridge.cli("limits", "set", "--user", user, "--budget", "day=0.0003")
    a = anthropic.Anthropic(base_url=f"{bridge.url}/anthropic", api_key=token, max_retries=0)
    o = openai.OpenAI(base_url=f"{bridge.url}/openai/v1", api_key=token, max_retries=0)
    finished = 0
    deadline = time.time() + 15
    while True:
        try:
            with a.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                   messages=[{"role": "user", "content": "stream a few words"}]) as s:
                final = s.get_final_message()
            # A stream that crosses the budget mid-way still finishes whole.
            assert final.stop_reason == "end_turn" and final.content
            finished += 1
        except anthropic.APIStatusError as e:
            refused = e
            break
        assert time.time() < deadline, f"{finished} requests and still not refused"
    assert finished >= 2, "the budget was used up by at least two requests"
    assert refused.status_code == 402
    assert refused.body["error"]["type"] == "billing_error"
    assert f"day budget of user {user}" in refused.message and "is used up" in refused.message
    # The OpenAI side of the same user: 429 insufficient_quota, as OpenAI says it.
    with pytest.raises(openai.RateLimitError) as e:
        o.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "insufficient_quota"
    # Raising the budget lets the user through again within the refresh interval.
    bridge.cli("limits", "set", "--user", user, "--budget", "day=100")
    def through_again():
        try:
            a.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        except anthropic.APIStatusError as err:
            raise AssertionError(str(err))

    eventually(through_again)
    explained = bridge.cli("limits", "explain", "--user", user)
    assert "budget/day" in explained and "of $100 spent by user " + user in explained, explained


def test_requests_per_minute_get_a_429_with_retry_after_in_the_providers_format(bridge):
    user = f"rate-{uuid.uuid4().hex[:8]}"
    token = bridge.create_key(user)
    bridge.cli("limits", "set", "--user", user, "--requests-per-minute", "3")
    a = anthropic.Anthropic(base_url=f"{bridge.url}/anthropic", api_key=token, max_retries=0)
    served, deadline = 0, time.time() + 15
    while True:
        try:
            a.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
            served += 1
        except anthropic.RateLimitError as e:
            refused = e
            break
        assert time.time() < deadline, f"{served} requests and still not limited"
    assert refused.status_code == 429
    assert refused.body["error"]["type"] == "rate_limit_error"
    assert "requests_per_minute 3" in refused.message
    retry_after = int(refused.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    # The OpenAI SDK of the same user: its own 429 format, same window.
    o = openai.OpenAI(base_url=f"{bridge.url}/openai/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        o.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "rate_limit_exceeded"
    rec = bridge.wait_record(lambda r: r["user"] == user and r["status"] == 429)
    assert rec["outcome"] == "rejected"


def test_a_concurrency_limit_refuses_a_second_request_while_the_first_streams(bridge):
    import threading
    user = f"conc-{uuid.uuid4().hex[:8]}"
    token = bridge.create_key(user)
    bridge.cli("limits", "set", "--user", user, "--concurrent-requests", "1")
    a = anthropic.Anthropic(base_url=f"{bridge.url}/anthropic", api_key=token, max_retries=0)

    def slow():
        # Holds the stream open for 3 s after its first event.
        with a.messages.stream(model="claude-sonnet-4-6", max_tokens=20,
                               messages=[{"role": "user", "content": "slow"}],
                               extra_headers={"x-fake-hold-ms": "3000"}) as s:
            s.get_final_message()

    def refused_while_one_streams():
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        try:
            a.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
            raise AssertionError("second request admitted")
        except anthropic.RateLimitError as e:
            return e
        finally:
            t.join()

    e = eventually(refused_while_one_streams, timeout=20)
    assert "concurrent_requests" in e.message
    assert e.response.headers["retry-after"] == "1"
    # Once the stream is over, the slot is free again.
    assert a.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_budget_notices_reach_a_webhook_at_each_threshold(tmp_path):
    import http.server
    import json as jsonlib
    import threading
    import urllib.request

    from conftest import Bridge, free_port

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(jsonlib.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    hook_port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", hook_port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    b = Bridge(tmp_path)
    b.config.write_text(b.config.read_text() +
                        f"budget_notices:\n  thresholds: [50, 100]\n  webhook: http://127.0.0.1:{hook_port}/notices\n")
    b.cli("limits", "set", "--user", "nora", "--budget", "day=0.0004")
    b.start()
    try:
        token = b.create_key("nora")
        a = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=token, max_retries=0)
        deadline = time.time() + 15
        while True:
            try:
                a.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
            except anthropic.APIStatusError as e:
                assert e.status_code == 402
                break
            assert time.time() < deadline
        eventually(lambda: assert_percents(received, {50.0, 100.0}))
        n = next(r for r in received if r["percent"] == 100.0)
        assert n["spender"] == "user nora" and n["period"] == "day" and n["budget_usd"] == 0.0004
        assert n["spent_usd"] >= 0.0004 and n["shared"] is False
        metrics = urllib.request.urlopen(f"{b.url}/metrics").read().decode()
        assert 'bridge_budget_notices_total{percent="100"} 1' in metrics, metrics
    finally:
        b.stop()
        server.shutdown()


def assert_percents(received, want):
    assert {r["percent"] for r in received} == want, received
