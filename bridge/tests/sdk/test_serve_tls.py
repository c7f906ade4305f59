"""Bridge serving HTTPS itself (`tls:` in bridge.yaml), used through the official SDKs.

A test CA and a server certificate for 127.0.0.1 and localhost are made with the `openssl`
command. The Anthropic and OpenAI SDKs, with an HTTP client that trusts the CA, get answers
(streaming too); a client that does not trust it fails the handshake. Reload: new certificate
files are served within the documented interval (the files are checked every 2 s) without a
restart, and a broken pair (a key that does not match) keeps the last good certificate and is
logged with the file. Only 127.0.0.1 is ever connected to; no name is resolved.
"""

import hashlib
import json
import os
import socket
import ssl
import subprocess
import time

import anthropic
import openai
import pytest

from conftest import Bridge

# tls::RELOAD_CHECK_INTERVAL, as the README documents it.
RELOAD_CHECK_SECONDS = 2


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return d / f"{name}.pem"


def issue(d, ca, stem, rsa=False):
    """A server certificate for 127.0.0.1 and localhost, signed by `ca`; EC P-256, or RSA
    (PKCS#8 key) with `rsa`."""
    (d / f"{stem}.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    key = ["rsa:2048"] if rsa else ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    openssl("req", "-newkey", *key, "-nodes", "-keyout", f"{stem}.key", "-out", f"{stem}.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{stem}.pem", "-days", "1", "-extfile", f"{stem}.ext", cwd=d)
    return d / f"{stem}.pem", d / f"{stem}.key"


def trusting(ca_pem):
    """What an SDK's HTTP client is given to trust exactly this CA (`verify=`)."""
    return ssl.create_default_context(cafile=str(ca_pem))


def served_cert_sha256(port):
    """SHA-256 of the certificate the server presents now (no verification: just look)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def file_cert_sha256(pem_path):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem_path.read_text())).hexdigest()


def replace_file(path, data):
    """Write-then-rename, as certbot and Kubernetes do: a reader never sees half a file."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TlsBridge(Bridge):
    """The conftest bridge (fake upstream, SQLite) with `tls:` added to its config."""

    def __init__(self, tmp):
        super().__init__(tmp)
        self.ca = make_ca(tmp, "test-ca")
        self.cert, self.key = issue(tmp, "test-ca", "server")
        # The files Bridge serves, which the reload tests replace.
        self.cert_file, self.key_file = tmp / "tls-cert.pem", tmp / "tls-key.pem"
        self.cert_file.write_bytes(self.cert.read_bytes())
        self.key_file.write_bytes(self.key.read_bytes())
        with open(self.config, "a") as f:
            f.write(f"tls:\n  cert_file: {self.cert_file}\n  key_file: {self.key_file}\n")
        self.url = f"https://127.0.0.1:{self.port}"

    def log_lines(self):
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def reload_failures(b):
    return [l for l in b.log_lines()
            if l.get("message", "").startswith("TLS certificate reload failed")]


@pytest.fixture(scope="module")
def tls_bridge(tmp_path_factory):
    b = TlsBridge(tmp_path_factory.mktemp("tls-bridge")).start()
    yield b
    b.stop()


@pytest.fixture
def fresh_tls_bridge(tmp_path):
    b = TlsBridge(tmp_path).start()
    yield b
    b.stop()


def test_the_anthropic_sdk_trusting_the_test_ca_is_answered_over_https_streaming_too(tls_bridge):
    b = tls_bridge
    c = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0,
                            http_client=anthropic.DefaultHttpxClient(verify=trusting(b.ca)))
    kw = dict(model="claude-sonnet-4-6", max_tokens=20,
              messages=[{"role": "user", "content": "served over tls"}])
    m = c.messages.create(**kw)
    assert m.content[0].text == "Hello from the fake upstream. You said: served over tls"
    with c.messages.stream(**kw) as s:
        assert s.get_final_text() == "Hello from the fake upstream. You said: served over tls"
    r = b.wait_record(lambda r: r["provider"] == "anthropic" and r["streaming"])
    assert r["user"] == "alice" and r["status"] == 200


