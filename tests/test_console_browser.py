"""The staff console in a real headless Chromium (Debian's), against `provision console` run as
a process: login (good, wrong, the lockout), search by serial and by user, the device page and
a revoke and un-revoke through its forms, trace then recall then the owners CSV, the overview's
chart, and a viewer refused a revoke (403).

Screenshots are kept as test artifacts in test-artifacts/console/ (PROVISION_TEST_ARTIFACTS
overrides the folder); the README's come from there.
"""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Page, Request, Response

from provision.registry import Registry
from provision.states import DeviceStatus
from tests.test_browser import CSP_PROBE, chromium
from tests.test_console import PASSWORD, populate
from tests.test_web import provision_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PROVISION_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
DESKTOP = {"viewport": {"width": 1280, "height": 900}, "locale": "en-GB", "accept_downloads": True}
# The statuses a step may answer with on purpose: a wrong password, a refused role, the lockout.
EXPECTED = {401, 403, 429}


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Page, base: str, name: str, password: str) -> Response | None:
    page.goto(base + "/login")
    page.fill("#username", name)
    page.fill("#password", password)
    with page.expect_navigation() as nav:
        page.click("form button[type=submit]")
    return nav.value


def log_out(page: Page) -> None:
    with page.expect_navigation():
        page.click(".who button")


def test_console_in_chromium(sqlite_url: str, keyring_path: Path, tmp_path: Path) -> None:
    registry = Registry(sqlite_url)
    try:
        site = populate(registry, keyring_path, tmp_path)
        with (
            chromium() as browser,
            provision_server(
                sqlite_url, keyring_path, tmp_path / "server", command="console"
            ) as server,
        ):
            context = browser.new_context(**DESKTOP)
            context.add_init_script(CSP_PROBE)
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" and "status of 40" not in m.text and "429" not in m.text
                    else None
                ),
            )

            def outside(req: Request) -> None:
                if not req.url.startswith(server.base + "/"):
                    problems.append(f"request to another origin: {req.url}")

            page.on("request", outside)
            page.on(
                "response",
                lambda r: (
                    problems.append(f"HTTP {r.status} {r.url}")
                    if r.status >= 400 and r.status not in EXPECTED
                    else None
                ),
            )
            drive(page, server.base, site)
            assert page.evaluate("window.__cspViolations") == []
            assert problems == []
            context.close()
        output = server.output()
    finally:
        registry.close()
    assert PASSWORD not in output
    assert "POST /login 302" in output and "POST /login 429" in output


