"""A real headless Chromium, phone-sized, through scan page, form and activated page.

Chromium is Debian's /usr/bin/chromium (`make test` installs it when missing), driven by the
`playwright` package without any browser download of its own.
"""

from __future__ import annotations

import contextlib
import re
import struct
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    sync_playwright,
)

from provision.activation import REASONS, authenticate
from provision.keys import load_keyring
from provision.payload import payload_url
from provision.pipeline import register_batch
from provision.registry import Registry
from tests.helpers import serials_csv, with_payload
from tests.test_web import provision_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "screen": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
    "user_agent": PHONE_UA,
    "locale": "en-GB",
    "timezone_id": "Europe/Berlin",
}
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{40,}")
FINGERPRINT_RE = re.compile(r"(sha256:[0-9a-f]{64}|fnv:[0-9a-f]{16})")
# Records CSP violations in the page; init scripts run outside the page's CSP.
CSP_PROBE = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's headless Chromium; a missing browser fails the test (it is never skipped)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test drives Debian's chromium; "
            "`make test` installs it (or run: apt-get install chromium)",
            pytrace=False,
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Phone:
    """One browser context at a phone's size; every console error and failure is kept."""

    def __init__(self, browser: Browser) -> None:
        self.context: BrowserContext = browser.new_context(**PHONE)
        self.context.add_init_script(CSP_PROBE)
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("response", self._response)
        self.page.on(
            "requestfailed",
            lambda req: self.problems.append(f"request failed: {req.url} {req.failure}"),
        )

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            self.problems.append(f"console {msg.type}: {msg.text}")

    def _response(self, resp: Response) -> None:
        # Only a refused activation may answer with an error status: the page naming it.
        if resp.status >= 400 and not (resp.request.is_navigation_request() and resp.status == 409):
            self.problems.append(f"HTTP {resp.status}: {resp.request.method} {resp.url}")

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("window.__cspViolations || []"))

    def close(self) -> None:
        self.context.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def register_one(registry: Registry, keyring_path: Path, tmp_path: Path) -> dict[str, Any]:
    keyring = load_keyring(keyring_path)
    manifest = serials_csv(tmp_path / "phone.csv", 1, prefix="PHONE", device_type="thermostat")
    register_batch(registry, keyring, manifest, batch="phones")
    batch_id = registry.batches.id_of("phones")
    assert batch_id is not None
    [[row]] = list(registry.devices.labels(batch_id))
    device = registry.devices.get(row.device_id)
    assert device is not None
    return with_payload(keyring, device)


