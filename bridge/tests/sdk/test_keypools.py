"""Provider key pools through the official SDKs: two keys per provider (`providers.*.keys`),
the fake upstream switched while the bridge runs (`POST /fake/keys`) so that one key starts
answering 429. Every SDK call still succeeds, through the other key; after three failures in
a row the failing key's circuit breaker opens and the key is skipped; once its open period
(30 s) is over and the key answers again, one probe closes the breaker. Each step is checked
through the SDK's result and through Bridge's /metrics per-key series, which name keys and
never show their values.

The SDKs' own retries are off (`max_retries=0`): a 429 reaching the client would fail the
call instead of being hidden by a retry.
"""

import re
import time

import anthropic
import httpx
import openai
import pytest

from conftest import Bridge

KEYS = {
    "anthropic": {"main": "sk-ant-pool-main-key", "backup": "sk-ant-pool-backup-key"},
    "openai": {"main": "sk-openai-pool-main-key", "backup": "sk-openai-pool-backup-key"},
}
OPEN_FOR = 30.0  # keypool::OPEN_FOR
FAILURES_TO_OPEN = 3  # keypool::FAILURES_TO_OPEN


class PoolBridge(Bridge):
    """The conftest bridge with a pool of two keys for Anthropic and for OpenAI."""

    def __init__(self, tmp):
        super().__init__(tmp)
        up = f"http://127.0.0.1:{self.upstream_port}"
        pools = "".join(
            f"  {provider}:\n    base_url: {up}\n    keys:\n"
            + "".join(f"      - {{ name: {name}, api_key: {value} }}\n" for name, value in keys.items())
            for provider, keys in KEYS.items()
        )
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\nstore: {self.store}\nspool_dir: {tmp / 'spool'}\n"
            f"providers:\n{pools}"
        )
        self.opened_at = {}

    def start(self):
        super().start()
        for keys in KEYS.values():
            for value in keys.values():
                self.switch(value, "ok")
        return self

    def switch(self, key, answer, retry_after=None):
        """What the fake upstream answers to requests carrying `key`: "ok", a status, None."""
        body = {"key": key, "answer": answer}
        if retry_after is not None:
            body["retry_after"] = retry_after
        r = httpx.post(f"http://127.0.0.1:{self.upstream_port}/fake/keys", json=body)
        assert r.status_code == 200, r.text

    def metrics(self):
        r = httpx.get(f"{self.url}/metrics")
        assert r.status_code == 200
        return r.text

    def attempts(self, provider, key, outcome):
        m = re.search(
            rf'^bridge_upstream_key_attempts_total\{{provider="{provider}",key="{key}",outcome="{outcome}"\}} (\d+)$',
            self.metrics(), re.M)
        return int(m.group(1)) if m else 0

    def breaker(self, provider, key):
        m = re.search(
            rf'^bridge_upstream_key_breaker\{{provider="{provider}",key="{key}",state="(\w+)"\}} 1$',
            self.metrics(), re.M)
        return m.group(1) if m else None


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    b = PoolBridge(tmp_path_factory.mktemp("keypools")).start()
    yield b
    b.stop()


def ask_anthropic(b, text):
    c = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0)
    msg = c.messages.create(model="claude-sonnet-4-6", max_tokens=20,
                            messages=[{"role": "user", "content": text}])
    return "".join(block.text for block in msg.content if block.type == "text")


def ask_openai(b, text):
    c = openai.OpenAI(base_url=f"{b.url}/openai/v1", api_key=b.token, max_retries=0)
    r = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}])
    return r.choices[0].message.content


ASK = {"anthropic": ask_anthropic, "openai": ask_openai}


def fail_over_and_open(b, provider):
    """Both keys serve; then `main` starts answering 429 and every call still succeeds through
    `backup` while `main` is tried until its breaker opens."""
    ask = ASK[provider]
    for i in range(4):
        assert ask(b, f"warm-up {i}")
    # Round robin: both keys answered.
    assert b.attempts(provider, "main", "answered") >= 1
    assert b.attempts(provider, "backup", "answered") >= 1
    assert b.breaker(provider, "main") == "closed"

    b.switch(KEYS[provider]["main"], 429)
    backup_before = b.attempts(provider, "backup", "answered")
    n = 8
    for i in range(n):
        # The SDK gets the answer, not the 429: the bridge failed over to the other key.
        assert ask(b, f"during the outage {i}")
    b.opened_at[provider] = time.time()
    assert b.attempts(provider, "main", "throttled") == FAILURES_TO_OPEN
    assert b.breaker(provider, "main") == "open"
    assert b.attempts(provider, "backup", "answered") == backup_before + n
    # While open, the key is not tried at all.
    for i in range(3):
        assert ask(b, f"while open {i}")
    assert b.attempts(provider, "main", "throttled") == FAILURES_TO_OPEN
    text = b.metrics()
    for keys in KEYS.values():
        for value in keys.values():
            assert value not in text, "a key's value in /metrics"


def test_the_anthropic_sdk_is_answered_through_the_other_key_when_one_starts_answering_429(pool):
    fail_over_and_open(pool, "anthropic")


def test_the_openai_sdk_is_answered_through_the_other_key_when_one_starts_answering_429(pool):
    fail_over_and_open(pool, "openai")


def test_an_open_breaker_closes_after_its_open_period_once_the_key_answers_again(pool):
    for provider in KEYS:
        if pool.breaker(provider, "main") != "open":
            fail_over_and_open(pool, provider)
        pool.switch(KEYS[provider]["main"], "ok")
    # Still open before the period is over: main is skipped although it would answer.
    for provider, ask in ASK.items():
        before = pool.attempts(provider, "main", "answered")
        assert ask(pool, "still open")
        assert pool.attempts(provider, "main", "answered") == before
    wait = max(pool.opened_at.values()) + OPEN_FOR + 0.5 - time.time()
    if wait > 0:
        time.sleep(wait)
    for provider, ask in ASK.items():
        before = pool.attempts(provider, "main", "answered")
        # The next call that starts with main (round robin) probes it, and the probe closes
        # it. (A half-open key handed out as a fallback counts as probing for a second even
        # when the first key answered, so the probe may come a call or two later.)
        deadline = time.time() + 10
        while pool.attempts(provider, "main", "answered") == before and time.time() < deadline:
            assert ask(pool, "after the open period")
            time.sleep(0.3)
        assert pool.attempts(provider, "main", "answered") == before + 1
        assert pool.breaker(provider, "main") == "closed"
        assert pool.attempts(provider, "main", "throttled") == FAILURES_TO_OPEN
        # Closed again: main is back in the rotation.
        for i in range(2):
            assert ask(pool, f"closed again {i}")
        assert pool.attempts(provider, "main", "answered") == before + 2
