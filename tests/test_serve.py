"""`provision serve` as it runs in production: several processes sharing one rate limit in a
real, throwaway Redis (Debian redis-server), /healthz and /readyz, and a graceful SIGTERM that
lets the request in flight finish."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from provision.registry import Registry
from tests.helpers import flush, free_port, with_payload

BASE = "http://localhost:5001"


class Server:
    """`provision serve` in a child process of its own."""

    def __init__(self, db_url: str, keyring_path: Path, *args: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
        env |= {"PROVISION_DB_URL": db_url, "PROVISION_KEYRING": str(keyring_path)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provision", "--base-url", BASE, "serve", "--port",
             str(self.port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body or b"null")
            except ValueError:
                return e.code, body.decode(errors="replace")  # an HTML error page

    def activate(self, payload: str, user: str) -> int:
        body = json.dumps({"payload": payload, "user": user}).encode()
        req = urllib.request.Request(
            self.url("/api/v1/activations"), body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def test_readyz_names_what_is_not_ready(
    registry: Registry, keyring_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provision.errors import RegistryError
    from provision.keys import load_keyring
    from provision.web import WebSettings, create_app

    settings = WebSettings(registry.url, str(keyring_path), BASE)
    client = create_app(
        settings, registry=registry, keyring=load_keyring(keyring_path)
    ).test_client()
    assert client.get("/healthz").json == {"ok": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"ready": True, "checks": {"registry": "ok", "keyring": "ok"}}

    def down() -> None:
        raise RegistryError("registry: connection refused")

    monkeypatch.setattr(registry, "ping", down)
    broken = client.get("/readyz")
    assert broken.status_code == 503
    assert broken.json["checks"] == {"registry": "RegistryError", "keyring": "ok"}
    assert client.get("/healthz").status_code == 200  # alive all the same


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_several_processes_need_a_shared_limit_store(run_cli: Any) -> None:
    out = run_cli("serve", "--processes", "3")
    assert out.exit_code != 0
    assert "--rate-limit-storage memory://" in out.stderr and "redis://" in out.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--rate-limit", "ten a minute", "--rate-limit 'ten a minute': give a rate such as"),
        ("--rate-limit-storage", "mongo://x", "--rate-limit-storage mongo://x: unknown storage"),
        # A password in the URI is never shown, nor the library's message that repeats it.
        ("--rate-limit-storage", "redis://:s3cret@h:port/0", "redis://***@h:port/0: bad URI"),
        ("--rate-limit-storage", "redis+x://u:s3cret@h", "redis+x://***@h: unknown storage"),
    ],
)
def test_a_bad_rate_limit_or_store_is_one_line_before_any_worker(
    run_cli: Any, option: str, value: str, said: str
) -> None:
    out = run_cli("serve", "--processes", "2", "--rate-limit-storage", "redis://127.0.0.1:1",
                  option, value)  # fmt: skip
    assert out.exit_code != 0
    assert said in out.stderr and "s3cret" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_a_limit_holds_across_three_processes(
    db_url: str, registry: Registry, keyring_path: Path, redis_url: str
) -> None:
    """5 activations a minute for one client, whichever of the 3 processes takes each
    connection: the sixth and later are refused (429)."""
    flush(redis_url)  # the counts of an earlier test's client (127.0.0.1 too)
    server = Server(
        db_url, keyring_path, "--processes", "3", "--workers", "2", "--rate-limit",
        "5 per minute", "--rate-limit-storage", redis_url,
    )  # fmt: skip
    try:
        codes = [server.activate("NOT-A-PAYLOAD", f"u{i}@example.com") for i in range(12)]
        assert codes.count(429) == 7 and codes[:5] == [400] * 5, codes
        assert server.get("/readyz")[0] == 200
    finally:
        assert server.stop() == 0
    # Each worker says when its app is built and it takes connections (three pids).
    log = server.proc.stderr.read()  # type: ignore[union-attr]
    assert len(set(re.findall(r"worker (\d+) serving", log))) == 3, log


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sigterm_finishes_the_requests_in_flight(
    db_url: str, registry: Registry, keyring_path: Path, tmp_path: Path
) -> None:
    """Activations in flight when SIGTERM comes, one waiting on a database lock and two queued
    behind it (one thread), each still get their 201; nothing fails on the way (the worker's
    wake-up pipe stays open until the last answer is out), and the service exits 0. (The lock
    is SQLite's BEGIN IMMEDIATE, held by the test.)"""
    from provision.keys import load_keyring
    from provision.pipeline import register_batch
    from provision.registry.records import DeviceFilter
    from tests.helpers import serials_csv

    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 3), batch="term")
    devices = registry.devices.page(DeviceFilter(), None, None, 3)
    payloads = [with_payload(keyring, d)["payload"] for d in devices]
    server = Server(db_url, keyring_path, "--workers", "1")
    lock = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=60)
    lock.execute("BEGIN IMMEDIATE")  # the activations' writes wait for this
    result: list[int | str] = []

    def activate(payload: str) -> None:
        try:
            result.append(server.activate(payload, "ada"))
        except OSError as exc:  # no answer at all: say so in the failure
            result.append(repr(exc))

    workers = [threading.Thread(target=activate, args=(p,)) for p in payloads]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # the first request is blocked on the lock, the others queued
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert server.proc.poll() is None  # still finishing
    lock.rollback()
    lock.close()
    for worker in workers:
        worker.join(60)
    assert result == [201, 201, 201]
    assert server.proc.wait(30) == 0
    log = server.proc.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in log and "ERROR" not in log, log
    assert log.count("POST /api/v1/activations 201") == 3
    # Two requests queued behind the first: not a line each, but the first at once and the
    # other at the stop (the report's interval is a minute).
    assert "Task queue depth" not in log
    assert log.count("waited for a free thread") == 2, log
    assert "1 request waited for a free thread since the last report (longest queue 1)" in log
    assert "1 request waited for a free thread since the last report (longest queue 2)" in log


