"""`provision alerts`: each rule on a registry built with known situations, on both databases;
stable ids, incremental runs that find what a full run finds, acknowledgement, --fail-on,
rules files, and signed webhook deliveries to a real local HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, text

from provision.activation import ActivationRejected, activate
from provision.alerts import evaluate_alerts, load_rules
from provision.audit import log_action, revoke
from provision.errors import ConfigError
from provision.keys import Keyring, load_keyring
from provision.payload import payload_url
from provision.pipeline import register_batch
from provision.registry import Registry
from provision.registry.schema import alert_marks, alerts
from provision.serials import device_id
from provision.web import WebSettings, create_app
from tests.helpers import with_payload, write_csv

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BASE = "http://localhost:5001"
JUNK = "HTTP://X/A/" + "A" * 48  # a payload no key signed: forged, naming no device


class Fleet:
    """Batch `main`: 60 devices registered at T0 (M-prefixed serials), batch `idle`: 3
    devices activated 40 days before NOW and silent since. Each test adds its situations."""

    def __init__(self, registry: Registry, keyring_path: Path, tmp: Path) -> None:
        self.registry = registry
        self.keyring: Keyring = load_keyring(keyring_path)
        header = ["serial", "device_type", "manufactured_at"]
        rows = [[f"M{i:02d}", "thermostat", "2026-10-20"] for i in range(60)]
        rows[59][2] = "2026-11-20T08:00:00+01:00"  # made after it will be activated
        register_batch(
            registry, self.keyring, write_csv(tmp / "m.csv", header, rows), batch="main", now=T0
        )
        idle = write_csv(tmp / "i.csv", header, [[f"I{i}", "sensor", ""] for i in range(3)])
        register_batch(registry, self.keyring, idle, batch="idle", now=NOW - timedelta(days=45))
        for i in range(3):
            self.activate(f"I{i}", NOW - timedelta(days=40), ip=f"10.9.9.{i}")

    def device(self, serial: str) -> Any:
        dev = self.registry.devices.get(device_id(self.keyring.pepper, serial))
        assert dev is not None
        return dev

    def url(self, serial: str) -> str:
        return payload_url(BASE, with_payload(self.keyring, self.device(serial))["payload"])

    def activate(
        self, serial: str, when: datetime, *, ip: str = "10.0.0.1", user: str | None = None
    ) -> int:
        activate(
            self.registry, self.keyring, self.url(serial), user or f"{serial.lower()}@example.com",
            ip=ip, now=when,
        )  # fmt: skip
        return self.last_event()

    def scan(self, url: str, when: datetime, *, ip: str, fingerprint: str | None = None) -> int:
        with pytest.raises(ActivationRejected):
            activate(
                self.registry, self.keyring, url, "someone", ip=ip, fingerprint=fingerprint,
                now=when,
            )  # fmt: skip
        return self.last_event()

    def last_event(self) -> int:
        with self.registry.engine.connect() as conn:
            return int(conn.execute(text("SELECT MAX(id) FROM device_pairing_events")).scalar())

    def evaluate(self, **kw: Any) -> Any:
        kw.setdefault("now", NOW)
        return evaluate_alerts(self.registry, self.keyring, **kw)

    def forget_alerts(self) -> None:
        with self.registry.engine.begin() as conn:
            conn.execute(delete(alerts))
            conn.execute(delete(alert_marks))


@pytest.fixture
def fleet(registry: Registry, keyring_path: Path, tmp_path: Path) -> Fleet:
    return Fleet(registry, keyring_path, tmp_path)


def build_situations(f: Fleet) -> dict[str, Any]:
    """One case of each rule, and a near miss beside each; returns the expected alerts."""
    did = lambda s: f.device(s).device_id  # noqa: E731
    at = T0 + timedelta(days=2)
    # cloned_label: M00 scanned again from 3 addresses within 24 h (and once more, 3 days on);
    # M01 from only 2.
    f.activate("M00", at)
    cloned = [f.scan(f.url("M00"), at + timedelta(hours=h), ip=f"172.16.0.{h}") for h in (1, 5, 20)]
    f.scan(f.url("M00"), at + timedelta(days=3), ip="172.16.0.99")
    f.activate("M01", at)
    for h in (1, 2):
        f.scan(f.url("M01"), at + timedelta(hours=h), ip=f"172.17.0.{h}")
    # forgery_burst: 20 forged payloads from one address in 9.5 minutes; 19 from another; 20
    # from a third spread over 20 minutes.
    burst = [f.scan(JUNK, at + timedelta(seconds=30 * k), ip="198.51.100.7") for k in range(20)]
    for k in range(19):
        f.scan(JUNK, at + timedelta(seconds=30 * k), ip="198.51.100.8")
    for k in range(20):
        f.scan(JUNK, at + timedelta(seconds=63 * k), ip="198.51.100.9")
    # mass_activation: one user activates M10..M29 within 57 minutes (from many addresses);
    # one address activates M30..M49 within 57 minutes (for many users).
    reseller = [
        f.activate(f"M{i}", at + timedelta(hours=1, minutes=3 * (i - 10)), ip=f"10.1.0.{i}",
                   user="Reseller@Example.com")
        for i in range(10, 30)
    ]  # fmt: skip
    shop = [
        f.activate(f"M{i}", at + timedelta(hours=3, minutes=3 * (i - 30)), ip="203.0.113.50")
        for i in range(30, 50)
    ]
    # revoked_device_activity: M50 revoked while pending, then scanned.
    revoke(f.registry, f.keyring, f.device("M50"), "stolen pallet", "ops", now=at)
    revoked_scan = f.scan(f.url("M50"), at + timedelta(hours=2), ip="192.0.2.5")
    # activation_before_registration: M58 activated a day before its batch was registered;
    # M59 after registration but before its manufacture time (07:00 UTC on 20 November).
    early = f.activate("M58", T0 - timedelta(days=1))
    made = f.activate("M59", datetime(2026, 11, 20, 6, 0, tzinfo=UTC))
    return {
        ("cloned_label", "device", did("M00")): ("critical", 3, {"pairing_events": cloned}),
        ("forgery_burst", "ip", "198.51.100.7"): ("warning", 20, {"pairing_events": burst}),
        ("mass_activation", "user", "reseller@example.com"): (
            "warning",
            20,
            {"pairing_events": reseller},
        ),
        ("mass_activation", "ip", "203.0.113.50"): ("warning", 20, {"pairing_events": shop}),
        ("revoked_device_activity", "device", did("M50")): (
            "critical",
            1,
            {"pairing_events": [revoked_scan]},
        ),
        ("activation_before_registration", "device", did("M58")): (
            "critical",
            1,
            {"pairing_events": [early]},
        ),
        ("activation_before_registration", "device", did("M59")): (
            "critical",
            1,
            {"pairing_events": [made]},
        ),
    }


def found(run: Any) -> dict[tuple[str, str, str], tuple[str, int, dict[str, list[int]]]]:
    return {
        (a.rule, a.subject_kind, a.subject): (a.severity, a.count, a.evidence) for a in run.alerts
    }


def test_each_rule_raises_exactly_its_alerts(fleet: Fleet, tmp_path: Path) -> None:
    expected = build_situations(fleet)
    run = fleet.evaluate()
    assert run.mode == "full"
    assert found(run) == expected  # and nothing for the near misses, nor the idle batch (3 < 20)
    assert sorted(run.raised) == sorted(a.id for a in run.alerts)
    by_rule = {(a.rule, a.subject): a for a in run.alerts}
    cloned = by_rule["cloned_label", fleet.device("M00").device_id]
    assert cloned.first_seen == T0 + timedelta(days=2, hours=1)
    assert cloned.last_seen == T0 + timedelta(days=2, hours=20)
    # dormant_batch with a lower floor: all 3 of batch idle have logged nothing for 40 days.
    rules = tmp_path / "rules.toml"
    rules.write_text("[dormant_batch]\nmin_activated = 3\n")
    again = fleet.evaluate(rules=load_rules(rules), full=True)
    dormant = [a for a in again.alerts if a.rule == "dormant_batch"]
    assert [(a.subject_kind, a.subject, a.severity, a.count) for a in dormant] == [
        ("batch", "idle", "info", 3)
    ]
    assert sorted(dormant[0].evidence["devices"]) == sorted(
        fleet.device(f"I{i}").device_id for i in range(3)
    )
    assert again.raised == [dormant[0].id]


def test_ids_are_stable_and_an_incremental_run_finds_what_a_full_run_finds(fleet: Fleet) -> None:
    build_situations(fleet)
    first = fleet.evaluate()
    ids = {(a.rule, a.subject): a.id for a in first.alerts}
    second = fleet.evaluate(now=NOW + timedelta(minutes=5))
    assert second.mode == "incremental" and second.raised == [] and second.reopened == []
    assert second.read["pairing_events"] == 0
    assert {(a.rule, a.subject): a.id for a in second.alerts} == ids

    # New evidence: M00 scanned twice more within a day of the earlier scans; another burst.
    at = T0 + timedelta(days=2)
    fleet.scan(fleet.url("M00"), at + timedelta(hours=21), ip="172.16.0.21", fingerprint="fp1")
    fleet.scan(fleet.url("M00"), at + timedelta(hours=22), ip="172.16.0.21", fingerprint="fp2")
    for k in range(3):  # turns the 19 from .8 into a burst, counted with the earlier ones
        fleet.scan(JUNK, at + timedelta(seconds=600 + k), ip="198.51.100.8")
    third = fleet.evaluate(now=NOW + timedelta(minutes=10))
    assert third.mode == "incremental"
    assert third.read["pairing_events"] == 5
    incremental = {(a.rule, a.subject_kind, a.subject): a for a in third.alerts}
    m00 = fleet.device("M00").device_id
    assert incremental["cloned_label", "device", m00].count == 5
    assert incremental["forgery_burst", "ip", "198.51.100.8"].count == 22
    assert [incremental["forgery_burst", "ip", "198.51.100.8"].id] == third.raised

    fleet.forget_alerts()
    full = {(a.rule, a.subject_kind, a.subject): a for a in fleet.evaluate(full=True).alerts}
    keep = ("id", "severity", "count", "first_seen", "last_seen", "evidence")
    assert {k: [getattr(a, f) for f in keep] for k, a in full.items()} == {
        k: [getattr(a, f) for f in keep] for k, a in incremental.items()
    }


def test_an_incremental_run_verifies_the_chains_it_touches(fleet: Fleet, run_cli: Any) -> None:
    fleet.activate("M05", T0 + timedelta(days=1))
    fleet.evaluate()
    dev = fleet.device("M05")
    with fleet.registry.engine.begin() as conn:  # an insider rewrites the activation entry
        conn.execute(
            text("UPDATE device_action_log SET ip = '1.2.3.4' WHERE device_pk = :pk AND seq = 1"),
            {"pk": dev.id},
        )
    log_action(fleet.registry, fleet.keyring, dev, "heartbeat", now=NOW)
    run = fleet.evaluate(now=NOW + timedelta(minutes=1))
    assert run.mode == "incremental" and run.read["devices_verified"] == 1
    broken = [a for a in run.alerts if a.rule == "audit_chain_broken"]
    assert [(a.subject, a.severity, a.count) for a in broken] == [(dev.device_id, "critical", 1)]
    # `audit verify` finds the same break and records its run: the next alerts run adds the
    # run to the evidence, but the same break is no new evidence (an acknowledged alert stays
    # quiet; the nightly `audit verify` would otherwise reopen it every night).
    assert run_cli("audit", "verify").exit_code == 1
    [alert] = broken
    assert run_cli("alerts", "ack", alert.id, "--note", "restoring from backup").exit_code == 0
    later = fleet.evaluate(now=NOW + timedelta(minutes=2))
    assert later.reopened == [] and not [a for a in later.alerts if a.rule == alert.rule]
    stored = fleet.registry.alerts.get([alert.id])[alert.id]
    assert (stored.count, len(stored.evidence["audit_runs"])) == (1, 2)
    assert stored.evidence["problems"] == ["actions#1: content changed after it was written"]
    # A second break on the same device is new evidence, found by the next incremental run
    # that touches the device (no `audit verify` needed).
    with fleet.registry.engine.begin() as conn:
        conn.execute(
            text("UPDATE device_pairing_events SET ip = '6.6.6.6' WHERE device_pk = :pk"),
            {"pk": dev.id},
        )
    log_action(fleet.registry, fleet.keyring, dev, "heartbeat", now=NOW + timedelta(minutes=3))
    again = fleet.evaluate(now=NOW + timedelta(minutes=4))
    assert again.reopened == [alert.id]
    assert fleet.registry.alerts.get([alert.id])[alert.id].count == 2


def test_a_break_is_the_same_break_whatever_its_live_counts() -> None:
    from provision.alerts import break_key

    def rolled_back(now: int) -> dict[str, Any]:
        problem = f"the checkpoint recorded 40 entries, the log holds {now}"
        return {"device_id": "d", "chain": "checkpoint", "seq": now + 1, "problem": problem}

    assert break_key(rolled_back(12)) == break_key(rolled_back(15))
    entry = {"device_id": "d", "chain": "actions", "seq": 3, "problem": "content changed"}
    assert break_key(entry) != break_key(entry | {"seq": 4})


def test_a_revoked_devices_token_is_refused_recorded_and_alerted(
    fleet: Fleet, keyring_path: Path
) -> None:
    fleet.activate("M07", T0 + timedelta(days=1))
    client = create_app(
        WebSettings(fleet.registry.url, str(keyring_path), BASE, rate_limit="1000/second"),
        registry=fleet.registry,
        keyring=fleet.keyring,
    ).test_client()
    resp = client.post(
        "/api/v1/activations", json={"payload": fleet.url("M08"), "user": "ann@example.com"}
    )
    assert resp.status_code == 201
    token = resp.get_json()["activation_token"]
    dev = fleet.device("M08")
    revoke(fleet.registry, fleet.keyring, dev, "returned", "ops", now=T0 + timedelta(days=3))
    resp = client.post(
        f"/api/v1/devices/{dev.device_id}/actions",
        json={"action_type": "upload", "metadata": {}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 401
    entries = fleet.registry.events.actions_of(dev.id)
    assert [e.action_type for e in entries][-1] == "action.refused"
    assert json.loads(entries[-1].metadata_json) == {
        "action_type": "upload",
        "reason": "revoked_device",
    }
    wrong = client.post(  # a wrong token records nothing
        f"/api/v1/devices/{dev.device_id}/actions",
        json={"action_type": "upload"},
        headers={"Authorization": "Bearer nope"},
    )
    assert wrong.status_code == 401
    assert len(fleet.registry.events.actions_of(dev.id)) == len(entries)
    run = fleet.evaluate()
    [alert] = [a for a in run.alerts if a.rule == "revoked_device_activity"]
    assert (alert.subject, alert.count, alert.evidence) == (
        dev.device_id,
        1,
        {"actions": [entries[-1].id]},
    )


def test_ack_quiets_an_alert_until_new_evidence_and_fail_on_exits_3(
    fleet: Fleet, run_cli: Any
) -> None:
    at = T0 + timedelta(days=2)
    for k in range(20):
        fleet.scan(JUNK, at + timedelta(seconds=k), ip="198.51.100.7")
    out = run_cli("alerts", "--format", "json", "--fail-on", "critical")
    assert out.exit_code == 0, out.output  # a warning only
    data = json.loads(out.stdout)
    [alert] = data["alerts"]
    assert (alert["rule"], alert["severity"], alert["subject"], alert["count"]) == (
        "forgery_burst", "warning", "198.51.100.7", 20,
    )  # fmt: skip
    assert data["new"] == [alert["id"]]
    hit = run_cli("alerts", "--fail-on", "warning")
    assert hit.exit_code == 3 and "1 open alert at warning or above" in hit.stderr

    acked = run_cli("alerts", "ack", alert["id"][:8], "--note", "pen test", "--by", "ann", "--json")
    assert acked.exit_code == 0, acked.output
    assert json.loads(acked.stdout)["acked_by"] == "ann"
    quiet = run_cli("alerts", "--format", "json", "--fail-on", "warning")
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)["alerts"] == []
    shown = json.loads(run_cli("alerts", "show", alert["id"], "--json").stdout)
    assert (shown["status"], shown["ack_note"]) == ("acknowledged", "pen test")

    fleet.scan(JUNK, at + timedelta(seconds=30), ip="198.51.100.7")  # new evidence
    back = run_cli("alerts", "--format", "json", "--fail-on", "warning")
    assert back.exit_code == 3
    data = json.loads(back.stdout)
    assert data["reopened"] == [alert["id"]] and data["alerts"][0]["count"] == 21
    assert data["alerts"][0]["status"] == "open"

    missing = run_cli("alerts", "ack", "ffffffffffffffff", "--note", "x")
    assert missing.exit_code == 1 and "no alert ffffffffffffffff" in missing.stderr
    short = run_cli("alerts", "ack", alert["id"][:5], "--note", "x")
    assert short.exit_code == 1 and "too short: give at least 6" in short.stderr
    table = run_cli("alerts").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "SEVERITY", "RULE", "SUBJECT"]
    assert table[1].startswith(alert["id"]) and "forgery_burst" in table[1]
    assert table[-1].startswith("1 open alert (1 warning); 0 new, 0 reopened; incremental run")


def test_a_rules_file_changes_thresholds_and_bad_ones_are_named(
    fleet: Fleet, run_cli: Any, tmp_path: Path
) -> None:
    at = T0 + timedelta(days=2)
    for k in range(5):
        fleet.scan(JUNK, at + timedelta(seconds=k), ip="198.51.100.7")
    assert json.loads(run_cli("alerts", "--format", "json").stdout)["alerts"] == []
    rules = tmp_path / "alerts.toml"
    rules.write_text('[forgery_burst]\nmin_scans = 5\nwindow = "1m"\n')
    data = json.loads(
        run_cli("alerts", "--full", "--format", "json", env={"PROVISION_ALERTS": str(rules)}).stdout
    )
    assert [(a["rule"], a["count"]) for a in data["alerts"]] == [("forgery_burst", 5)]

    for body, message in (
        ("[forged_burst]\n", "forged_burst: no such rule"),
        ("[forgery_burst]\nmin_scan = 5\n", "forgery_burst.min_scan: no such setting"),
        ("[forgery_burst]\nmin_scans = 1\n", "forgery_burst.min_scans: 1: must be at least 2"),
        ('[cloned_label]\nwindow = "soon"\n', "cloned_label.window: 'soon': must be a duration"),
        ('[dormant_batch]\nseverity = "loud"\n', "dormant_batch.severity: 'loud'"),
        ("[dormant_batch]\nmax_dormant_rate = 1.5\n", "dormant_batch.max_dormant_rate: 1.5"),
        ("[forgery_burst\n", "alerts.toml: Expected ']'"),
    ):
        rules.write_text(body)
        bad = run_cli("alerts", "--rules", str(rules))
        assert bad.exit_code == 1, body
        assert f"Error: {rules}: " in bad.stderr and message in bad.stderr, bad.stderr
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.toml")


def test_since_limits_a_full_pass_to_the_events_after_it(fleet: Fleet, tmp_path: Path) -> None:
    build_situations(fleet)
    noon = datetime(2026, 11, 10, 17, 0, tzinfo=timezone(timedelta(hours=5)))  # 12:00 UTC
    run = fleet.evaluate(since=noon)
    # Only M59's activation (20 November) is after it.
    assert [(a.rule, a.subject) for a in run.alerts] == [
        ("activation_before_registration", fleet.device("M59").device_id)
    ]
    # A burst seen only in part by a --since pass, acknowledged, then counted whole by a full
    # pass: more history is no new evidence, so it stays quiet.
    (tmp_path / "r.toml").write_text("[forgery_burst]\nmin_scans = 10\n")
    rules = load_rules(tmp_path / "r.toml")
    first = fleet.evaluate(since=T0 + timedelta(days=2, seconds=5 * 30), rules=rules)
    burst = next(a for a in first.alerts if a.subject == "198.51.100.7")
    assert burst.count == 15
    fleet.registry.alerts.acknowledge(burst.id, "ann", "known scanner test", NOW)
    full = fleet.evaluate(full=True, rules=rules)
    assert burst.id not in {a.id for a in full.alerts} and burst.id not in full.reopened
    assert fleet.registry.alerts.get([burst.id])[burst.id].count == 20


class Receiver:
    """A real HTTP server on a free port: answers 503 to the first FAIL posts, then 204."""

    def __init__(self, fail: int = 0, status: int = 503) -> None:
        self.fail = fail
        self.status = status  # what a failing post gets: 503, or 302 to a page elsewhere
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), body))
                code = receiver.status if len(receiver.posts) <= receiver.fail else 204
                self.send_response(code)
                if code == 302:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # where a followed redirect would land
                receiver.posts.append((dict(self.headers), b"GET"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/provision"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail=2)
    yield r
    r.close()


def test_notify_posts_each_new_alert_once_signed_and_retries(
    fleet: Fleet, run_cli: Any, receiver: Receiver
) -> None:
    at = T0 + timedelta(days=2)
    for ip in ("198.51.100.7", "198.51.100.8"):
        for k in range(20):
            fleet.scan(JUNK, at + timedelta(seconds=k), ip=ip)
    env = {"PROVISION_NOTIFY_BACKOFF": "0.05"}
    out = run_cli("alerts", "--notify", receiver.url, "--format", "json", env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["notified"] == 2 and data["notify_failed"] == []
    assert len(receiver.posts) == 4  # two refused with 503, then one delivery each
    secret = bytes.fromhex(run_cli("alerts", "webhook-secret").stdout.strip())
    delivered = receiver.posts[2:]
    ids = set()
    for headers, body in delivered:
        stamp, mac = (part.split("=", 1)[1] for part in headers["X-Provision-Signature"].split(","))
        assert abs(int(stamp) - time.time()) < 60
        expect = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(mac, expect)
        doc = json.loads(body)
        assert doc["event"] == "alert.raised" and headers["Content-Type"] == "application/json"
        ids.add(doc["alert"]["id"])
    assert ids == {a["id"] for a in data["alerts"]}
    assert run_cli("alerts", "--notify", receiver.url, env=env).exit_code == 0
    assert len(receiver.posts) == 4  # nothing new: nothing sent

    # A reopened alert is sent again; a receiver that is down is reported, exit 1, and the
    # next run delivers what failed.
    fleet.scan(JUNK, at + timedelta(seconds=25), ip="198.51.100.7")
    [reopen] = [a["id"] for a in data["alerts"] if a["subject"] == "198.51.100.7"]
    assert run_cli("alerts", "ack", reopen, "--note", "seen").exit_code == 0
    fleet.scan(JUNK, at + timedelta(seconds=26), ip="198.51.100.7")
    receiver.close()
    down = run_cli("alerts", "--notify", receiver.url, env=env)
    assert down.exit_code == 1
    assert f"alert {reopen}: " in down.stderr and "after 4 attempts" in down.stderr
    assert "1 alert not delivered to http://127.0.0.1:" in down.stderr
    again = Receiver()
    try:
        ok = run_cli("alerts", "--notify", again.url, "--format", "json", env=env)
        assert ok.exit_code == 0, ok.output
        [(headers, body)] = again.posts
        assert json.loads(body)["event"] == "alert.reopened"
        assert json.loads(body)["alert"]["id"] == reopen
    finally:
        again.close()


def test_notify_refuses_a_url_it_cannot_use(run_cli: Any, fleet: Fleet) -> None:
    for url, message in (
        ("ftp://user:secret@example.com/x", "give an http:// or https:// URL"),
        ("https://user:secret@example.com/x", "a user or password in the URL is not sent"),
        ("http://example.com:port/x", "not a valid URL"),
        ("http://[::1/x", "not a valid URL"),
    ):
        bad = run_cli("alerts", "--notify", url)
        assert bad.exit_code == 1, url
        assert message in bad.stderr and "secret" not in bad.stderr, bad.stderr


def test_stats_cli_prints_json_csv_and_a_table(fleet: Fleet, run_cli: Any) -> None:
    import csv
    import io

    fleet.activate("M00", T0 + timedelta(days=1))
    data = json.loads(run_cli("stats", "--by", "batch", "--format", "json").stdout)
    assert [(g["group"], g["registered"], g["activated"]) for g in data["groups"]] == [
        ("idle", 3, 3),
        ("main", 60, 1),
    ]
    rows = list(csv.DictReader(io.StringIO(run_cli("stats", "--format", "csv").stdout)))
    assert [(r["group"], r["registered"], r["activated"]) for r in rows] == [
        ("idle", "3", "3"),
        ("main", "60", "1"),
        ("(all)", "63", "4"),
    ]
    table = run_cli("stats", "--by", "type").stdout.splitlines()
    assert table[0].split()[:4] == ["GROUP", "REGISTERED", "ACTIVATED", "REVOKED"]
    assert table[1].startswith("sensor") and table[-1].startswith("(all)")
    assert run_cli("stats", "--by", "colour").exit_code == 2


def test_a_stale_run_neither_reopens_nor_resends_an_alert(
    fleet: Fleet, run_cli: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two overlapping runs see the same new evidence: the second, which read the alert
    before the first saved it, finds it changed, reads again, and sends nothing."""
    at = T0 + timedelta(days=2)
    for k in range(20):
        fleet.scan(JUNK, at + timedelta(seconds=k), ip="198.51.100.7")
    [alert] = fleet.evaluate().alerts
    fleet.registry.alerts.acknowledge(alert.id, "ann", "seen", NOW)
    fleet.scan(JUNK, at + timedelta(seconds=25), ip="198.51.100.7")
    stale = fleet.registry.alerts.get([alert.id])  # what the slower run read
    env = {"PROVISION_NOTIFY_BACKOFF": "0"}
    receiver.fail = 0
    out = run_cli("alerts", "--notify", receiver.url, "--format", "json", env=env)
    assert json.loads(out.stdout)["reopened"] == [alert.id] and len(receiver.posts) == 1

    real_get = fleet.registry.alerts.get
    calls = iter([stale])
    monkeypatch.setattr(
        fleet.registry.alerts, "get", lambda ids: next(calls, None) or real_get(ids)
    )
    from provision.alerts import notify

    late = fleet.evaluate(now=NOW + timedelta(minutes=1), full=True)
    assert late.reopened == []
    assert notify(fleet.registry, fleet.keyring, receiver.url, backoff=0) == []
    assert len(receiver.posts) == 1