def test_the_openai_sdk_trusting_the_test_ca_is_answered_over_https_streaming_too(tls_bridge):
    b = tls_bridge
    c = openai.OpenAI(base_url=f"{b.url}/openai/v1", api_key=b.token, max_retries=0,
                      http_client=openai.DefaultHttpxClient(verify=trusting(b.ca)))
    r = c.chat.completions.create(model="gpt-4o",
                                  messages=[{"role": "user", "content": "tls chat"}])
    assert "tls chat" in r.choices[0].message.content
    stream = c.chat.completions.create(model="gpt-4o", stream=True,
                                       messages=[{"role": "user", "content": "tls stream"}])
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert "tls stream" in text
    b.wait_record(lambda r: r["provider"] == "openai" and r["streaming"])


def test_clients_that_do_not_trust_the_ca_fail_the_handshake(tls_bridge, tmp_path):
    b = tls_bridge
    stranger = make_ca(tmp_path, "stranger-ca")
    for verify in [True, trusting(stranger)]:  # the system roots; another CA
        c = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0,
                                http_client=anthropic.DefaultHttpxClient(verify=verify))
        with pytest.raises(anthropic.APIConnectionError) as e:
            c.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                              messages=[{"role": "user", "content": "hi"}])
        assert "CERTIFICATE_VERIFY_FAILED" in repr(e.value.__cause__) + repr(e.value.__context__)
    # Plain HTTP to the TLS port gets no HTTP answer.
    o = openai.OpenAI(base_url=f"http://127.0.0.1:{b.port}/openai/v1", api_key=b.token,
                      max_retries=0, timeout=5)
    with pytest.raises(openai.APIConnectionError):
        o.models.list()


def test_tls_1_2_is_accepted_and_alpn_selects_http_1_1(tls_bridge):
    b = tls_bridge
    ctx = ssl.create_default_context(cafile=str(b.ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", b.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.2"
            assert s.selected_alpn_protocol() == "http/1.1"
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(b.ca))
    with socket.create_connection(("127.0.0.1", b.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.version() == "TLSv1.3"


def test_new_certificate_files_are_served_without_restart_and_a_broken_pair_keeps_the_last_good(
        fresh_tls_bridge):
    b = fresh_tls_bridge
    d = b.tmp
    assert served_cert_sha256(b.port) == file_cert_sha256(b.cert)
    # A new pair from a new CA (RSA this time), renamed into place.
    new_ca = make_ca(d, "next-ca")
    new_cert, new_key = issue(d, "next-ca", "next", rsa=True)
    replace_file(b.key_file, new_key.read_bytes())
    replace_file(b.cert_file, new_cert.read_bytes())
    changed = time.time()
    want = file_cert_sha256(new_cert)
    while served_cert_sha256(b.port) != want:
        assert time.time() - changed < RELOAD_CHECK_SECONDS * 2 + 1, "new certificate not served"
        time.sleep(0.1)
    took = time.time() - changed
    # Clients now need the new CA, and get answers with it; the old CA no longer verifies.
    c = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0,
                            http_client=anthropic.DefaultHttpxClient(verify=trusting(new_ca)))
    m = c.messages.create(model="claude-sonnet-4-6", max_tokens=20,
                          messages=[{"role": "user", "content": "after reload"}])
    assert m.content[0].text.endswith("after reload")
    old = anthropic.Anthropic(base_url=f"{b.url}/anthropic", api_key=b.token, max_retries=0,
                              http_client=anthropic.DefaultHttpxClient(verify=trusting(b.ca)))
    with pytest.raises(anthropic.APIConnectionError):
        old.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                            messages=[{"role": "user", "content": "hi"}])

    # A broken pair: the key of another certificate. The last good pair keeps serving.
    failed_before = len(reload_failures(b))
    replace_file(b.key_file, b.key.read_bytes())
    time.sleep(RELOAD_CHECK_SECONDS * 2 + 1)
    assert served_cert_sha256(b.port) == want
    m = c.messages.create(model="claude-sonnet-4-6", max_tokens=20,
                          messages=[{"role": "user", "content": "still serving"}])
    assert m.content[0].text.endswith("still serving")
    failures = reload_failures(b)
    assert len(failures) == failed_before + 1, b.log_path.read_text()[-3000:]
    assert failures[-1]["file"] == str(b.key_file)
    assert "does not match the certificate" in failures[-1]["error"]
    reloads = [l for l in b.log_lines() if l.get("message") == "TLS certificate reloaded"]
    assert reloads and reloads[-1]["cert_sha256"] == want
    print(f"new certificate served {took:.2f}s after the files changed")