def test_metrics_sum_every_process_on_localhost_only(
    db_url: str, registry: Registry, keyring_path: Path, redis_url: str, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from provision.keys import load_keyring
    from provision.pipeline import register_batch
    from provision.registry.records import DeviceFilter
    from tests.helpers import serials_csv

    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 1), batch="metrics")
    [device] = registry.devices.page(DeviceFilter(), None, None, 1)
    payload = with_payload(keyring, device)["payload"]
    flush(redis_url)
    metrics_port = free_port()
    server = Server(
        db_url, keyring_path, "--processes", "2", "--rate-limit", "4 per minute",
        "--rate-limit-storage", redis_url, "--metrics-port", str(metrics_port),
    )  # fmt: skip
    try:
        codes = [
            server.activate(payload, "ada@example.com"),
            server.activate(payload, "eve@example.com"),
            server.activate("NOT-A-PAYLOAD", "eve@example.com"),
            server.activate("NOT-A-PAYLOAD", "eve@example.com"),
            server.activate("NOT-A-PAYLOAD", "eve@example.com"),
        ]
        assert codes == [201, 409, 400, 400, 429]
        assert server.get("/metrics")[0] == 404  # the public port has none
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        assert server.stop() == 0
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    activations = {
        labels: v for (name, labels), v in samples.items() if name == "provision_activations_total"
    }
    assert activations == {
        (("reason", ""), ("result", "activated")): 1.0,
        (("reason", "already_activated"), ("result", "refused")): 1.0,
        (("reason", "malformed"), ("result", "refused")): 2.0,
    }
    assert samples[("provision_rate_limited_total", ())] == 1.0
    timed = "provision_request_duration_seconds_count"
    counts = [
        v for (name, labels), v in samples.items()
        if name == timed and ("endpoint", "api.activate") in labels
    ]  # fmt: skip
    assert counts == [5.0]
    with pytest.raises(OSError):  # 127.0.0.1 only
        socket.create_connection((socket.gethostbyname(socket.gethostname()), metrics_port), 1)


def test_queue_report_says_it_once_an_interval(caplog: pytest.LogCaptureFixture) -> None:
    """waitress's "Task queue depth" warning, once a request: reported once an interval, with
    the count of requests that waited and the longest queue since the last report."""
    from provision.web.server import QueueReport

    report = QueueReport(interval=3600)
    with caplog.at_level("WARNING", logger="provision.web"):
        for depth in (1, 4, 2):
            report.warning("Task queue depth is %d", depth)
        assert [r.getMessage() for r in caplog.records] == [
            "1 request waited for a free thread since the last report (longest queue 1); "
            "when this persists, add --processes"
        ]
        report._next = 0.0  # the interval is over
        report.warning("Task queue depth is %d", 3)
        assert (
            caplog.records[-1]
            .getMessage()
            .startswith(
                "3 requests waited for a free thread since the last report (longest queue 4)"
            )
        )
        report.flush()  # nothing waited since: nothing to say
        assert len(caplog.records) == 2
        report.warning("Task queue depth is %d", 2)
        report.flush()  # at the stop: the one that waited since
    assert caplog.records[-1].getMessage().startswith("1 request waited")
    assert len(caplog.records) == 3
    assert report.isEnabledFor  # any other logger call goes to waitress's own logger