def test_phone_scans_the_qr_url_activates_and_sees_the_token(
    sqlite_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    registry = Registry(sqlite_url)
    try:
        device = register_one(registry, keyring_path, tmp_path)
        with (
            chromium() as browser,
            provision_server(sqlite_url, keyring_path, tmp_path / "server") as server,
        ):
            phones = [Phone(browser), Phone(browser)]
            try:
                drive_the_phones(server.base, registry, device, tmp_path, *phones)
            finally:
                for phone in phones:
                    phone.close()
        output = server.output()
    finally:
        registry.close()
    # The server saw it all, and logged the scan URL without its token.
    assert "GET /A/<token> 200" in output and "POST /A/<token> 200" in output, output
    assert "POST /A/<token> 409" in output, output
    assert device["payload"] not in output and device["payload"].lower() not in output


def drive_the_phones(
    base: str, registry: Registry, device: dict[str, Any], tmp_path: Path, alice: Phone, bob: Phone
) -> None:
    # The QR holds the uppercase URL; the camera app opens it as it is.
    qr_url = payload_url(base, device["payload"])
    assert qr_url == qr_url.upper()

    # 1. Both phones open the scan page: type, model, status and the form.
    for phone in (alice, bob):
        resp = phone.page.goto(qr_url, wait_until="load")
        assert resp is not None and resp.status == 200
        assert urllib.parse.urlsplit(phone.page.url).path.startswith("/A/")
        headers = resp.headers
        assert "content-security-policy" in headers and headers["x-frame-options"] == "DENY"
        page = phone.page
        assert page.locator("h1").inner_text().lower().startswith("thermostat")
        assert page.locator("h1 .model").inner_text() == "M-1"
        assert page.locator("#status").inner_text() == "pending"
        assert page.locator("#device-id").inner_text() == device["device_id"]
        assert page.locator("#activate-form").is_visible()
        assert page.locator("#activate").is_visible()
        # The fingerprint script ran (CSP allowed it) and filled the hidden field; loopback
        # http is a secure context, so SubtleCrypto's SHA-256 replaces the FNV fallback.
        assert page.evaluate("window.isSecureContext") is True
        page.wait_for_function(
            "document.getElementById('fingerprint').value.startsWith('sha256:')", timeout=10_000
        )
        assert phone.csp_violations() == []
        # Mobile-first: nothing wider than the phone's screen.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    alice.page.screenshot(path=str(tmp_path / "browser-scan.png"), full_page=True)
    fingerprint = alice.page.input_value("#fingerprint")
    assert FINGERPRINT_RE.fullmatch(fingerprint), fingerprint
    user_agent = alice.page.evaluate("navigator.userAgent")
    assert user_agent == PHONE_UA

    # 2. Alice types her address and taps the button: the activated page shows the token.
    alice.page.locator("#user").tap()
    alice.page.locator("#user").fill("alice@example.com")
    with alice.page.expect_navigation(wait_until="load") as nav:
        alice.page.locator("#activate").tap()
    done = nav.value
    assert done is not None and done.status == 200, done and done.text()
    assert done.request.method == "POST"
    assert done.headers["cache-control"] == "no-store"
    assert "content-security-policy" in done.headers
    assert done.headers["referrer-policy"] == "no-referrer"
    assert alice.page.locator("h1").inner_text() == "Activated"
    token = alice.page.locator("#activation-token").inner_text().strip()
    assert TOKEN_RE.fullmatch(token), token
    assert "alice@example.com" in alice.page.locator("#activated-msg").inner_text()
    assert alice.csp_violations() == []
    shot = tmp_path / "browser-activated.png"
    alice.page.screenshot(path=str(shot), full_page=True)
    assert shot.exists() and shot.stat().st_size > 1000
    width, height = png_size(shot)
    assert width == 390 * 3 and height >= 844 * 3  # the phone's size at its pixel ratio

    # 3. The registry agrees: activated for alice, the token works, the pairing event has
    #    the browser's fingerprint and user agent.
    now = registry.devices.get(device["device_id"])
    assert now is not None and now.status == "activated" and now.user_id == "alice@example.com"
    assert authenticate(registry, device["device_id"], token) is not None
    [event] = registry.events.pairing_events_of(device["id"])
    assert event.result == "accepted" and event.reason is None
    assert event.fingerprint == fingerprint
    assert event.user_agent == user_agent
    assert event.ip == "127.0.0.1"

    # 4. Bob's phone had the form open too; his submit is refused with already_activated.
    bob.page.locator("#user").fill("bob@example.com")
    with bob.page.expect_navigation(wait_until="load") as nav:
        bob.page.locator("#activate").tap()
    refused = nav.value
    assert refused is not None and refused.status == 409
    assert bob.page.locator("#reason").inner_text() == "already_activated"
    assert bob.page.locator("#error-message").inner_text() == REASONS["already_activated"]
    assert token not in bob.page.content()
    assert bob.csp_violations() == []
    bob.page.screenshot(path=str(tmp_path / "browser-refused.png"), full_page=True)
    events = registry.events.pairing_events_of(device["id"])
    assert [(e.result, e.reason) for e in events] == [
        ("accepted", None),
        ("rejected", "already_activated"),
    ]

    # 5. Scanning the box again shows the device as activated, with no form to submit.
    again = alice.page.goto(qr_url, wait_until="load")
    assert again is not None and again.status == 200
    assert alice.page.locator("#status").inner_text() == "activated"
    assert alice.page.locator("#not-pending").is_visible()
    assert alice.page.locator("form").count() == 0
    assert token not in alice.page.content()

    assert alice.csp_violations() == []
    # No CSP violation, script error or failed load anywhere; Chromium reports the refused
    # activation's 409 document on the console, and that is all.
    assert alice.problems == []
    assert bob.problems == [
        "console error: Failed to load resource: the server responded with a status of 409 "
        "(CONFLICT)"
    ]
