"""The activation service over HTTP: JSON API, scan page, actions, rate limits, log hygiene."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import http.cookiejar
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from provision.activation import REASONS, authenticate
from provision.audit import revoke
from provision.keys import Keyring, load_keyring
from provision.payload import payload_url, sign_token
from provision.pipeline import register_batch
from provision.registry import Registry
from provision.web import WebSettings, create_app
from provision.web.activation import REASON_STATUS as WEB_REASON_STATUS
from tests.helpers import REASON_STATUS, register_with_components, serials_csv, with_payload

BASE_URL = "http://localhost:5001"
OPEN_LIMIT = "1000 per minute"  # for tests that are not about the rate limit
SUCCESS_KEYS = {"device_id", "device_type", "activation_token"}
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{40,}")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
API = "/api/v1/activations"
_batches = itertools.count(1)


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class Site:
    """One test's registry and keyring, devices registered on demand, apps built on demand."""

    registry: Registry
    keyring_path: Path
    tmp_path: Path
    serials: list[str] = field(default_factory=list)

    @property
    def keyring(self) -> Keyring:
        # Loaded afresh: a test may have rotated or revoked keys meanwhile.
        return load_keyring(self.keyring_path)

    def register(
        self, n: int = 1, *, ttl_days: int = 30, now: datetime | None = None, prefix: str = "WEB"
    ) -> list[dict[str, Any]]:
        """Register `n` new devices; their full registry rows, in label order."""
        batch = f"web-{next(_batches)}"
        manifest = serials_csv(self.tmp_path / f"{batch}.csv", n, prefix=f"{prefix}{batch}-")
        self.serials += [row.split(",")[0] for row in manifest.read_text().splitlines()[1:]]
        register_batch(
            self.registry, self.keyring, manifest, batch=batch, ttl_days=ttl_days, now=now
        )
        batch_id = self.registry.batches.id_of(batch)
        assert batch_id is not None
        rows = [d for chunk in self.registry.devices.labels(batch_id) for d in chunk]
        assert len(rows) == n
        devices = [self.registry.devices.get(d.device_id) for d in rows]
        assert all(d is not None for d in devices)
        return [with_payload(self.keyring, d) for d in devices]  # type: ignore[arg-type]

    def one(self, **kw: Any) -> dict[str, Any]:
        return self.register(1, **kw)[0]

    def app(self, *, rate_limit: str = OPEN_LIMIT, trusted_proxies: int = 0) -> Flask:
        settings = WebSettings(
            db_url=self.registry.url,
            keyring_path=str(self.keyring_path),
            base_url=BASE_URL,
            trusted_proxies=trusted_proxies,
            rate_limit=rate_limit,
        )
        return create_app(settings, registry=self.registry, keyring=self.keyring)

    def client(self, **kw: Any) -> FlaskClient:
        return self.app(**kw).test_client()

    def events(self, device: dict[str, Any]) -> list[dict[str, Any]]:
        return [dataclasses.asdict(e) for e in self.registry.events.pairing_events_of(device["id"])]


@pytest.fixture
def site(registry: Registry, keyring_path: Path, tmp_path: Path) -> Site:
    return Site(registry, keyring_path, tmp_path)


def url(device: dict[str, Any]) -> str:
    """The QR content of the device's label."""
    return payload_url(BASE_URL, device["payload"])


def path(device: dict[str, Any]) -> str:
    """The scan page's path, as a phone opens the QR URL: `/A/<TOKEN>`."""
    return urllib.parse.urlsplit(url(device)).path


def flip_last_char(token: str) -> str:
    return token[:-1] + ("B" if token[-1] == "A" else "A")


def api_activate(
    client: FlaskClient, payload: str, user: str = "alice@example.com", **kw: Any
) -> TestResponse:
    return client.post(API, json={"payload": payload, "user": user}, **kw)


def assert_error(resp: TestResponse, reason: str, status: int) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"reason", "message"}
    assert body["error"]["reason"] == reason
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def csrf_from(resp: TestResponse) -> str:
    found = CSRF_RE.search(resp.get_data(as_text=True))
    assert found, "the scan page has no csrf_token field"
    return found.group(1)


