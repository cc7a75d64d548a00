"""The staff console (`provision console`) and `provision staff`, through Flask's test client
on both databases: accounts, logins and the lockout, sessions, CSRF, roles, the pages, the
staff API, the audit log. The browser tests (test_console_browser.py) drive the same in
Chromium."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from provision import staff as staff_lib
from provision.activation import ActivationRejected, activate
from provision.audit import verify_chains
from provision.keys import Keyring, load_keyring
from provision.registry import Registry
from provision.registry.alerts import Finding
from provision.states import AlertStatus, DeviceStatus
from provision.web import WebSettings, create_app
from provision.web.console import create_console_app
from tests.helpers import register_with_components

PASSWORD = "correct horse battery staple"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PAGES = (
    "/",
    "/batches",
    "/batches/console",
    "/devices",
    "/devices?status=activated",
    "/trace?lot=LOT-A",
    "/recalls",
    "/stats",
    "/stats?by=model",
    "/stats?by=line",
    "/stats?by=week",
    "/alerts",
    "/reports",
)


@dataclass
class Console:
    """One test's registry with a batch of 4 devices (2 activated), an alert, and staff."""

    registry: Registry
    keyring_path: Path
    output: Path
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def keyring(self) -> Keyring:
        return load_keyring(self.keyring_path)

    def app(self, **kw: Any) -> Flask:
        settings = WebSettings(self.registry.url, str(self.keyring_path), "http://localhost")
        app = create_console_app(
            settings, self.output, registry=self.registry, keyring=self.keyring, **kw
        )
        app.config["TESTING"] = False  # CSRF and the login checks stay on
        return app

    def login(self, name: str, password: str = PASSWORD, **kw: Any) -> FlaskClient:
        client = self.app(**kw).test_client()
        resp = login(client, name, password)
        assert resp.status_code == 302, resp.get_data(as_text=True)
        return client

    def device(self, serial: str) -> dict[str, Any]:
        return self.devices[serial]


def login(client: FlaskClient, name: str, password: str, ip: str = "127.0.0.1") -> Any:
    """Log in from IP (the test client's own address by default: a session is bound to the
    address and browser it logged in from)."""
    page = client.get("/login", environ_base={"REMOTE_ADDR": ip})
    token = csrf(page.get_data(as_text=True))
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token},
        environ_base={"REMOTE_ADDR": ip},
    )