def drive(page: Page, base: str, site: object) -> None:
    from tests.test_console import Console

    assert isinstance(site, Console)
    registry = site.registry
    one, two = site.device("CON-1")["device_id"], site.device("CON-2")["device_id"]

    # 1. Not logged in: the login page. A wrong password is refused, with the reason.
    page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    shot(page, "login")
    wrong = log_in(page, base, "sam", "not the password at all")
    assert wrong is not None and wrong.status == 401
    assert page.locator("#login-error").inner_text() == "Wrong name or password."

    # 2. The right one: the overview, its counts and its chart (server-drawn SVG).
    good = log_in(page, base, "sam", PASSWORD)
    assert good is not None and good.status == 200 and page.url == base + "/"
    assert page.locator("#whoami").inner_text() == "sam · support"
    assert page.locator("#count-total").inner_text() == "4"
    assert page.locator("#count-activated").inner_text() == "2"
    chart = page.locator("#activations-chart svg")
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 150
    assert chart.locator("rect").count() >= 90
    tall = page.evaluate(
        "Math.max(...[...document.querySelectorAll('#activations-chart rect.s-activated')]"
        ".map(r => r.getBBox().height))"
    )
    assert tall > 100  # today's 2 activations: the tallest bar
    shot(page, "overview")

    # 3. Search by serial, then by user.
    page.click("nav >> text=Devices")
    page.fill("#q", "CON-2")
    page.click(".search button")
    assert page.locator("#results").inner_text().count(two) == 1
    assert "serial" in page.locator("#results").inner_text()
    shot(page, "search-serial")
    page.fill("#q", "ALICE@example.com")
    page.click(".search button")
    results = page.locator("#results").inner_text()
    assert one in results and "user" in results and two not in results
    shot(page, "search-user")

    # 4. The device page: components, attempts (with addresses), actions; revoke, un-revoke.
    page.click(f"#results a:has-text('{one}')")
    assert page.url == f"{base}/devices/{one}"
    pairing = page.locator("#pairing").inner_text()
    assert "mallory@example.com" in pairing and "203.0.113.9" in pairing
    assert "LOT-A" in page.locator("#components").inner_text()
    shot(page, "device")
    page.fill("#revoke-reason", "reported stolen by the customer")
    page.click("#revoke-form button")
    page.wait_for_url(f"{base}/devices/{one}")
    assert page.locator(".flash").inner_text() == f"Device {one} is now revoked."
    device = registry.devices.get(one)
    assert device is not None and device.status == DeviceStatus.REVOKED
    assert device.revoked_by == "staff:sam"
    assert "reported stolen by the customer" in page.locator("#actions").inner_text()
    shot(page, "device-revoked")
    page.fill("#unrevoke-reason", "found in the returns room")
    page.click("#unrevoke-form button")
    page.wait_for_url(f"{base}/devices/{one}")
    device = registry.devices.get(one)
    assert device is not None and device.status == DeviceStatus.ACTIVATED

    # 5. Trace a lot, recall it, download the owners CSV.
    page.click("nav >> text=Trace")
    page.fill("input[name=lot]", "LOT-A")
    page.click("#trace-form button")
    assert page.locator("#trace-count").inner_text() == "2 devices carry it"
    shot(page, "trace")
    page.fill("#recall-name", "volta-lot-a")
    page.fill("#recall-reason", "cells swell above 45 C")
    page.check("#recall-hold")
    page.click("#recall-form button")
    page.wait_for_url(f"{base}/recalls/volta-lot-a")
    assert page.locator("#recall-devices").inner_text() == "2"
    shot(page, "recall")
    with page.expect_download() as download:
        page.click("#owners-csv")
    csv_path = download.value.path()
    lines = Path(csv_path).read_text().splitlines()
    assert lines[0] == "device_id,user,activated_at"
    assert sorted(line.split(",")[1] for line in lines[1:]) == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert download.value.suggested_filename == "volta-lot-a-owners.csv"
    page.click("nav >> text=Stats")
    assert page.locator("#stats-chart svg").is_visible()
    shot(page, "stats")
    log_out(page)

    # 6. A viewer sees no revoke form; a revoke posted anyway (with a valid CSRF token) is 403.
    log_in(page, base, "vera", PASSWORD)
    page.goto(f"{base}/devices/{two}")
    assert page.locator("#revoke-form").count() == 0
    with page.expect_navigation() as nav:
        page.evaluate(
            """() => {
              const f = document.createElement('form');
              f.method = 'post';
              f.action = location.pathname + '/revoke';
              for (const [k, v] of [['reason', 'curious'],
                  ['csrf_token', document.querySelector('input[name=csrf_token]').value]]) {
                const i = document.createElement('input');
                i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
              }
              document.body.appendChild(f);
              f.submit();
            }"""
        )
    assert nav.value is not None and nav.value.status == 403
    assert page.locator("h1").inner_text() == "Not allowed"
    shot(page, "viewer-refused")
    device = registry.devices.get(two)
    assert device is not None and device.status == DeviceStatus.ACTIVATED
    log_out(page)

    # 7. The lockout: with the first wrong password, 5 failures from this address lock it.
    statuses = []
    for _ in range(4):
        resp = log_in(page, base, "vera", "still not the password")
        assert resp is not None
        statuses.append(resp.status)
    assert statuses == [401, 401, 401, 429]
    locked = log_in(page, base, "vera", PASSWORD)
    assert locked is not None and locked.status == 429
    assert "Too many failed logins" in page.locator("#login-error").inner_text()
    shot(page, "locked")
