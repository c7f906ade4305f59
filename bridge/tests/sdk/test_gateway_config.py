"""Starting the bridge: config errors and unconfigured providers."""

import json
import subprocess
import time

import anthropic
import httpx
import openai
import pytest

from conftest import BRIDGE_BIN, free_port, wait_for_port


def test_config_error_names_file_line_column_and_field(tmp_path):
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:0\n"
        "providers:\n"
        "  openai:\n"
        "    base_url: http://127.0.0.1:1\n"
        "    api_key_env: BRIDGE_TEST_VARIABLE_THAT_IS_NOT_SET\n"
    )
    r = subprocess.run([BRIDGE_BIN, "serve", "--config", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=30)
    assert r.returncode != 0
    assert f"{cfg}:5:5: field `providers.openai.api_key_env`" in r.stderr
    assert "BRIDGE_TEST_VARIABLE_THAT_IS_NOT_SET" in r.stderr


def test_unknown_config_field_is_reported_with_its_line(tmp_path):
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text("listen: 127.0.0.1:0\nprovider:\n  openai: {}\n")
    r = subprocess.run([BRIDGE_BIN, "serve", "--config", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=30)
    assert r.returncode != 0
    assert f"{cfg}:2:" in r.stderr and "provider" in r.stderr


@pytest.fixture
def bare_bridge(tmp_path):
    """A bridge whose Anthropic upstream is a loopback port nobody listens on, and no OpenAI."""
    port = free_port()
    dead = free_port()
    store = f"sqlite://{tmp_path / 'b.db'}"
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {tmp_path / 'spool'}\n"
        f"providers:\n  anthropic:\n    base_url: http://127.0.0.1:{dead}\n    api_key: sk-ant-x\n"
    )
    token = subprocess.run([BRIDGE_BIN, "keys", "create", "--user", "carol", "--store", store],
                           capture_output=True, text=True, check=True).stdout.strip()
    log = open(tmp_path / "bridge.log", "w")
    p = subprocess.Popen([BRIDGE_BIN, "serve", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                         cwd=tmp_path)
    wait_for_port(port, p, "bridge")
    yield f"http://127.0.0.1:{port}", token, tmp_path / "bridge.log", store
    p.terminate()
    p.wait(timeout=15)
    log.close()


def test_unconfigured_provider_answers_503_in_its_own_format_and_is_logged(bare_bridge):
    url, token, log, _store = bare_bridge
    o = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        o.models.list()
    assert e.value.status_code == 503
    assert e.value.code == "provider_not_configured"
    assert "not configured" in e.value.message
    text = log.read_text()
    assert "provider not configured" in text and "openai" in text


def test_unreachable_upstream_answers_502_and_is_recorded_as_upstream_unavailable(bare_bridge):
    url, token, _log, store = bare_bridge
    a = anthropic.Anthropic(base_url=f"{url}/anthropic", api_key=token, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as e:
        a.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    assert e.value.body["type"] == "error"
    deadline = time.time() + 10
    while True:
        out = subprocess.run([BRIDGE_BIN, "interceptions", "list", "--format", "json", "--store", store],
                             capture_output=True, text=True, check=True).stdout
        # The intercept-start entry (`incomplete`) comes first; wait for the final record.
        recs = [r for r in json.loads(out) if r["outcome"] != "incomplete"]
        if recs:
            break
        assert time.time() < deadline, "no record of the failed request"
        time.sleep(0.1)
    assert recs[0]["outcome"] == "upstream_unavailable"
    assert recs[0]["status"] == 502
    assert recs[0]["user"] == "carol"


def test_base_url_may_point_at_an_upstream_gateway_under_a_path_prefix(tmp_path):
    """Upstream chaining: the bridge keeps the base_url's path and appends the API path to it."""
    from conftest import Bridge

    b = Bridge(tmp_path, upstream_prefix="/gateway/v2").start()
    try:
        a = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0)
        raw = a.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "chained?"}])
        assert raw.headers["x-fake-received-path"] == "/gateway/v2/anthropic/v1/messages"
        assert raw.parse().content[0].type == "text"
        o = openai.OpenAI(base_url=f"{b.url}/openai/v1", api_key=b.token, max_retries=0)
        raw = o.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "chained?"}])
        assert raw.headers["x-fake-received-path"] == "/gateway/v2/openai/v1/chat/completions"
        assert raw.parse().choices[0].message.content
        # Gemini names the model in the path: the prefix is kept before it as well.
        r = httpx.post(f"{b.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                       headers={"x-goog-api-key": b.token},
                       json={"contents": [{"parts": [{"text": "chained?"}]}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-fake-received-path"] == \
            "/gateway/v2/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    finally:
        b.stop()