def test_an_interrupted_delivery_is_released_for_the_next_run(
    fleet: Fleet, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import provision.alerts as alerts_module

    at = T0 + timedelta(days=2)
    for k in range(20):
        fleet.scan(JUNK, at + timedelta(seconds=k), ip="198.51.100.7")
    [alert] = fleet.evaluate().alerts

    def interrupted(*_args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(alerts_module, "_post", interrupted)
    with pytest.raises(KeyboardInterrupt):
        alerts_module.notify(fleet.registry, fleet.keyring, receiver.url)
    assert fleet.registry.alerts.get([alert.id])[alert.id].notified_at is None
    monkeypatch.undo()
    receiver.fail = 0
    [sent] = alerts_module.notify(fleet.registry, fleet.keyring, receiver.url, backoff=0)
    assert sent.ok and len(receiver.posts) == 1


def test_a_revocation_committed_meanwhile_refuses_the_action(fleet: Fleet) -> None:
    from provision.errors import DeviceError

    fleet.activate("M09", T0 + timedelta(days=1))
    loaded = fleet.device("M09")  # an app holds this while support revokes the device
    revoke(fleet.registry, fleet.keyring, loaded, "stolen", "support", now=T0 + timedelta(days=2))
    with pytest.raises(DeviceError) as refused:
        log_action(fleet.registry, fleet.keyring, loaded, "upload", actor="root")
    assert refused.value.reason == "revoked_device"
    last = fleet.registry.events.actions_of(loaded.id)[-1]
    assert (last.action_type, last.actor) == ("action.refused", "root")
    assert json.loads(last.metadata_json) == {"action_type": "upload", "reason": "revoked_device"}


def test_a_redirect_is_a_failure_and_a_receiver_down_stops_the_run(
    fleet: Fleet, run_cli: Any
) -> None:
    at = T0 + timedelta(days=2)
    for ip in ("198.51.100.7", "198.51.100.8"):
        for k in range(20):
            fleet.scan(JUNK, at + timedelta(seconds=k), ip=ip)
    fleet.evaluate()
    env = {"PROVISION_NOTIFY_BACKOFF": "0"}
    moved = Receiver(fail=10, status=302)
    try:
        out = run_cli("alerts", "--notify", moved.url, "--fail-on", "warning", env=env)
    finally:
        moved.close()
    # Not followed (no GET), not retried, reported; and exit 3 from --fail-on wins over it.
    assert [body for _, body in moved.posts] != [] and b"GET" not in [b for _, b in moved.posts]
    assert len(moved.posts) == 2 and out.exit_code == 3
    assert out.stderr.count("HTTP 302 after 1 attempt") == 2
    assert "2 alerts not delivered to http://127.0.0.1:" in out.stderr
    assert "2 open alerts at warning or above" in out.stderr

    down = Receiver()
    down.close()  # nothing listens on its port now
    out = run_cli("alerts", "--notify", down.url, env=env)
    assert out.exit_code == 1
    assert "after 4 attempts" in out.stderr  # the first alert: tried, retried
    assert "not tried: the receiver was unreachable after 0 attempts" in out.stderr


def test_two_runs_inserting_the_same_new_alert_is_no_error(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = T0 + timedelta(days=2)
    for k in range(20):
        fleet.scan(JUNK, at + timedelta(seconds=k), ip="198.51.100.7")
    [first] = fleet.evaluate().alerts
    # The other run read before the first stored it: it believes the alert is new.
    monkeypatch.setattr(fleet.registry.alerts, "get", lambda ids: {})
    again = fleet.evaluate(full=True, now=NOW + timedelta(minutes=1))
    assert again.raised == [] and [a.id for a in again.alerts] == [first.id]


def test_log_on_a_revoked_device_is_refused_and_recorded(fleet: Fleet, run_cli: Any) -> None:
    fleet.activate("M11", T0 + timedelta(days=1))
    dev = fleet.device("M11")
    assert run_cli("revoke", dev.device_id, "--reason", "stolen").exit_code == 0
    out = run_cli("log", dev.device_id, "firmware.update")
    assert out.exit_code == 1
    assert f"device {dev.device_id} is revoked: its log takes no more actions" in out.stderr
    last = fleet.registry.events.actions_of(dev.id)[-1]
    assert last.action_type == "action.refused"