def page_reason(resp: TestResponse) -> str | None:
    found = re.search(r'<code id="reason">([^<]*)</code>', resp.get_data(as_text=True))
    return found.group(1) if found else None


# -- every reason code through the JSON API ----------------------------------------------------


def payload_for(site: Site, reason: str) -> str:
    """A payload that the service must reject with `reason` (keys changed on disk first)."""
    if reason == "malformed":
        return "https://example.com/A/NOT-A-PROVISION-TOKEN"
    if reason == "forged":
        return flip_last_char(url(site.one()))
    if reason == "unknown_key":
        device = site.one()
        expiry = int(device["expires_at"].timestamp())
        return payload_url(BASE_URL, sign_token(9, b"k" * 32, device["device_id"], expiry))
    if reason == "revoked_key":
        device = site.one()  # signed with key 1
        keyring = site.keyring
        keyring.rotate()
        keyring.revoke(1)
        keyring.save()
        return url(device)
    if reason == "expired":
        five_days_ago = datetime.now(UTC) - timedelta(days=5)
        return url(site.one(now=five_days_ago, ttl_days=1))
    if reason == "unknown_device":
        key = site.keyring.active
        assert key.secret is not None
        expiry = int((datetime.now(UTC) + timedelta(days=30)).timestamp())
        return payload_url(BASE_URL, sign_token(key.id, key.secret, "00112233445566ff", expiry))
    if reason == "revoked_device":
        device = site.one()
        revoke(site.registry, site.keyring, device, "stolen from the warehouse", "support")
        return url(device)
    if reason == "already_activated":
        device = site.one()
        first = api_activate(site.client(), url(device))
        assert first.status_code == 201
        return url(device)
    if reason == "recalled":
        return url(held_device(site))
    raise AssertionError(reason)


def held_device(site: Site, name: str = "r-held") -> dict[str, Any]:
    """A pending device that an open recall with --hold matched."""
    from provision.recalls import create_recall
    from provision.trace import TraceQuery

    batch = f"held-{next(_batches)}"
    device = register_with_components(
        site.registry,
        site.keyring,
        site.tmp_path,
        batch,
        [[f"HELD-{batch}", "battery", "CR2032", "", "ACME", f"L-{batch}"]],
    )[f"HELD-{batch}"]
    create_recall(
        site.registry,
        site.keyring,
        name,
        TraceQuery(lot=f"L-{batch}"),
        "cells swell",
        hold=True,
        actor="qa",
    )
    return device


def test_every_reason_code_has_the_status_the_issue_names() -> None:
    assert dict(WEB_REASON_STATUS) == REASON_STATUS
    assert set(REASONS) == set(REASON_STATUS)  # and each has a message


def test_api_activation_gives_201_with_device_type_and_token(site: Site) -> None:
    device = site.one()
    resp = api_activate(site.client(), url(device), "alice@example.com")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert SUCCESS_KEYS <= set(body) <= SUCCESS_KEYS | {"activated_at"}
    assert body["device_id"] == device["device_id"]
    assert body["device_type"] == "sensor"
    assert TOKEN_RE.fullmatch(body["activation_token"])
    assert datetime.fromisoformat(body["activated_at"]).tzinfo is not None
    now = site.registry.devices.get(device["device_id"])
    assert now is not None
    assert now is not None
    assert now.status == "activated" and now.user_id == "alice@example.com"
    assert authenticate(site.registry, device["device_id"], body["activation_token"])
    assert resp.headers["Cache-Control"] == "no-store"  # the body holds a token


@pytest.mark.parametrize("reason", list(REASON_STATUS))
def test_api_rejects_with_every_reason_code(site: Site, reason: str) -> None:
    payload = payload_for(site, reason)
    client = site.client()  # after the keyring changes the payload needed
    resp = api_activate(client, payload, "mallory@example.com")
    assert_error(resp, reason, REASON_STATUS[reason])
    assert resp.get_json()["error"]["message"] == REASONS[reason]


