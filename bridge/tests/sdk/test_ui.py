"""The audit page (`/ui/`) in a real headless Chromium (Debian's, driven by playwright).

Data is seeded through the real routes: LLM requests with the official SDKs through the bridge
(fake upstream behind it). The browser only ever talks to 127.0.0.1: its DNS is mapped to
nothing, background networking is off, and every request it makes is checked in a route
handler that aborts (and records) anything not on loopback.
"""

import hashlib
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import anthropic
import httpx
import pytest
from playwright.sync_api import sync_playwright

from conftest import Bridge

CHROMIUM = "/usr/bin/chromium"
ADMIN_TOKEN = "ui-test-admin-token-7c1f0e9a2b"
# Chromium makes no request of its own to the outside with these (measured): no component
# updates, no sync, no background fetches, no QUIC, and no DNS resolution at all.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
XSS_USER = '<script>alert("user")</script>'
XSS_PROMPT = '<script>alert("prompt")</script><img src=x onerror=alert("img")> & done'
XSS_MODEL = '<b onmouseover=alert(1)>claude-sonnet-4-6</b>'


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A bridge with the audit page on (its own: the session bridge has no admin token)."""
    tmp = tmp_path_factory.mktemp("ui")
    token_file = tmp / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    token_file.chmod(0o600)
    b = Bridge(tmp)
    with open(b.config, "a") as f:
        f.write(f"control_plane:\n  admin_token_file: {token_file}\n")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `cargo xtask setup --for-tests` installs Debian's chromium")
    with sync_playwright() as p:
        # launch() gives the browser a fresh temporary profile (--user-data-dir) every time.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A fresh browser context (no cookies) and page, with every dialog and every request
    that tried to leave loopback recorded."""

    def __init__(self, browser, base, **context):
        self.base = base
        self.ctx = browser.new_context(**context)
        self.dialogs = []
        self.off_loopback = []
        self.ctx.route("**/*", self._only_loopback)
        self.page = self.ctx.new_page()
        self.page.on("dialog", self._dialog)

    def _only_loopback(self, route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            self.off_loopback.append(route.request.url)
            route.abort()

    def _dialog(self, d):
        self.dialogs.append(d.message)
        d.dismiss()

    def goto(self, path):
        return self.page.goto(self.base + path)

    def login(self, token=ADMIN_TOKEN):
        self.goto("/ui/login")
        self.page.fill("input[name=token]", token)
        with self.page.expect_navigation():
            self.page.click("form.login button[type=submit]")
        return self

    def close(self):
        self.ctx.close()
        assert self.off_loopback == [], f"the browser tried to leave loopback: {self.off_loopback}"


@pytest.fixture
def page(browser, ui):
    p = Page(browser, ui.url)
    yield p
    p.close()


def llm(ui, token, session, prompt, model="claude-sonnet-4-6", **headers):
    c = anthropic.Anthropic(base_url=f"{ui.url}/anthropic", api_key=token, max_retries=0,
                            default_headers={"x-bridge-session": session, **headers})
    c.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": prompt}])
    return ui.wait_record(lambda r: r["context"]["session"] == session)


def rows(page):
    return page.page.locator("table.interceptions tbody tr")


def test_pages_need_a_login_and_a_wrong_token_is_refused(page):
    resp = page.goto("/ui/interceptions")
    assert urlparse(page.page.url).path == "/ui/login"
    assert resp.status == 200
    page.page.fill("input[name=token]", "not-the-admin-token-at-all")
    with page.page.expect_navigation() as nav:
        page.page.click("form.login button[type=submit]")
    assert nav.value.status == 401
    assert page.page.inner_text("#login-error") == "Wrong admin token."
    assert page.ctx.cookies() == []
    page.goto("/ui/usage?by=model")
    assert urlparse(page.page.url).path == "/ui/login"
    # The right token then leads to the page asked for (a bookmarked view survives the login).
    page.page.fill("input[name=token]", ADMIN_TOKEN)
    with page.page.expect_navigation():
        page.page.click("form.login button[type=submit]")
    assert page.page.url == f"{page.base}/ui/usage?by=model"
    assert page.page.inner_text("h1") == "Usage"


def test_login_opens_the_pages_and_logout_closes_them(page):
    page.login()
    assert urlparse(page.page.url).path == "/ui/"
    (cookie,) = page.ctx.cookies()
    assert cookie["name"] == "bridge_ui_session"
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert 12 * 3600 - 60 < cookie["expires"] - time.time() <= 12 * 3600
    for path, title in [("/ui/interceptions", "LLM interceptions"), ("/ui/usage", "Usage")]:
        resp = page.goto(path)
        assert resp.status == 200, path
        assert page.page.inner_text("h1") == title
    with page.page.expect_navigation():
        page.page.click("form.logout button")
    assert urlparse(page.page.url).path == "/ui/login"
    page.goto("/ui/interceptions")
    assert urlparse(page.page.url).path == "/ui/login"


def test_the_landing_page_figures_lead_to_the_views_behind_them(page):
    page.login()
    figures = page.page.locator("div.figures a.figure")
    assert figures.count() == 3
    assert all(f.split("\n")[0].replace(" / ", "").isdigit() for f in figures.all_inner_texts())
    with page.page.expect_navigation():
        figures.first.click()
    assert page.page.inner_text("h1") == "Blocked connections"
    assert page.page.input_value("form.filters input[name=since]") == "24h"


def test_every_answer_carries_the_security_headers(page):
    resp = page.goto("/ui/login")
    h = resp.headers
    assert "default-src 'self'" in h["content-security-policy"]
    assert "script-src 'self'" in h["content-security-policy"]
    assert "unsafe-inline" not in h["content-security-policy"]
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-content-type-options"] == "nosniff"
    page.login()
    resp = page.goto("/ui/no-such-page")
    assert resp.status == 404
    assert resp.headers["x-frame-options"] == "DENY"


def test_interception_filters_narrow_the_list_in_the_browser(ui, page):
    tag = f"filt{time.time_ns()}"
    bob = ui.create_key(f"bob-{tag}")
    carol = ui.create_key(f"carol-{tag}")
    llm(ui, bob, f"{tag}-1", "bob asks", model="claude-sonnet-4-6", **{"x-bridge-template": f"tpl-{tag}"})
    llm(ui, bob, f"{tag}-2", "bob asks again", model="claude-haiku-4-5", **{"x-bridge-template": f"tpl-{tag}"})
    llm(ui, carol, f"{tag}-3", "carol asks", model="claude-sonnet-4-6", **{"x-bridge-template": f"tpl-{tag}"})
    page.login()
    page.goto("/ui/interceptions")
    page.page.fill("form.filters input[name=template]", f"tpl-{tag}")
    with page.page.expect_navigation():
        page.page.click("form.filters button[type=submit]")
    assert rows(page).count() == 3
    page.page.fill("form.filters input[name=user]", f"bob-{tag}")
    with page.page.expect_navigation():
        page.page.click("form.filters button[type=submit]")
    assert rows(page).count() == 2
    assert all(f"bob-{tag}" in t for t in rows(page).all_inner_texts())
    # The filtered view is a plain URL: bookmarkable, and the form shows what it filters on.
    assert f"user=bob-{tag}" in page.page.url
    assert page.page.input_value("form.filters input[name=user]") == f"bob-{tag}"
    page.page.fill("form.filters input[name=model]", "claude-haiku-4-5")
    with page.page.expect_navigation():
        page.page.click("form.filters button[type=submit]")
    assert rows(page).count() == 1
    assert "bob asks again" in rows(page).first.inner_text()
    # A time window that ends before the requests holds none of them.
    page.page.fill("form.filters input[name=model]", "")
    page.page.fill("form.filters input[name=until]", "2000-01-01")
    with page.page.expect_navigation():
        page.page.click("form.filters button[type=submit]")
    assert rows(page).count() == 0
    # A filter value that is not a time is a clear error, not an empty list.
    resp = page.goto("/ui/interceptions?since=yesterday-ish")
    assert resp.status == 400
    assert "filter `since`" in page.page.inner_text("main")


def test_script_in_a_user_name_prompt_or_model_is_shown_as_text_and_never_runs(ui, page):
    tag = f"xss{time.time_ns()}"
    token = ui.create_key(XSS_USER)
    rec = llm(ui, token, tag, XSS_PROMPT, model=XSS_MODEL, **{"x-bridge-template": tag})
    assert rec["user"] == XSS_USER and rec["prompt"] == XSS_PROMPT
    page.login()
    page.goto(f"/ui/interceptions?template={tag}")
    assert rows(page).count() == 1
    row = rows(page).first.inner_text()
    assert XSS_USER in row and XSS_PROMPT in row
    assert rec["model"] in row
    # Nothing the data holds became an element.
    assert page.page.locator("main script, main img, main b").count() == 0
    page.page.click("table.interceptions tbody tr td a")
    assert page.page.inner_text("pre.prompt") == XSS_PROMPT
    assert XSS_USER in page.page.inner_text("table.detail")
    page.goto("/ui/usage?by=user")
    assert XSS_USER in page.page.inner_text("table.usage")
    page.goto("/ui/usage?by=model")
    assert rec["model"] in page.page.inner_text("table.usage")
    assert page.dialogs == [], f"a script ran: {page.dialogs}"


def test_a_login_from_another_origin_is_refused_and_guessing_is_limited(ui):
    # Another site's form (its Origin) is refused, even with the right token.
    r = httpx.post(f"{ui.url}/ui/login", data={"token": ADMIN_TOKEN},
                   headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    # Guesses from one address: refused after 5 within a minute, even the right token. The
    # client uses its own loopback address so the browser tests (127.0.0.1) are not locked out.
    transport = httpx.HTTPTransport(local_address="127.0.0.9")
    with httpx.Client(transport=transport, headers={"origin": ui.url}) as c:
        codes = [c.post(f"{ui.url}/ui/login", data={"token": f"guess-{i:020d}"}).status_code
                 for i in range(5)]
        assert codes == [401] * 5
        r = c.post(f"{ui.url}/ui/login", data={"token": ADMIN_TOKEN})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # Other paths under /ui/ need a session; POSTs there are refused without one.
    r = httpx.post(f"{ui.url}/ui/interceptions", headers={"origin": ui.url})
    assert r.status_code == 403


def enrol(ui, template, name, workspace=None):
    """An agent token for `template`, made with the CLI as an admin does."""
    args = ["agents", "create", "--template", template, "--name", name]
    if workspace:
        args += ["--workspace", workspace]
    return ui.cli(*args).strip().splitlines()[0].strip()


def push_policy(ui, template, domains, comment, mode="audit"):
    f = ui.tmp / f"{template}-{time.time_ns()}.yaml"
    f.write_text(f"name: {template}\nmode: {mode}\nallowlist:\n"
                 + "".join(f'  - "domain={d}"\n' for d in domains))
    ui.cli("policy", "push", "--template", template, str(f), "--comment", comment,
           "--author", "secops")


def agent_status(ui, token, host, **fields):
    r = httpx.post(f"{ui.url}/boundary/v1/status", json={
        "agent_version": "0.9.1", "hostname": host, "sessions": 1, "events_spooled": 0,
        "events_lost": 0, "started_at": "2026-01-01T00:00:00Z", **fields,
    }, headers={"authorization": f"Bearer {token}", "x-boundary-agent-version": "0.9.1",
                "x-boundary-agent-host": host})
    assert r.status_code == 204, r.text


def submit_filter(page, **fields):
    for name, value in fields.items():
        page.page.fill(f"form.filters input[name={name}]", value)
    with page.page.expect_navigation():
        page.page.click("form.filters button[type=submit]")


def test_fleet_shows_versions_policy_lag_and_lost_events(ui, page):
    tpl = f"fleet{time.time_ns()}"
    push_policy(ui, tpl, ["pypi.org"], "first")
    a = enrol(ui, tpl, "web-a", workspace="ws-a")
    b = enrol(ui, tpl, "web-b", workspace="ws-b")
    enrol(ui, tpl, "web-c")
    agent_status(ui, a, "host-a", policy_version=1, events_lost=0)
    agent_status(ui, b, "host-b", policy_version=1, events_lost=7)
    push_policy(ui, tpl, ["pypi.org", "files.pythonhosted.org"], "second")
    agent_status(ui, a, "host-a", policy_version=2)
    page.login()
    page.goto("/ui/fleet")
    submit_filter(page, template=tpl)
    table = page.page.locator("table.fleet tbody tr")
    assert table.count() == 3
    by_name = {r.split("\t")[0]: r.split("\t") for r in table.all_inner_texts()}
    assert by_name["web-a"][3:6] == ["host-a", "0.9.1", "v2 (current)"]
    assert by_name["web-b"][5] == "v1 (current is v2)"
    assert by_name["web-b"][8] == "7"
    assert by_name["web-c"][9:] == ["never", "never seen"]
    assert by_name["web-a"][10] == "reporting"


def test_policy_history_lists_every_version_and_shows_its_text(ui, page):
    tpl = f"hist{time.time_ns()}"
    push_policy(ui, tpl, ["pypi.org"], '<script>alert("comment")</script>')
    push_policy(ui, tpl, ["pypi.org", "github.com"], "add github")
    page.login()
    page.goto("/ui/policies")
    with page.page.expect_navigation():
        page.page.click(f"table.policies a:text-is('{tpl}')")
    assert page.page.inner_text("h1") == f"Policy of {tpl}"
    rows = page.page.locator("table.history tbody tr").all_inner_texts()
    assert [r.split("\t")[0] for r in rows] == ["v2", "v1"]
    assert rows[0].split("\t")[2] == "secops"
    assert '<script>alert("comment")</script>' in rows[1]
    assert "github.com" in page.page.inner_text("pre.policy")
    # What v2 changed, line by line.
    assert page.page.locator("pre.diff .add").all_inner_texts() == ['+  - "domain=github.com"']
    assert page.page.locator("pre.diff .del").count() == 0
    with page.page.expect_navigation():
        page.page.click("table.history a:text-is('v1')")
    assert "github.com" not in page.page.inner_text("pre.policy")
    assert "pypi.org" in page.page.inner_text("pre.policy")
    assert page.page.locator("pre.diff").count() == 0
    assert page.dialogs == []


def register_session(ui, token, session, user, command="claude"):
    """Registers a session as the agent does; returns its credential."""
    credential = f"bnd_sess_{session}_{uuid.uuid4().hex}"
    r = httpx.post(f"{ui.url}/boundary/v1/sessions", headers={"authorization": f"Bearer {token}"},
                   json={"session_id": session, "user_name": user, "uid": 1000, "command": command,
                         "started_at": datetime.now(timezone.utc).isoformat(),
                         "credential_sha256": hashlib.sha256(credential.encode()).hexdigest()})
    assert r.status_code == 204, r.text
    return credential


def test_sessions_list_the_registered_sessions_with_filters(ui, page):
    tag = f"sl{time.time_ns()}"
    a = enrol(ui, f"{tag}-a", "sl-a", workspace=f"{tag}-ws")
    b = enrol(ui, f"{tag}-b", "sl-b")
    register_session(ui, a, f"{tag}-1", "dev1", command="claude")
    register_session(ui, a, f"{tag}-2", "dev2", command="codex")
    register_session(ui, b, f"{tag}-3", "dev1", command="<script>alert('cmd')</script>")
    page.login()
    page.goto("/ui/sessions")
    submit_filter(page, template=f"{tag}-a")
    rows = [r.split("\t") for r in page.page.locator("table.sessions tbody tr").all_inner_texts()]
    assert sorted((r[0], r[1], r[2], r[4]) for r in rows) == [
        (f"{tag}-1", "dev1", "claude", f"{tag}-ws"), (f"{tag}-2", "dev2", "codex", f"{tag}-ws")]
    submit_filter(page, template="", user="dev1", since="1h")
    rows = [r.split("\t") for r in page.page.locator("table.sessions tbody tr").all_inner_texts()]
    mine = sorted(r[0] for r in rows if r[0].startswith(tag))
    assert mine == [f"{tag}-1", f"{tag}-3"]
    assert "<script>alert('cmd')</script>" in page.page.inner_text("table.sessions")
    assert page.dialogs == []


def post_events(ui, token, *events):
    """Ships events as an agent does (`POST /boundary/v1/events`), each with a fresh id."""
    batch = []
    for e in events:
        e = dict(e)
        e.setdefault("event.id", str(uuid.uuid4()))
        e.setdefault("event.name", "boundary.decision")
        e.setdefault("timestamp", datetime.now(timezone.utc).isoformat())
        batch.append(e)
    r = httpx.post(f"{ui.url}/boundary/v1/events", json={"events": batch},
                   headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(batch)


def decision(action, domain, process="curl", user="alice", session=None, address="127.0.0.5",
             port=443, count=1):
    e = {"event.action": action, "boundary.destination.domains": [domain],
         "destination.address": address, "destination.port": port,
         "process.executable.name": process, "user.name": user, "boundary.event.count": count}
    if session:
        e["session.id"] = session
    return e


def blocked_rows(page):
    return [r.split("\t") for r in page.page.locator("table.events tbody tr").all_inner_texts()]


def test_blocked_connections_filters_narrow_the_list_in_the_browser(ui, page):
    tpl = f"blk{time.time_ns()}"
    a = enrol(ui, tpl, "blk-a", workspace=f"{tpl}-ws1")
    b = enrol(ui, tpl, "blk-b", workspace=f"{tpl}-ws2")
    post_events(ui, a,
                decision("deny", "evil.example", process="curl", user="alice"),
                decision("deny", "pastebin.example", process="python3", user="alice"),
                decision("allow", "pypi.org", process="pip", user="alice"))
    post_events(ui, b,
                decision("would_deny", "evil.example", process="node", user="bob"),
                {"event.name": "boundary.dns", "event.action": "deny",
                 "dns.question.name": "exfil.example", "process.executable.name": "dig",
                 "user.name": "bob"})
    page.login()
    page.goto("/ui/blocked")
    submit_filter(page, template=tpl)
    rows = blocked_rows(page)
    # The allowed connection is not a blocked one.
    assert sorted(r[3] for r in rows) == ["evil.example", "evil.example", "exfil.example",
                                          "pastebin.example"]
    submit_filter(page, workspace=f"{tpl}-ws1")
    assert sorted(r[3] for r in blocked_rows(page)) == ["evil.example", "pastebin.example"]
    submit_filter(page, workspace="", user="bob")
    assert sorted(r[5] for r in blocked_rows(page)) == ["dig", "node"]
    submit_filter(page, user="", domain="evil.example")
    assert sorted(r[2] for r in blocked_rows(page)) == ["deny", "would_deny"]
    submit_filter(page, process="node")
    assert [r[6] for r in blocked_rows(page)] == ["bob"]
    submit_filter(page, process="", action="deny")
    assert [r[8] for r in blocked_rows(page)] == [f"{tpl}-ws1"]
    submit_filter(page, action="", since="1h")
    assert len(blocked_rows(page)) == 2
    submit_filter(page, since="", until="2000-01-01")
    assert blocked_rows(page) == []
    # A domain in the list is a link to that domain's blocked connections.
    page.goto(f"/ui/blocked?template={tpl}&workspace={tpl}-ws1")
    with page.page.expect_navigation():
        page.page.click("table.events a:text-is('pastebin.example')")
    assert "domain=pastebin.example" in page.page.url
    assert [r[3] for r in blocked_rows(page)] == ["pastebin.example"]


def test_script_in_a_domain_process_or_user_of_an_event_is_shown_as_text(ui, page):
    tpl = f"xsse{time.time_ns()}"
    tok = enrol(ui, tpl, "xss-agent")
    domain = '<script>alert("domain")</script>.example'
    process = '<img src=x onerror=alert("process")>'
    user = '"><script>alert("user")</script>'
    session = f"{tpl}-s"
    post_events(ui, tok, decision("deny", domain, process=process, user=user, session=session))
    page.login()
    page.goto(f"/ui/blocked?template={tpl}")
    (row,) = blocked_rows(page)
    assert row[3] == domain and row[5] == process and row[6] == user
    assert page.page.locator("main script, main img").count() == 0
    # The event in full, as the agent shipped it.
    with page.page.expect_navigation():
        page.page.click("table.events tbody td:first-child a")
    assert page.page.inner_text("h1") == "Boundary event"
    shipped = json.loads(page.page.inner_text("pre.event"))
    assert shipped["boundary.destination.domains"] == [domain]
    assert shipped["process.executable.name"] == process
    assert shipped["template"] == tpl
    assert page.page.locator("main script, main img").count() == 0
    with page.page.expect_navigation():
        page.page.click(f"table.detail a:text-is('{session}')")
    assert domain in page.page.inner_text("#session-events")
    assert user in page.page.inner_text("table.detail")
    assert page.page.locator("main script, main img").count() == 0
    assert page.dialogs == [], f"a script ran: {page.dialogs}"


def test_a_session_page_shows_its_events_and_llm_calls_side_by_side(ui, page):
    tpl = f"sess{time.time_ns()}"
    tok = enrol(ui, tpl, "sess-agent", workspace="ws-sess")
    session = f"{tpl}-1"
    credential = register_session(ui, tok, session, "dev1", command="claude")
    post_events(ui, tok,
                {"event.name": "boundary.session.start", "session.id": session, "user.name": "dev1"},
                decision("allow", "bridge.internal", process="claude", user="dev1", session=session),
                decision("deny", "api.anthropic.com", process="claude", user="dev1", session=session,
                         count=4))
    key = ui.create_key("dev1")
    for prompt in ("first question", "second question"):
        llm(ui, key, session, prompt, **{"x-bridge-session-token": credential})
    # Another session's call is not on this page.
    llm(ui, key, f"{tpl}-other", "not this session")
    page.login()
    page.goto(f"/ui/interceptions?session={session}")
    with page.page.expect_navigation():
        page.page.click(f"table.interceptions a:text-is('{session}')")
    assert page.page.inner_text("h1") == "Session"
    detail = page.page.inner_text("table.detail")
    for text in ("dev1", "claude", tpl, "ws-sess", "Blocked decisions\t4"):
        assert text in detail, (text, detail)
    events = page.page.locator("#session-events tbody tr").all_inner_texts()
    assert [e.split("\t")[1] for e in events] == ["session.start", "decision", "decision"]
    calls = page.page.locator("#session-interceptions tbody tr").all_inner_texts()
    assert len(calls) == 2
    assert "first question" in calls[0] and "second question" in calls[1]
    # Side by side: the two columns sit next to each other on a wide screen.
    left = page.page.locator("#session-events").bounding_box()
    right = page.page.locator("#session-interceptions").bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 5


def test_the_rollout_report_lists_what_enforce_would_deny(ui, page):
    tpl = f"roll{time.time_ns()}"
    push_policy(ui, tpl, ["pypi.org"], "audit first", mode="audit")
    tok = enrol(ui, tpl, "roll-agent", workspace="ws-r")
    post_events(ui, tok,
                decision("would_deny", "evil.example", count=5),
                decision("would_deny", "evil.example", process="wget", count=2),
                decision("would_deny", "crates.io", process="cargo"),
                decision("allow", "pypi.org", process="pip", count=9))
    page.login()
    page.goto("/ui/report")
    with page.page.expect_navigation():
        page.page.click(f"main a:text-is('{tpl}')")
    assert page.page.inner_text("h1") == f"Rollout report: {tpl}"
    assert "v1 in audit mode" in page.page.inner_text("p.count")
    rows = [r.split("\t") for r in page.page.locator("table.report tbody tr").all_inner_texts()]
    assert [(r[0], r[3]) for r in rows] == [("evil.example", "7"), ("crates.io", "1")]
    assert rows[0][6] == "curl, wget"


def test_over_tls_the_session_cookie_is_secure_and_the_https_origin_is_accepted(browser, tmp_path):
    from test_serve_tls import TlsBridge
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    b = TlsBridge(tmp_path)
    with open(b.config, "a") as f:
        f.write(f"control_plane:\n  admin_token_file: {token_file}\n")
    b.start()
    try:
        # The test CA is not in Chromium's store; the server certificate is for 127.0.0.1.
        p = Page(browser, b.url, ignore_https_errors=True)
        try:
            p.login()
            assert urlparse(p.page.url).path == "/ui/"
            (cookie,) = p.ctx.cookies()
            assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert p.page.inner_text("h1") == "Audit"
        finally:
            p.close()
    finally:
        b.stop()