def csrf(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, html[:2000]
    return m.group(1)


def post_form(client: FlaskClient, page: str, action: str, **data: str) -> Any:
    token = csrf(client.get(page).get_data(as_text=True))
    return client.post(action, data={**data, "csrf_token": token})


@pytest.fixture
def console(registry: Registry, keyring_path: Path, tmp_path: Path) -> Console:
    return populate(registry, keyring_path, tmp_path)


def populate(registry: Registry, keyring_path: Path, tmp_path: Path) -> Console:
    """Batch `console`: CON-1 (alice) and CON-2 (bob) activated, CON-3 and CON-4 pending; LOT-A
    in CON-1 and CON-2; mallory's refused attempt on CON-1 and an alert about it; staff vera
    (viewer), sam (support) and ada (admin); label files and a report in the output folder."""
    keyring = load_keyring(keyring_path)
    rows = [
        ["CON-1", "battery", "CR2032", "BAT-1", "Volta", "LOT-A"],
        ["CON-2", "battery", "CR2032", "BAT-2", "Volta", "LOT-A"],
        ["CON-3", "battery", "CR2032", "BAT-3", "Volta", "LOT-B"],
        ["CON-4", "battery", "CR2032", "BAT-4", "Volta", "LOT-B"],
    ]
    devices = register_with_components(registry, keyring, tmp_path, "console", rows)
    now = datetime.now(UTC)
    for serial, user in (("CON-1", "alice@example.com"), ("CON-2", "bob@example.com")):
        activate(registry, keyring, devices[serial]["payload"], user, ip="198.51.100.7", now=now)
    # Somebody else tries CON-1 again: the staff see the attempt, with its address.
    with pytest.raises(ActivationRejected):
        activate(
            registry, keyring, devices["CON-1"]["payload"], "mallory@example.com", ip="203.0.113.9"
        )
    finding = Finding(
        id="a" * 32,
        rule="scan_after_activation",
        severity="warning",
        subject_kind="device",
        subject=devices["CON-1"]["device_id"],
        first_seen=now,
        last_seen=now,
        count=1,
        evidence={"pairing_events": [1]},
    )
    registry.alerts.save([finding], {}, now)
    for name, role in (("vera", "viewer"), ("sam", "support"), ("ada", "admin")):
        staff_lib.add_staff(registry, name, role, PASSWORD, "test")
    output = tmp_path / "output"
    output.mkdir()
    (output / "console.pdf").write_bytes(b"%PDF-1.7 first\n")
    (output / "console.r2.pdf").write_bytes(b"%PDF-1.7 second\n")
    (output / "console.json").write_text(json.dumps({"labels": 4, "pages": 1, "template": "x"}))
    report = output / "reports" / "2026-11"
    report.mkdir(parents=True)
    summary = {"as_of": "2026-11-30", "counts": {"matched": 2}, "severity": {"matched": "info"}}
    (report / "summary.json").write_text(json.dumps(summary | {"shipments_file": "s.csv"}))
    (report / "report.pdf").write_bytes(b"%PDF-1.7 report\n")
    (output / "secret.txt").write_text("not a report")
    return Console(registry, keyring_path, output, devices)


# -- the activation service serves none of it ----------------------------------------------------


def test_the_activation_service_serves_nothing_of_the_console(console: Console) -> None:
    settings = WebSettings(console.registry.url, str(console.keyring_path), "http://localhost")
    public = create_app(settings, registry=console.registry, keyring=console.keyring)
    client = public.test_client()
    for path in ("/login", "/devices", "/staff", "/alerts", "/api/v1/staff/find?q=x"):
        assert client.get(path).status_code == 404, path
    assert client.post("/login", data={"username": "ada"}).status_code in (400, 404)
    rules = {r.rule for r in public.url_map.iter_rules()}
    assert not rules & {"/login", "/devices", "/trace", "/api/v1/staff/devices/<device_id>/history"}


# -- accounts --------------------------------------------------------------------------------------


def test_staff_add_reads_the_password_from_stdin_and_stores_only_an_argon2id_hash(
    run_cli: Any, db_url: str
) -> None:
    Registry(db_url).close()
    added = run_cli("staff", "add", "alice", "--role", "support", "--json", input=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    data = json.loads(added.stdout)
    assert data["name"] == "alice" and data["role"] == "support" and data["active"]
    registry = Registry(db_url)
    try:
        account = registry.staff.get("alice")
        assert account is not None
        assert account.password_hash.startswith("$argon2id$")
        assert PASSWORD not in account.password_hash
        [event] = registry.staff.events(subject="alice")
        assert event.action == "staff.add" and event.staff.startswith("cli:")
    finally:
        registry.close()
    again = run_cli("staff", "add", "alice", "--role", "viewer", input=PASSWORD + "\n")
    assert again.exit_code == 1 and "staff 'alice' already exists" in again.stderr
    short = run_cli("staff", "add", "bob", "--role", "viewer", input="short\n")
    assert short.exit_code == 1 and "shorter than 12 characters" in short.stderr
    bad = run_cli("staff", "add", "bob", "--role", "root", input=PASSWORD + "\n")
    assert bad.exit_code == 2 and "'root' is not one of" in bad.stderr
    listed = json.loads(run_cli("staff", "list", "--json").stdout)
    assert listed["count"] == 1 and listed["staff"][0]["name"] == "alice"


def test_staff_token_is_shown_once_and_stored_as_its_hash(run_cli: Any, db_url: str) -> None:
    Registry(db_url).close()
    assert run_cli("staff", "add", "bot", "--role", "viewer", input=PASSWORD + "\n").exit_code == 0
    first = run_cli("staff", "token", "bot")
    assert first.exit_code == 0
    token = first.stdout.strip()
    assert token.startswith("pst_") and len(token) > 40
    registry = Registry(db_url)
    try:
        account = registry.staff.get("bot")
        assert account is not None and account.token_hash == staff_lib.token_hash(token)
        assert staff_lib.account_of_token(registry, token) == account
        second = run_cli("staff", "token", "bot", "--json")
        new = json.loads(second.stdout)["token"]
        assert staff_lib.account_of_token(registry, token) is None  # replaced
        assert staff_lib.account_of_token(registry, new) is not None
        assert run_cli("staff", "disable", "bot").exit_code == 0
        assert staff_lib.account_of_token(registry, new) is None
        assert "disabled" in run_cli("staff", "list").stdout
        refused = run_cli("staff", "token", "bot")
        assert refused.exit_code == 1 and "disabled" in refused.stderr
    finally:
        registry.close()


def test_staff_passwd_reads_the_new_password_and_ends_the_old_one(
    run_cli: Any, db_url: str
) -> None:
    Registry(db_url).close()
    assert run_cli("staff", "add", "carl", "--role", "viewer", input=PASSWORD + "\n").exit_code == 0
    changed = run_cli("staff", "passwd", "carl", "--json", input="a new long password\n")
    assert changed.exit_code == 0, changed.stderr
    assert json.loads(changed.stdout)["name"] == "carl"
    registry = Registry(db_url)
    try:
        assert staff_lib.login(registry, "carl", PASSWORD, "10.0.0.1").result == "bad_credentials"
        assert staff_lib.login(registry, "carl", "a new long password", "10.0.0.1").result == "ok"
        actions = [e.action for e in registry.staff.events(subject="carl")]
        assert "staff.passwd" in actions
    finally:
        registry.close()
    missing = run_cli("staff", "passwd", "nobody", input="a new long password\n")
    assert missing.exit_code == 1 and "no staff account named 'nobody'" in missing.stderr
    empty = run_cli("staff", "passwd", "carl", input="")
    assert empty.exit_code == 2 and "no password on stdin" in empty.stderr


def test_login_locks_the_account_and_the_address_after_5_failures(console: Console) -> None:
    registry = console.registry
    now = datetime.now(UTC)
    for n in range(4):
        got = staff_lib.login(registry, "sam", "wrong password!", "10.1.1.1", now)
        assert got.result is staff_lib.LoginResult.BAD, n
    fifth = staff_lib.login(registry, "sam", "wrong password!", "10.1.1.1", now)
    assert fifth.result is staff_lib.LoginResult.LOCKED
    # Locked: the right password from another address is refused too, without a check.
    assert staff_lib.login(registry, "sam", PASSWORD, "10.2.2.2", now).result == "locked"
    # And the address is locked for another account.
    assert staff_lib.login(registry, "vera", PASSWORD, "10.1.1.1", now).result == "locked"
    assert staff_lib.login(registry, "vera", PASSWORD, "10.3.3.3", now).result == "ok"
    # 15 minutes after the failures the lock is over.
    later = now + timedelta(minutes=15, seconds=1)
    assert staff_lib.login(registry, "sam", PASSWORD, "10.1.1.1", later).result == "ok"
    actions = [e.action for e in registry.staff.events(limit=50)]
    assert actions.count("login.failed") == 5 and actions.count("login.locked") == 2


def test_a_good_login_clears_the_account_count_but_not_the_address_count(
    console: Console,
) -> None:
    registry = console.registry
    now = datetime.now(UTC)
    for _ in range(4):
        staff_lib.login(registry, "sam", "wrong password!", "10.1.1.1", now)
    assert staff_lib.login(registry, "sam", PASSWORD, "10.1.1.1", now).result == "ok"
    later = now + timedelta(seconds=1)
    # The account starts again from nought: one more failure elsewhere does not lock it...
    assert (
        staff_lib.login(registry, "sam", "wrong password!", "10.2.2.2", later).result
        == "bad_credentials"
    )
    assert staff_lib.login(registry, "sam", PASSWORD, "10.2.2.2", later).result == "ok"
    # ...but the address that failed 4 times locks at its fifth, whichever account it tries.
    assert (
        staff_lib.login(registry, "vera", "wrong password!", "10.1.1.1", later).result == "locked"
    )
    account = registry.staff.get("sam")
    assert account is not None and account.last_login_at is not None


def test_unknown_and_disabled_names_fail_like_a_wrong_password(console: Console) -> None:
    registry = console.registry
    assert staff_lib.login(registry, "nobody", PASSWORD, "10.0.0.5").result == "bad_credentials"
    staff_lib.disable_staff(registry, "vera", "test")
    assert staff_lib.login(registry, "vera", PASSWORD, "10.0.0.6").result == "bad_credentials"


# -- logins and sessions over HTTP ---------------------------------------------------------------


def test_login_page_good_wrong_and_locked(console: Console) -> None:
    client = console.app().test_client()
    assert client.get("/").status_code == 302  # to the login
    assert client.get("/").headers["Location"].startswith("/login")
    wrong = login(client, "sam", "not the password")
    assert wrong.status_code == 401 and "Wrong name or password." in wrong.get_data(as_text=True)
    for _ in range(4):
        login(client, "sam", "not the password")
    locked = login(client, "sam", PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.get_data(as_text=True)
    good = login(client, "vera", PASSWORD, ip="10.9.9.9")
    assert good.status_code == 302 and good.headers["Location"] == "/"
    cookie = good.headers["Set-Cookie"]
    assert "provision_console=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain http here; behind a TLS proxy, secure_cookie
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 200


def test_the_session_cookie_is_secure_when_staff_come_over_https(console: Console) -> None:
    client = console.app(secure_cookie=True).test_client()
    resp = login(client, "vera", PASSWORD)
    assert resp.status_code == 302 and "; Secure" in resp.headers["Set-Cookie"]


def test_login_never_redirects_to_another_site(console: Console) -> None:
    client = console.app().test_client()
    token = csrf(client.get("/login").get_data(as_text=True))
    for target in (
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "/\tevil",
        "javascript:alert(1)",
    ):
        resp = client.post(
            "/login",
            data={"username": "vera", "password": PASSWORD, "csrf_token": token, "next": target},
        )
        assert resp.status_code == 302 and resp.headers["Location"] == "/", target
        client.post("/logout", data={"csrf_token": csrf(client.get("/").get_data(as_text=True))})
        token = csrf(client.get("/login").get_data(as_text=True))


def test_login_without_the_csrf_token_is_refused(console: Console) -> None:
    client = console.app().test_client()
    resp = client.post("/login", data={"username": "vera", "password": PASSWORD})
    assert resp.status_code == 400 and 'id="reason">csrf<' in resp.get_data(as_text=True)


def test_the_session_ends_after_the_idle_timeout(console: Console) -> None:
    client = console.login("vera", idle_timeout=timedelta(seconds=1))
    assert client.get("/devices").status_code == 200
    time.sleep(2.2)
    resp = client.get("/devices")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_a_new_password_or_a_disabled_account_ends_the_session(console: Console) -> None:
    vera, sam = console.login("vera"), console.login("sam")
    staff_lib.set_password(console.registry, "vera", "another long password", "test")
    assert vera.get("/").status_code == 302
    staff_lib.disable_staff(console.registry, "sam", "test")
    assert sam.get("/").status_code == 302
    assert login(console.app().test_client(), "sam", PASSWORD).status_code == 401


def test_logout_ends_every_session_of_the_account(console: Console) -> None:
    client = console.login("vera")
    copy = console.app().test_client()
    cookie = client.get_cookie("provision_console")
    assert cookie is not None
    copy.set_cookie("provision_console", cookie.value)  # the same session, stolen before
    assert copy.get("/").status_code == 200
    html = client.get("/").get_data(as_text=True)
    assert client.post("/logout", data={"csrf_token": csrf(html)}).status_code == 302
    assert client.get("/").status_code == 302
    assert copy.get("/").status_code == 302  # ended too
    assert console.login("vera").get("/").status_code == 200  # a new login works


def test_a_session_used_from_another_address_or_browser_ends(console: Console) -> None:
    client = console.login("vera")
    assert client.get("/").status_code == 200
    assert client.get("/", environ_base={"REMOTE_ADDR": "203.0.113.66"}).status_code == 302
    assert client.get("/").status_code == 302  # and stays ended
    other = console.login("vera")
    assert other.get("/", headers={"User-Agent": "curl/8"}).status_code == 302


def test_a_new_password_cancels_the_api_token(console: Console) -> None:
    token = staff_lib.issue_token(console.registry, "sam", "test")
    assert staff_lib.account_of_token(console.registry, token) is not None
    staff_lib.set_password(console.registry, "sam", "another long password", "test")
    assert staff_lib.account_of_token(console.registry, token) is None


def test_odd_login_names_and_long_paths_are_refused_not_errors(console: Console) -> None:
    for name, status in (("a\x00b", 401), ("x" * 5000, 401), ("ünïcode", 401), (" sam ", 302)):
        assert login(console.app().test_client(), name, PASSWORD).status_code == status, name
    vera = console.login("vera")
    long = "/devices/" + "a" * 400 + "/revoke"
    assert post_form(vera, "/", long, reason="x").status_code == 403


# -- the pages -------------------------------------------------------------------------------------


def test_every_page_renders_under_a_strict_csp_with_nothing_external(console: Console) -> None:
    client = console.login("ada")
    for path in (*PAGES, f"/devices/{console.device('CON-1')['device_id']}", "/staff"):
        resp = client.get(path)
        assert resp.status_code == 200, (path, resp.get_data(as_text=True)[:500])
        html = resp.get_data(as_text=True)
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert resp.headers["Cache-Control"] == "no-store"
        # No inline style or script (the CSP would block it) and no other origin.
        assert " style=" not in html and "<script" not in html, path
        assert not re.search(r'(src|href|action)="(https?:)?//', html), path


def test_overview_shows_counts_chart_alerts_and_batches(console: Console) -> None:
    html = console.login("vera").get("/").get_data(as_text=True)
    assert 'id="count-total">4<' in html
    assert 'id="count-activated">2<' in html and 'id="count-pending">2<' in html
    assert 'id="count-alerts">1<' in html and "scan_after_activation" in html
    chart = re.search(r'<figure id="activations-chart">(.*?)</figure>', html, re.S)
    assert chart and "<svg" in chart.group(1)
    today = datetime.now(UTC).strftime("%m-%d")
    assert f"<title>{today}: 2 activations</title>" in chart.group(1)
    assert chart.group(1).count("<rect") >= 90
    assert 'href="/batches/console"' in html


def test_batch_page_lists_each_label_revision_and_downloads_it(console: Console) -> None:
    client = console.login("vera")
    html = client.get("/batches/console").get_data(as_text=True)
    assert "console.r2.pdf" in html and "console.pdf" in html
    assert html.index("console.r2.pdf") < html.index("console.pdf<")  # newest first
    got = client.get("/batches/console/files/console.r2.pdf")
    assert got.status_code == 200 and got.data == b"%PDF-1.7 second\n"
    assert client.get("/batches/console/files/console.json").status_code == 404
    assert client.get("/batches/console/files/..%2Fsecret.txt").status_code == 404
    assert client.get("/batches/nope").status_code == 404
    assert client.get("/batches/nope/files/console.pdf").status_code == 404
    assert got.headers["Cache-Control"] == "no-store"  # a label file holds payloads


def test_reports_page_lists_reports_and_serves_only_their_files(console: Console) -> None:
    (console.output / "reports" / "2026-11" / "passwd").symlink_to("/etc/passwd")
    client = console.login("vera")
    html = client.get("/reports").get_data(as_text=True)
    assert "reports/2026-11" in html and "matched" in html
    got = client.get("/reports/reports/2026-11/report.pdf")
    assert got.status_code == 200 and got.data == b"%PDF-1.7 report\n"
    assert client.get("/reports/reports/2026-11/../../secret.txt").status_code == 404
    assert client.get("/reports/reports/secret.txt").status_code == 404
    assert client.get("/reports/reports/2026-11/passwd").status_code == 404  # a link: never


def test_search_by_serial_by_user_and_by_id_prefix(console: Console) -> None:
    client = console.login("vera")
    dev = console.device("CON-2")
    by_serial = client.get("/devices?q=CON-2").get_data(as_text=True)
    assert dev["device_id"] in by_serial and "serial" in by_serial
    by_user = client.get("/devices?q=BOB@example.com").get_data(as_text=True)
    assert dev["device_id"] in by_user and "user" in by_user
    by_prefix = client.get(f"/devices?q={dev['device_id'][:8]}").get_data(as_text=True)
    assert dev["device_id"] in by_prefix
    assert "0 found" in client.get("/devices?q=nothing-like-it").get_data(as_text=True)
    # The devices filters narrow what find found.
    narrowed = client.get("/devices?q=bob@example.com&status=pending").get_data(as_text=True)
    assert "0 found" in narrowed and "with the filters" in narrowed
    kept = client.get("/devices?q=bob@example.com&status=activated&model=M-1")
    assert dev["device_id"] in kept.get_data(as_text=True)
    today = datetime.now(UTC).date()
    later = client.get(f"/devices?q=CON-2&activated_since={today + timedelta(days=1)}")
    assert "0 found" in later.get_data(as_text=True)
    same_day = client.get(f"/devices?q=CON-2&activated_until={today}")
    assert dev["device_id"] in same_day.get_data(as_text=True)


def test_device_list_filters_and_keyset_pages(console: Console) -> None:
    client = console.login("vera")
    html = client.get("/devices?status=pending").get_data(as_text=True)
    ids = [console.device(s)["device_id"] for s in ("CON-3", "CON-4")]
    assert all(i in html for i in ids) and console.device("CON-1")["device_id"] not in html
    from provision.web.console import pages

    old, pages.PAGE_SIZE = pages.PAGE_SIZE, 1
    try:
        first = client.get("/devices?status=pending").get_data(as_text=True)
        nxt = re.search(r'id="next-page" rel="next" href="([^"]+)"', first)
        assert nxt and "status=pending" in nxt.group(1)
        second = client.get(nxt.group(1).replace("&amp;", "&")).get_data(as_text=True)
        assert (ids[0] in first) != (ids[0] in second) and 'id="next-page"' not in second
    finally:
        pages.PAGE_SIZE = old
    bad = client.get("/devices?status=lost")
    assert bad.status_code == 400 and "status: one of" in bad.get_data(as_text=True)
    bad = client.get("/devices?activated_since=yesterday")
    assert bad.status_code == 400 and "is not a date" in bad.get_data(as_text=True)


def test_device_page_shows_everything_to_staff(console: Console) -> None:
    client = console.login("vera")
    dev = console.device("CON-1")
    html = client.get(f"/devices/{dev['device_id']}").get_data(as_text=True)
    # Components, both attempts with their addresses, the actions, the alert.
    assert "LOT-A" in html and "Volta" in html
    assert "alice@example.com" in html and "mallory@example.com" in html
    assert "198.51.100.7" in html and "203.0.113.9" in html and "already_activated" in html
    assert "scan_after_activation" in html
    # A viewer gets no revoke form.
    assert 'id="revoke-form"' not in html
    assert client.get("/devices/0123456789abcdef").status_code == 404
    assert client.get("/devices/not-an-id").status_code == 404
    [event] = console.registry.staff.events(subject=dev["device_id"])
    assert (event.staff, event.action, event.ip) == ("vera", "device.view", "127.0.0.1")


def test_support_revokes_and_unrevokes_through_the_forms(console: Console) -> None:
    client = console.login("sam")
    dev = console.device("CON-1")
    page = f"/devices/{dev['device_id']}"
    assert 'id="revoke-form"' in client.get(page).get_data(as_text=True)
    missing = post_form(client, page, f"{page}/revoke", reason="  ")
    assert missing.status_code == 409 and "reason must say" in missing.get_data(as_text=True)
    done = post_form(client, page, f"{page}/revoke", reason="reported stolen")
    assert done.status_code == 302
    device = console.registry.devices.get(dev["device_id"])
    assert device is not None and device.status == DeviceStatus.REVOKED
    assert device.revoked_by == "staff:sam"
    html = client.get(page).get_data(as_text=True)
    assert "is now revoked" in html and 'id="unrevoke-form"' in html
    assert post_form(client, page, f"{page}/unrevoke", reason="found again").status_code == 302
    device = console.registry.devices.get(dev["device_id"])
    assert device is not None and device.status == DeviceStatus.ACTIVATED
    assert device.revoked_at is None and device.user_id == "alice@example.com"
    # The device's own history has both, with who and from where; its chain is intact.
    actions = console.registry.events.actions_of(device.id)
    revoked, unrevoked = actions[-2], actions[-1]
    assert (revoked.action_type, revoked.actor, revoked.ip) == ("revoked", "staff:sam", "127.0.0.1")
    assert unrevoked.action_type == "unrevoked"
    meta = json.loads(unrevoked.metadata_json)
    assert meta["reason"] == "found again" and meta["revoked_reason"] == "reported stolen"
    assert verify_chains(console.registry, console.keyring).ok
    log = [(e.action, e.subject) for e in console.registry.staff.events(staff_name="sam")]
    assert ("device.revoke", dev["device_id"]) in log and (
        "device.unrevoke",
        dev["device_id"],
    ) in log
    # A pending device un-revoked is pending again.
    pending = console.device("CON-3")
    ppage = f"/devices/{pending['device_id']}"
    post_form(client, ppage, f"{ppage}/revoke", reason="lost in transit")
    post_form(client, ppage, f"{ppage}/unrevoke", reason="arrived")
    device = console.registry.devices.get(pending["device_id"])
    assert device is not None and device.status == DeviceStatus.PENDING
    again = post_form(client, ppage, f"{ppage}/unrevoke", reason="twice")
    assert again.status_code == 409 and "is not revoked" in again.get_data(as_text=True)


def test_a_viewer_is_refused_every_change_with_403(console: Console) -> None:
    client = console.login("vera")
    dev = console.device("CON-2")["device_id"]
    page = f"/devices/{dev}"
    for action, data in (
        (f"{page}/revoke", {"reason": "x"}),
        (f"{page}/unrevoke", {"reason": "x"}),
        ("/alerts/" + "a" * 32 + "/ack", {"note": "x"}),
        ("/recalls", {"lot": "LOT-A", "name": "r1", "reason": "x"}),
        ("/staff", {"username": "eve", "role": "admin", "password": PASSWORD}),
    ):
        resp = post_form(client, page, action, **data)
        assert resp.status_code == 403, action
    assert client.get("/staff").status_code == 403
    device = console.registry.devices.get(dev)
    assert device is not None and device.status == DeviceStatus.ACTIVATED
    denied = [e for e in console.registry.staff.events(staff_name="vera") if e.action == "denied"]
    assert len(denied) == 6


def test_support_may_not_manage_staff(console: Console) -> None:
    client = console.login("sam")
    assert client.get("/staff").status_code == 403
    resp = post_form(client, "/", "/staff", username="eve", role="admin", password=PASSWORD)
    assert resp.status_code == 403 and console.registry.staff.get("eve") is None


def test_admin_adds_and_disables_staff_and_reads_the_audit_log(console: Console) -> None:
    client = console.login("ada")
    resp = post_form(client, "/staff", "/staff", username="eve", role="viewer", password=PASSWORD)
    assert resp.status_code == 302
    eve = console.registry.staff.get("eve")
    assert eve is not None and eve.role == "viewer" and eve.created_by == "ada"
    assert post_form(client, "/staff", "/staff/eve/disable").status_code == 302
    eve = console.registry.staff.get("eve")
    assert eve is not None and not eve.active
    assert post_form(client, "/staff", "/staff/ada/disable").status_code == 400
    html = client.get("/staff").get_data(as_text=True)
    assert "staff.add" in html and "staff.disable" in html and "login" in html


def test_trace_recall_and_owners_csv(console: Console) -> None:
    client = console.login("sam")
    html = client.get("/trace?lot=LOT-A").get_data(as_text=True)
    assert 'id="trace-count">2 devices' in html and 'id="recall-form"' in html
    resp = post_form(
        client,
        "/trace?lot=LOT-A",
        "/recalls",
        lot="LOT-A",
        name="volta-a",
        reason="cells swell",
        hold="on",
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/recalls/volta-a"
    page = client.get("/recalls/volta-a").get_data(as_text=True)
    assert 'id="recall-devices">2<' in page
    csv = client.get("/recalls/volta-a/owners.csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.get_data(as_text=True).splitlines()
    assert lines[0] == "device_id,user,activated_at" and len(lines) == 3
    assert {line.split(",")[1] for line in lines[1:]} == {"alice@example.com", "bob@example.com"}
    dup = post_form(client, "/trace?lot=LOT-A", "/recalls", lot="LOT-A", name="volta-a", reason="x")
    assert dup.status_code == 400
    log = [e.action for e in console.registry.staff.events(staff_name="sam")]
    assert "recall.create" in log and "recall.export_owners" in log and "trace" in log


def test_trace_page_shows_the_first_devices_and_counts_them_all(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provision.web.console import pages

    monkeypatch.setattr(pages, "TRACE_ROWS_SHOWN", 1)
    html = console.login("vera").get("/trace?lot=LOT-A").get_data(as_text=True)
    assert 'id="trace-count">2 devices' in html and "The first 1 shown" in html
    first = min(console.device(s)["id"] for s in ("CON-1", "CON-2"))
    shown = [d for d in console.devices.values() if d["device_id"] in html.split("trace-rows")[1]]
    assert [d["id"] for d in shown] == [first]
    assert "activated 2" in html and "console 2" in html


def test_acknowledge_an_alert_with_a_note(console: Console) -> None:
    client = console.login("sam")
    resp = post_form(client, "/alerts", "/alerts/" + "a" * 32 + "/ack", note="customer resold it")
    assert resp.status_code == 302
    [alert] = console.registry.alerts.listed(status=AlertStatus.ACKNOWLEDGED)
    assert alert.acked_by == "staff:sam" and alert.ack_note == "customer resold it"
    assert "customer resold it" in client.get("/alerts").get_data(as_text=True)
    empty = post_form(client, "/alerts", "/alerts/" + "a" * 32 + "/ack", note=" ")
    assert empty.status_code == 400


def test_stats_page_charts_each_grouping(console: Console) -> None:
    client = console.login("vera")
    for by in ("batch", "model", "line", "week"):
        html = client.get(f"/stats?by={by}").get_data(as_text=True)
        assert '<figure id="stats-chart"><svg' in html, by
    html = client.get("/stats?by=model").get_data(as_text=True)
    assert "<title>M-1: 4 registered</title>" in html and "<title>M-1: 2 activated</title>" in html
    assert client.get("/stats?by=colour").status_code == 400


# -- the staff API --------------------------------------------------------------------------------


def test_staff_api_history_needs_a_token_and_shows_every_attempt(console: Console) -> None:
    client = console.app().test_client()
    dev = console.device("CON-1")["device_id"]
    path = f"/api/v1/staff/devices/{dev}/history"
    unauth = client.get(path)
    assert unauth.status_code == 401 and unauth.json["error"]["reason"] == "unauthorized"
    assert client.get(path, headers={"Authorization": "Bearer pst_nope"}).status_code == 401
    token = staff_lib.issue_token(console.registry, "sam", "test")
    resp = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    data = resp.json
    users = {e["user"] for e in data["pairing_events"]}
    assert users == {"alice@example.com", "mallory@example.com"}
    assert {e["ip"] for e in data["pairing_events"]} == {"198.51.100.7", "203.0.113.9"}
    assert data["components"][0]["lot"] == "LOT-A" and data["device"]["status"] == "activated"
    [event] = [e for e in console.registry.staff.events(staff_name="sam") if e.subject == dev]
    assert event.action == "api.history"
    found = client.get("/api/v1/staff/find?q=CON-2", headers={"Authorization": f"Bearer {token}"})
    assert found.json["hits"][0]["device_id"] == console.device("CON-2")["device_id"]
    none = client.get(
        "/api/v1/staff/devices/0123456789abcdef/history",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert none.status_code == 404 and none.json["error"]["reason"] == "unknown_device"
    staff_lib.disable_staff(console.registry, "sam", "test")
    assert client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # A session cookie is not a token.
    vera = console.login("vera")
    assert vera.get(path).status_code == 401


def test_nothing_secret_reaches_the_log(console: Console, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="provision")
    client = console.app().test_client()
    login(client, "sam", PASSWORD)
    token = staff_lib.issue_token(console.registry, "sam", "test")
    dev = console.device("CON-1")["device_id"]
    client.get(f"/api/v1/staff/devices/{dev}/history", headers={"Authorization": f"Bearer {token}"})
    text = caplog.text
    assert "POST /login 302" in text
    assert PASSWORD not in text and token not in text


def test_figures_are_served_stale_while_one_thread_renews_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from provision.web.console import figures

    calls: list[str] = []

    def slow(_registry: Any, key: str) -> int:
        calls.append(key)
        time.sleep(0.2)
        return len(calls)

    monkeypatch.setattr(figures, "compute", slow)
    cache = figures.Figures(None, ttl=0.1)  # type: ignore[arg-type]
    assert cache.get("status")[0] == 1  # the first computes while the caller waits
    time.sleep(0.15)
    t = time.perf_counter()
    assert cache.get("status")[0] == 1  # stale: served at once, renewed behind
    assert cache.get("status")[0] == 1  # one renewal at a time
    assert time.perf_counter() - t < 0.1
    time.sleep(0.3)
    assert cache.get("status")[0] == 2  # the renewed value (another renewal may start)
    assert calls[:2] == ["status", "status"]


def test_figures_computed_in_a_worker_process_are_the_same(console: Console) -> None:
    client = console.app(figures_process=True).test_client()
    login(client, "vera", PASSWORD)
    html = client.get("/").get_data(as_text=True)
    assert 'id="count-total">4<' in html and 'id="count-activated">2<' in html
    stats = client.get("/stats?by=model").get_data(as_text=True)
    assert "<title>M-1: 4 registered</title>" in stats
    batch = client.get("/batches/console").get_data(as_text=True)
    assert 'id="batch-devices">4<' in batch


def test_a_change_through_the_console_shows_in_the_overview_at_once(console: Console) -> None:
    client = console.login("sam")
    assert 'id="count-revoked">0<' in client.get("/").get_data(as_text=True)
    dev = console.device("CON-2")["device_id"]
    post_form(client, f"/devices/{dev}", f"/devices/{dev}/revoke", reason="stolen")
    assert 'id="count-revoked">1<' in client.get("/").get_data(as_text=True)
