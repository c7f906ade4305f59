"""Fixtures for Bridge's end-to-end tests with the official Python SDKs.

Builds nothing: `cargo xtask test` (or `cargo build -p bridge --bins`) builds first. The
binaries come from BRIDGE_BIN / FAKE_UPSTREAM_BIN, defaulting to debug/ in cargo's target dir
(CARGO_TARGET_DIR and build.target-dir respected). Everything listens on 127.0.0.1 on free
ports; the store is a temp SQLite file; nothing leaves loopback.
"""

import json
import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

try:  # newer SDKs ship their own fork of httpx
    import httpx2
except ImportError:
    httpx2 = None

# What the SDKs raise when a stream's connection is cut mid-body: the HTTP layer's
# RemoteProtocolError (the Anthropic SDK lets it through; the OpenAI SDK wraps it in
# openai.APIConnectionError), from whichever of httpx and httpx2 the installed SDK uses.
REMOTE_PROTOCOL_ERRORS = tuple(m.RemoteProtocolError for m in (httpx, httpx2) if m is not None)

REPO = Path(__file__).resolve().parents[3]


def cargo_target_dir() -> Path:
    """Where cargo builds (CARGO_TARGET_DIR, build.target-dir or ./target), as cargo says."""
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, capture_output=True, check=True, text=True,
        )
        return Path(json.loads(out.stdout)["target_directory"])
    except (OSError, subprocess.CalledProcessError, KeyError, ValueError):
        return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


if "BRIDGE_BIN" in os.environ and "FAKE_UPSTREAM_BIN" in os.environ:
    BRIDGE_BIN = os.environ["BRIDGE_BIN"]
    FAKE_BIN = os.environ["FAKE_UPSTREAM_BIN"]
else:
    _DEBUG = cargo_target_dir() / "debug"
    BRIDGE_BIN = os.environ.get("BRIDGE_BIN", str(_DEBUG / "llm-bridge"))
    FAKE_BIN = os.environ.get("FAKE_UPSTREAM_BIN", str(_DEBUG / "fake-upstream"))

ANTHROPIC_KEY = "sk-ant-server-side-key-for-tests"
OPENAI_KEY = "sk-openai-server-side-key-for-tests"
GEMINI_KEY = "gemini-server-side-key-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


class Bridge:
    """A running bridge + fake upstream, with helpers to read what the bridge recorded."""

    def __init__(self, tmp: Path, upstream_prefix: str = "", log_level: str = "info"):
        """`upstream_prefix` mounts the upstream under a path, as an existing LLM gateway is;
        `log_level` is the bridge's RUST_LOG."""
        self.tmp = tmp
        self.log_level = log_level
        self.db = tmp / "bridge.db"
        self.store = f"sqlite://{self.db}"
        self.upstream_port = free_port()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "bridge.yaml"
        upstream = f"http://127.0.0.1:{self.upstream_port}"
        anthropic_url = f"{upstream}{upstream_prefix}/anthropic" if upstream_prefix else upstream
        openai_url = f"{upstream}{upstream_prefix}/openai" if upstream_prefix else upstream
        gemini_url = f"{upstream}{upstream_prefix}/gemini" if upstream_prefix else upstream
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"store: {self.store}\n"
            f"spool_dir: {tmp / 'spool'}\n"
            "providers:\n"
            "  anthropic:\n"
            f"    base_url: {anthropic_url}\n"
            "    api_key_env: TEST_ANTHROPIC_KEY\n"
            # The fake upstream's steering headers are not in the bridge's allowlist.
            "    forward_headers: [x-fake-*]\n"
            "  openai:\n"
            f"    base_url: {openai_url}\n"
            f"    api_key: {OPENAI_KEY}\n"
            "    forward_headers: [x-fake-*]\n"
            "  gemini:\n"
            f"    base_url: {gemini_url}\n"
            f"    api_key: {GEMINI_KEY}\n"
            "    forward_headers: [x-fake-*]\n"
        )
        self.procs = []

    def start(self):
        env = dict(os.environ, TEST_ANTHROPIC_KEY=ANTHROPIC_KEY, RUST_LOG=self.log_level)
        self.token = self.create_key("alice")
        self.fake_log = open(self.tmp / "fake.log", "w")
        fake = subprocess.Popen(
            [FAKE_BIN, "--listen", f"127.0.0.1:{self.upstream_port}",
             "--anthropic-key", ANTHROPIC_KEY, "--openai-key", OPENAI_KEY,
             "--gemini-key", GEMINI_KEY],
            stdout=self.fake_log, stderr=subprocess.STDOUT,
        )
        self.procs.append(fake)
        wait_for_port(self.upstream_port, fake, "fake-upstream")
        self.log_path = self.tmp / "bridge.log"
        self.log = open(self.log_path, "w")
        bridge = subprocess.Popen(
            [BRIDGE_BIN, "serve", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp,
        )
        self.procs.append(bridge)
        wait_for_port(self.port, bridge, "bridge")
        return self

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()
        self.fake_log.close()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [BRIDGE_BIN, *args, "--store", self.store],
            check=True, capture_output=True, text=True, cwd=self.tmp,
        )
        return out.stdout

    def create_key(self, user: str) -> str:
        return self.cli("keys", "create", "--user", user).strip().splitlines()[-1].strip()

    def revoke_key_of(self, user: str) -> None:
        keys = json.loads(self.cli("keys", "list", "--format", "json"))
        for k in keys:
            if k["user"] == user and not k.get("revoked_at"):
                self.cli("keys", "revoke", k["id"])

    def records(self) -> list:
        """All interception records, newest first, as the CLI reports them."""
        return json.loads(self.cli("interceptions", "list", "--format", "json", "--limit", "1000"))

    def wait_record(self, pred, timeout: float = 10.0) -> dict:
        """The first final record matching `pred`, waiting for the recorder to flush it (a
        request's intercept-start entry, outcome `incomplete`, is in the store before it)."""
        deadline = time.time() + timeout
        seen = []
        while time.time() < deadline:
            seen = self.records()
            for r in seen:
                if r.get("outcome") != "incomplete" and pred(r):
                    return r
            time.sleep(0.1)
        raise AssertionError(f"no matching record within {timeout}s; records: {json.dumps(seen, indent=1)[:4000]}")


@pytest.fixture(scope="session")
def bridge(tmp_path_factory):
    for b in (BRIDGE_BIN, FAKE_BIN):
        if not Path(b).exists():
            pytest.fail(f"{b} not built: run `cargo build -p bridge --bins` first")
    b = Bridge(tmp_path_factory.mktemp("bridge")).start()
    yield b
    b.stop()


@pytest.fixture
def session_id(request):
    """A unique x-bridge-session per test, to find this test's records."""
    return f"{request.node.name}-{time.time_ns()}"
