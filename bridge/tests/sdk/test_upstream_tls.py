"""The official SDKs through Bridge to an HTTPS upstream (the fake upstream in TLS mode).

A test CA and certificates for 127.0.0.1 only are made with the `openssl` command (installed
with ca-certificates); Bridge trusts the CA through `upstream_tls.ca_file`. The Anthropic
upstream has a certificate from that CA and answers; the OpenAI upstream has one from another
CA, and the SDK gets a 502 that names certificate verification.
"""

import subprocess

import anthropic
import openai
import pytest

from conftest import (ANTHROPIC_KEY, BRIDGE_BIN, FAKE_BIN, OPENAI_KEY, free_port,
                      wait_for_port)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return d / f"{name}.pem"


def issue(d, ca, stem):
    """A server certificate for 127.0.0.1 (an IP SAN: no name is ever resolved)."""
    (d / f"{stem}.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{stem}.pem", "-days", "1", "-extfile", f"{stem}.ext", cwd=d)
    return d / f"{stem}.pem", d / f"{stem}.key"


@pytest.fixture
def tls_bridge(tmp_path):
    trusted = make_ca(tmp_path, "trusted-ca")
    make_ca(tmp_path, "stranger-ca")
    procs, logs = [], []

    def start(args, port, what):
        log = open(tmp_path / f"{what}.log", "w")
        logs.append(log)
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs.append(p)
        wait_for_port(port, p, what)

    ports = {}
    for name, ca in [("good", "trusted-ca"), ("stranger", "stranger-ca")]:
        cert, key = issue(tmp_path, ca, name)
        ports[name] = free_port()
        start([FAKE_BIN, "--listen", f"127.0.0.1:{ports[name]}", "--anthropic-key", ANTHROPIC_KEY,
               "--openai-key", OPENAI_KEY, "--tls-cert", str(cert), "--tls-key", str(key)],
              ports[name], f"fake-{name}")
    port = free_port()
    store = f"sqlite://{tmp_path / 'b.db'}"
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {tmp_path / 'spool'}\n"
        f"upstream_tls:\n  ca_file: {trusted}\n"
        "providers:\n"
        f"  anthropic:\n    base_url: https://127.0.0.1:{ports['good']}\n    api_key: {ANTHROPIC_KEY}\n"
        f"  openai:\n    base_url: https://127.0.0.1:{ports['stranger']}\n    api_key: {OPENAI_KEY}\n"
    )
    token = subprocess.run([BRIDGE_BIN, "keys", "create", "--user", "tina", "--store", store],
                           capture_output=True, text=True, check=True).stdout.strip()
    start([BRIDGE_BIN, "serve", "--config", str(cfg)], port, "bridge")
    yield f"http://127.0.0.1:{port}", token
    for p in reversed(procs):
        p.terminate()
        p.wait(timeout=15)
    for log in logs:
        log.close()


def test_the_anthropic_sdk_is_answered_through_an_https_upstream_whose_ca_is_configured(tls_bridge):
    url, token = tls_bridge
    c = anthropic.Anthropic(base_url=f"{url}/anthropic", api_key=token, max_retries=0)
    kw = dict(model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "over tls"}])
    m = c.messages.create(**kw)
    assert m.content[0].text == "Hello from the fake upstream. You said: over tls"
    with c.messages.stream(**kw) as s:
        assert s.get_final_text() == "Hello from the fake upstream. You said: over tls"


def test_the_openai_sdk_gets_a_502_naming_certificate_verification_for_an_untrusted_upstream(tls_bridge):
    url, token = tls_bridge
    c = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502
    assert e.value.code == "upstream_unavailable"
    assert "TLS certificate verification failed" in e.value.message
    assert "UnknownIssuer" in e.value.message