def test_api_accepts_bare_and_lower_case_tokens(site: Site) -> None:
    a, b = site.register(2)
    client = site.client()
    assert api_activate(client, a["payload"]).status_code == 201
    assert api_activate(client, url(b).lower()).status_code == 201


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "payload=x&user=y", "content_type": "application/x-www-form-urlencoded"},
        {"data": "{not json", "content_type": "application/json"},
        {"json": ["a", "list"]},
        {"json": {"payload": "x"}},
        {"json": {"user": "alice"}},
        {"json": {"payload": 42, "user": "alice"}},
        {"json": {"payload": "x", "user": None}},
    ],
    ids=["form", "bad-json", "list", "no-user", "no-payload", "int-payload", "null-user"],
)
def test_api_request_that_is_not_the_documented_json_is_malformed(
    site: Site, kwargs: dict[str, Any]
) -> None:
    assert_error(site.client().post(API, **kwargs), "malformed", 400)


def test_api_refuses_a_user_with_control_characters(site: Site) -> None:
    device = site.one()
    resp = api_activate(site.client(), url(device), "eve\x1b[2J")
    assert resp.status_code == 400
    assert site.registry.devices.get(device["device_id"]).status == "pending"  # type: ignore[union-attr]


def test_api_records_every_attempt_as_a_pairing_event(site: Site) -> None:
    device = site.one()
    client = site.client()
    headers = {"User-Agent": "TestPhone/1.0"}
    body = {"payload": url(device), "user": "alice", "fingerprint": "sha256:" + "ab" * 32}
    assert client.post(API, json=body, headers=headers).status_code == 201
    assert client.post(API, json=body | {"user": "bob"}, headers=headers).status_code == 409
    events = site.events(device)
    assert [(e["result"], e["reason"], e["user_id"]) for e in events] == [
        ("accepted", None, "alice"),
        ("rejected", "already_activated", "bob"),
    ]
    for e in events:
        assert e["ip"] == "127.0.0.1"
        assert e["user_agent"] == "TestPhone/1.0"
        assert e["fingerprint"] == "sha256:" + "ab" * 32


def test_unknown_api_routes_and_methods_answer_json(site: Site) -> None:
    client = site.client()
    assert_error(client.get("/api/v1/nothing"), "not_found", 404)
    assert_error(client.get(API), "method_not_allowed", 405)


# -- the scan page -----------------------------------------------------------------------------


@pytest.mark.parametrize("lower", [False, True], ids=["QR-uppercase", "lowercase"])
def test_scan_page_shows_type_model_status_and_the_form(site: Site, lower: bool) -> None:
    device = site.one()
    target = path(device).lower() if lower else path(device)
    assert target.startswith("/a/" if lower else "/A/")
    resp = site.client().get(target)
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "sensor" in html and "M-1" in html and "Acme" in html
    assert re.search(r'id="status"[^>]*>pending<', html)
    assert '<form method="post"' in html
    assert 'name="csrf_token"' in html and CSRF_RE.search(html)
    assert 'name="fingerprint"' in html and 'name="user"' in html
    assert "/static/fingerprint.js" in html
    # Security headers on every page; the script is allowed by its nonce, nothing inline.
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'nonce="{nonce.group(1)}"' in html
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_each_page_gets_a_fresh_csp_nonce(site: Site) -> None:
    device = site.one()
    client = site.client()
    csps = {client.get(path(device)).headers["Content-Security-Policy"] for _ in range(3)}
    assert len(csps) == 3


def test_answers_without_a_script_allow_no_script_but_our_own_files(site: Site) -> None:
    client = site.client()
    resp = client.post("/api/v1/activations", json={"payload": "nonsense", "user": "a@b.c"})
    assert resp.status_code == 400
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "nonce-" not in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp


def test_a_request_without_a_session_cookie_builds_no_signing_serializer(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API call carries no session cookie: its empty session comes without the cookie
    signer being built (a cost on every activation); one with the cookie is still read."""
    device = site.one()
    app = site.app()
    client = app.test_client()
    page = client.get(path(device))  # the scan page: its CSRF token goes into the session
    assert page.status_code == 200 and client.get_cookie("session") is not None
    sessions = app.session_interface
    built: list[bool] = []
    real = sessions.get_signing_serializer

    def counted(app: Flask) -> Any:
        built.append(True)
        return real(app)

    monkeypatch.setattr(sessions, "get_signing_serializer", counted)
    api = app.test_client()  # no cookie
    assert api_activate(api, device["payload"]).status_code == 201
    assert built == []
    assert client.get(path(device)).status_code == 200  # with the cookie: read, and signed
    assert built


def test_static_assets_are_served(site: Site) -> None:
    client = site.client()
    js = client.get("/static/fingerprint.js")
    assert js.status_code == 200 and "fingerprint" in js.get_data(as_text=True)
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_scan_page_post_without_csrf_token_is_refused(site: Site) -> None:
    device = site.one()
    client = site.client()
    client.get(path(device))  # a session exists, but the form field is missing
    resp = client.post(path(device), data={"user": "alice", "fingerprint": "fnv:1"})
    assert resp.status_code == 400
    assert page_reason(resp) == "csrf"
    assert site.registry.devices.get(device["device_id"]).status == "pending"  # type: ignore[union-attr]
    assert site.events(device) == []


def test_scan_page_post_with_a_forged_csrf_token_is_refused(site: Site) -> None:
    device = site.one()
    client = site.client()
    client.get(path(device))
    other = site.client()  # another browser's token is no good in this session
    token = csrf_from(other.get(path(device)))
    resp = client.post(path(device), data={"user": "alice", "csrf_token": token})
    assert resp.status_code == 400 and page_reason(resp) == "csrf"
    assert site.registry.devices.get(device["device_id"]).status == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize("lower", [False, True], ids=["QR-uppercase", "lowercase"])
def test_scan_page_activates_once_and_shows_the_token(site: Site, lower: bool) -> None:
    device = site.one()
    target = path(device).lower() if lower else path(device)
    client = site.client()
    token = csrf_from(client.get(target))
    form = {"csrf_token": token, "user": "alice@example.com", "fingerprint": "fnv:0123abcd"}
    resp = client.post(target, data=form, headers={"User-Agent": "Phone/2"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    html = resp.get_data(as_text=True)
    shown = re.search(r'id="activation-token">([^<]+)<', html)
    assert shown and TOKEN_RE.fullmatch(shown.group(1))
    assert "alice@example.com" in html and device["device_id"] in html
    assert authenticate(site.registry, device["device_id"], shown.group(1)) is not None
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Content-Security-Policy" in resp.headers
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    [event] = site.events(device)
    assert (event["result"], event["fingerprint"], event["user_agent"], event["ip"]) == (
        "accepted",
        "fnv:0123abcd",
        "Phone/2",
        "127.0.0.1",
    )

    again = client.post(target, data=form | {"user": "bob"})
    assert again.status_code == 409
    assert page_reason(again) == "already_activated"
    assert REASONS["already_activated"] in again.get_data(as_text=True)
    assert shown.group(1) not in again.get_data(as_text=True)
    # The page itself now says so, and offers no form.
    later = client.get(target).get_data(as_text=True)
    assert re.search(r'id="status"[^>]*>activated<', later)
    assert "<form" not in later and 'id="not-pending"' in later


def test_scan_page_post_without_a_user_is_refused_and_changes_nothing(site: Site) -> None:
    device = site.one()
    client = site.client()
    token = csrf_from(client.get(path(device)))
    resp = client.post(path(device), data={"csrf_token": token, "user": "  "})
    assert resp.status_code == 400 and page_reason(resp) == "missing_user"
    assert site.registry.devices.get(device["device_id"]).status == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize("reason", list(REASON_STATUS))
def test_scan_page_post_names_every_reason_code(site: Site, reason: str) -> None:
    payload = payload_for(site, reason)
    helper = site.one()  # any pending device's page gives this session a CSRF token
    client = site.client()
    token = csrf_from(client.get(path(helper)))
    target = "/A/" + payload.rsplit("/", 1)[-1]
    resp = client.post(target, data={"csrf_token": token, "user": "mallory"})
    assert resp.status_code == REASON_STATUS[reason], resp.get_data(as_text=True)
    assert resp.mimetype == "text/html"
    assert page_reason(resp) == reason
    assert REASONS[reason].replace("'", "&#39;") in resp.get_data(as_text=True)


@pytest.mark.parametrize("reason", [r for r in REASON_STATUS if r != "already_activated"])
def test_scan_page_get_of_a_bad_payload_is_an_error_page(site: Site, reason: str) -> None:
    payload = payload_for(site, reason)
    resp = site.client().get("/A/" + payload.rsplit("/", 1)[-1])
    if reason == "revoked_device":  # the page shows the device, and says it is revoked
        assert resp.status_code == 200
        html = resp.get_data(as_text=True)
        assert re.search(r'id="status"[^>]*>revoked<', html) and "<form" not in html
        return
    assert resp.status_code == REASON_STATUS[reason]
    assert page_reason(resp) == reason
    assert "<form" not in resp.get_data(as_text=True)


def test_unknown_page_is_a_404_page(site: Site) -> None:
    resp = site.client().get("/nothing/here")
    assert resp.status_code == 404 and page_reason(resp) == "not_found"
    assert "Content-Security-Policy" in resp.headers


# -- actions and history with the activation token ----------------------------------------------


def test_actions_need_the_activation_token_and_show_up_in_history(site: Site) -> None:
    device, other = site.register(2)
    client = site.client()
    token = api_activate(client, url(device)).get_json()["activation_token"]
    other_token = api_activate(client, url(other), "bob").get_json()["activation_token"]
    actions = f"/api/v1/devices/{device['device_id']}/actions"
    history = f"/api/v1/devices/{device['device_id']}/history"
    body = {"action_type": "firmware_update", "metadata": {"version": "2.1.0"}}

    resp = client.post(actions, json=body, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    action_id = resp.get_json()["action_id"]
    assert isinstance(action_id, int)

    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Bearer {other_token}"},  # another device's token
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
    ):
        refused = client.post(actions, json=body, headers=headers)
        assert_error(refused, "unauthorized", 401)
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(client.get(history, headers=headers), "unauthorized", 401)
    unknown = "/api/v1/devices/00112233445566ff/actions"
    assert_error(
        client.post(unknown, json=body, headers={"Authorization": f"Bearer {token}"}),
        "unauthorized",
        401,
    )

    resp = client.get(history, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    hist = resp.get_json()
    assert {"device", "components", "pairing_events", "actions"} <= set(hist)
    assert hist["device"]["device_id"] == device["device_id"]
    assert hist["device"]["status"] == "activated"
    assert [e["result"] for e in hist["pairing_events"]] == ["accepted"]
    logged = [a for a in hist["actions"] if a["id"] == action_id]
    assert len(logged) == 1
    assert logged[0]["action_type"] == "firmware_update"
    assert logged[0]["metadata"] == {"version": "2.1.0"}
    assert [a["action_type"] for a in hist["actions"]] == ["activated", "firmware_update"]
    # The activation token itself is never part of the history.
    assert token not in resp.get_data(as_text=True)


def test_action_with_a_bad_body_is_400(site: Site) -> None:
    device = site.one()
    client = site.client()
    token = api_activate(client, url(device)).get_json()["activation_token"]
    actions = f"/api/v1/devices/{device['device_id']}/actions"
    auth = {"Authorization": f"Bearer {token}"}
    for body in ({}, {"action_type": 5}, {"action_type": "x", "metadata": [1]}):
        assert_error(client.post(actions, json=body, headers=auth), "bad_request", 400)


# -- rate limit and client address -------------------------------------------------------------


def test_fourth_activation_attempt_from_one_address_is_429(site: Site) -> None:
    device = site.one()
    client = site.client(rate_limit="3 per minute")
    assert api_activate(client, url(device)).status_code == 201
    assert api_activate(client, url(device)).status_code == 409
    assert api_activate(client, url(device)).status_code == 409
    resp = api_activate(client, url(device))
    assert_error(resp, "rate_limited", 429)
    assert resp.headers["Retry-After"] == "60"  # the window: the provision client waits it
    assert not any(name.startswith("X-RateLimit") for name, _ in resp.headers)
    assert len(site.events(device)) == 3  # the refused attempt never reached the registry
    # Another address still gets through.
    other = api_activate(client, url(device), environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert other.status_code == 409


def test_rate_limit_counts_page_and_api_attempts_together(site: Site) -> None:
    device = site.one()
    client = site.client(rate_limit="3 per minute")
    token = csrf_from(client.get(path(device)))  # GETs are not limited
    for _ in range(3):
        client.get(path(device))
    form = {"csrf_token": token, "user": "alice"}
    assert client.post(path(device), data=form).status_code == 200
    assert client.post(path(device).lower(), data=form).status_code == 409
    assert api_activate(client, url(device)).status_code == 409
    # Every route to activation is spent: switching the path's case or going to the API
    # buys no extra attempts.
    limited = client.post(path(device), data=form)
    assert limited.status_code == 429 and page_reason(limited) == "rate_limited"
    assert client.post(path(device).lower(), data=form).status_code == 429
    assert_error(api_activate(client, url(device)), "rate_limited", 429)


def test_without_trusted_proxy_x_forwarded_for_is_ignored(site: Site) -> None:
    device = site.one()
    client = site.client(rate_limit="3 per minute", trusted_proxies=0)
    codes = [
        api_activate(client, url(device), headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
        for i in range(1, 5)
    ]
    assert codes == [201, 409, 409, 429]
    assert {e["ip"] for e in site.events(device)} == {"127.0.0.1"}


def test_with_a_trusted_proxy_x_forwarded_for_is_the_client_address(site: Site) -> None:
    device = site.one()
    client = site.client(rate_limit="3 per minute", trusted_proxies=1)

    def attempt(xff: str) -> int:
        return api_activate(client, url(device), headers={"X-Forwarded-For": xff}).status_code

    assert [attempt("203.0.113.1") for _ in range(4)] == [201, 409, 409, 429]
    assert attempt("203.0.113.2") == 409  # a different client: its own limit
    # With one trusted proxy only the address that proxy saw counts, not what the client
    # wrote to the left of it.
    assert attempt("203.0.113.1, 203.0.113.3") == 409
    assert attempt("203.0.113.1, 203.0.113.3") == 409
    assert attempt("203.0.113.1, 203.0.113.3") == 409
    assert attempt("203.0.113.1, 203.0.113.3") == 429
    assert [e["ip"] for e in site.events(device)] == [
        *["203.0.113.1"] * 3,
        "203.0.113.2",
        *["203.0.113.3"] * 3,
    ]


# -- nothing secret in the server's log --------------------------------------------------------


def test_unexpected_error_is_logged_without_the_token_in_the_path(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    device = site.one()
    app = site.app()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(site.registry.devices, "get", broken)  # the scan page's read
    monkeypatch.setattr(site.registry.events, "device_for_activation", broken)  # activation's
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    resp = client.get(path(device))
    assert resp.status_code == 500
    assert page_reason(resp) == "internal"
    api = api_activate(client, url(device))
    assert_error(api, "internal", 500)
    assert "database went away" in caplog.text  # the traceback is logged...
    assert "/A/<token>" in caplog.text
    assert device["payload"] not in caplog.text  # ... but not the token in the path
    assert "database went away" not in resp.get_data(as_text=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A `provision serve` process on a loopback port; its stdout and stderr go to files."""

    base: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


@contextlib.contextmanager
def provision_server(
    db_url: str,
    keyring_path: Path,
    workdir: Path,
    *args: str,
    timeout: float = 60,
    command: str = "serve",
) -> Iterator[Server]:
    """Run `python -m provision --verbose serve` (or COMMAND: `console`) until the block ends;
    fail if it never answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env |= {
        "PROVISION_DB_URL": db_url,
        "PROVISION_KEYRING": str(keyring_path),
        "PROVISION_BASE_URL": base,
        "PROVISION_OUTPUT": str(workdir / "output"),
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "provision", "--verbose", command]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "4", *args]
    out, err = workdir / "server.stdout", workdir / "server.stderr"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(argv, env=env, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL)
    server = Server(base, proc, out, err)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"provision {command} exited with {proc.returncode}:\n{server.output()}"
                )
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                    if json.load(resp) == {"ok": True}:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"provision {command} did not answer in {timeout}s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass
class Reply:
    status: int
    headers: Any
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    json_body: Any = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request; HTTP error statuses are answers, not exceptions."""
    data = None
    hdrs = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        hdrs["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, headers=hdrs)
    try:
        with opener.open(req, timeout=30) as resp:
            return Reply(resp.status, resp.headers, resp.read().decode())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read().decode())


def secret_forms(keyring: Keyring) -> list[str]:
    """Every key, the pepper, the data key and the session key, in every usual encoding."""
    raw = [keyring.pepper, keyring.data_key] + [k.secret for k in keyring.keys if k.secret]
    raw.append(hmac.new(keyring.pepper, b"provision/web-session/v1\x00", hashlib.sha256).digest())
    forms: list[str] = []
    for b in raw:
        forms += [
            base64.b64encode(b).decode(),
            base64.urlsafe_b64encode(b).decode().rstrip("="),
            b.hex(),
        ]
    return forms


def test_server_log_never_shows_a_token_key_or_serial(
    site: Site, db_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    by_api, by_page, forged = site.register(3, prefix="LEAKYSERIAL")
    serials = site.serials
    assert len(serials) == 3 and all(s.startswith("LEAKYSERIAL") for s in serials)

    with provision_server(
        db_url, keyring_path, tmp_path / "srv", "--rate-limit", OPEN_LIMIT
    ) as srv:
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        api = srv.base + API
        # 1. The JSON API, a refused second attempt, a forged payload.
        first = fetch(opener, api, json_body={"payload": url(by_api), "user": "alice"})
        assert first.status == 201, first.body
        api_token = first.json()["activation_token"]
        again = fetch(opener, api, json_body={"payload": url(by_api), "user": "bob"})
        assert again.status == 409
        bad = flip_last_char(url(forged))
        assert fetch(opener, api, json_body={"payload": bad, "user": "x"}).status == 403
        # 2. The scan page (QR path and lowercase path), its form, a second submit.
        page_url = srv.base + path(by_page)
        scan = fetch(opener, page_url)
        assert scan.status == 200 and "M-1" in scan.body
        assert fetch(opener, srv.base + path(by_page).lower()).status == 200
        csrf = CSRF_RE.search(scan.body)
        assert csrf
        form = {"csrf_token": csrf.group(1), "user": "carol", "fingerprint": "fnv:00ff"}
        done = fetch(opener, page_url, form=form)
        assert done.status == 200, done.body
        assert done.headers["Cache-Control"] == "no-store"
        shown = re.search(r'id="activation-token">([^<]+)<', done.body)
        assert shown
        page_token = shown.group(1)
        assert fetch(opener, page_url, form=form).status == 409
        # 3. An action and the history, with the token; and a wrong token.
        dev = by_api["device_id"]
        auth = {"Authorization": f"Bearer {api_token}"}
        logged = fetch(
            opener,
            f"{srv.base}/api/v1/devices/{dev}/actions",
            json_body={"action_type": "firmware_update", "metadata": {"v": "2"}},
            headers=auth,
        )
        assert logged.status == 201, logged.body
        hist = fetch(opener, f"{srv.base}/api/v1/devices/{dev}/history", headers=auth)
        assert hist.status == 200
        assert logged.json()["action_id"] in [a["id"] for a in hist.json()["actions"]]
        wrong = {"Authorization": f"Bearer {page_token}"}
        assert (
            fetch(opener, f"{srv.base}/api/v1/devices/{dev}/history", headers=wrong).status == 401
        )

    output = srv.output()
    assert srv.proc.returncode is not None
    # The access log is there, with the payload token redacted from the path...
    assert re.search(r"127\.0\.0\.1 GET /A/<token> 200", output), output
    assert re.search(r"127\.0\.0\.1 GET /a/<token> 200", output), output
    assert re.search(r"127\.0\.0\.1 POST /A/<token> 200", output), output
    assert re.search(r"127\.0\.0\.1 POST /A/<token> 409", output), output
    assert re.search(rf"POST /api/v1/devices/{dev}/actions 201", output), output
    # ... and nothing secret: tokens, payloads (either case), keys, serials.
    payloads = [d["payload"] for d in (by_api, by_page, forged)] + [bad.rsplit("/", 1)[-1]]
    needles = [api_token, page_token, *serials, *secret_forms(load_keyring(keyring_path))]
    needles += [p for t in payloads for p in (t, t.lower())]
    for needle in needles:
        assert needle not in output, f"{needle[:6]}... leaked into the server's log output"
