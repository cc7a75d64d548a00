"""Benchmark the staff console's pages on 1,000,000 devices (goal: every page p95 <= 150 ms).

    .venv/bin/python benchmarks/console_bench.py [--devices 1000000] [--postgres] [--keep DIR]
                                                 [--requests 40] [--screenshots DIR]

Set-up (timed apart): the registry of fleet_bench.py (DEVICES devices in batches of 100,000,
2 pairing events and 10 actions a device, 7 in 10 activated), plus two components a device (an
mcu with its own serial, in lots of 10,000 devices; a battery in lots of 50,000), the alerts of
a full run, a recall of one mcu lot, and a staff admin with an API token; in the output folder,
a reconciliation report's summary and a batch's label files. With --keep DIR an SQLite
registry there is reused (what is missing is added), e.g. the one fleet_bench.py --keep built.

Measured: `provision console` runs as its own process (waitress, as in production); one client
on a keep-alive connection logs in, requests each page once (the first request: the figures
the console computes at start may still be on their way), and then each page REQUESTS times,
rotating the device, serial and user it asks for. For each page: the first request, p50, p95
and the slowest. Baseline in the same run: /healthz (the same server and app, no query).
Exit status 0 when every page's p95 is within the goal.

--screenshots DIR: afterwards, Debian's Chromium takes the README's pictures of the console on
this registry (DIR/console-overview.png, -device.png, -stats.png).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bulk import Writer, bench_registry  # noqa: E402
from fleet_bench import BATCH, CHUNK, END, START  # noqa: E402
from fleet_bench import build as build_fleet  # noqa: E402

from provision.keys import Keyring  # noqa: E402
from provision.registry import Registry  # noqa: E402
from provision.serials import (  # noqa: E402
    component_row_hash,
    component_serial_hash,
    device_id,
    encrypt_serial,
    serial_hash,
)

GOAL_MS = 150.0
LOT = 10_000
PASSWORD = "benchmark password, long enough"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


RECALL = "bench-recall"


def recalled_lot(n: int) -> str:
    return f"MCU-L{max(0, n // LOT // 2):04d}"


def serial_of(i: int) -> str:
    return f"FB{i:09d}"  # fleet_bench's serials


def add_components(registry: Registry, keyring: Keyring, n: int) -> None:
    w = Writer(registry)
    cols = [
        "device_pk", "component_type", "component_spec", "component_serial_ct", "row_hash",
        "supplier", "lot", "batch_id", "created_at", "component_serial_hash",
    ]  # fmt: skip
    t = time.perf_counter()
    for lo in range(0, n, CHUNK):
        rows = []
        for i in range(lo, min(n, lo + CHUNK)):
            serial = serial_of(i)
            sh = serial_hash(keyring.pepper, serial)
            made = w.stamp(START)
            own = f"MCU-{i:09d}"
            rh = component_row_hash(keyring.pepper, sh, "mcu", "STM32L4", own)
            rows.append(
                (i + 1, "mcu", "STM32L4", encrypt_serial(keyring.data_key, rh[:16], own), rh,
                 "ST", f"MCU-L{i // LOT:04d}", i // BATCH + 1, made,
                 component_serial_hash(keyring.pepper, own))
            )  # fmt: skip
            rh = component_row_hash(keyring.pepper, sh, "battery", "CR2032", "")
            rows.append(
                (i + 1, "battery", "CR2032", None, rh, "Renata", f"BAT-{i // 50_000:03d}",
                 i // BATCH + 1, made, None)
            )  # fmt: skip
        w.rows("device_components", cols, rows)
        w.commit()
    w.close()
    with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if registry.is_postgresql else "ANALYZE")
    print(f"  {2 * n:,} components  {time.perf_counter() - t:7.1f} s", flush=True)


def set_up(registry: Registry, keyring: Keyring, n: int, output: Path) -> str:
    """What the pages read besides the fleet: components, alerts, a recall, staff, files.
    Returns the staff API token."""
    from provision import staff
    from provision.alerts import evaluate_alerts
    from provision.recalls import create_recall
    from provision.trace import TraceQuery

    if registry.devices.count_components() == 0:
        add_components(registry, keyring, n)
    if not registry.alerts.listed():
        t = time.perf_counter()
        run = evaluate_alerts(registry, keyring, full=True, now=END + timedelta(hours=1))
        print(f"  {len(run.alerts)} open alerts  {time.perf_counter() - t:7.1f} s", flush=True)
    if registry.recalls.get(RECALL) is None:
        t = time.perf_counter()
        create_recall(
            registry,
            keyring,
            RECALL,
            TraceQuery(lot=recalled_lot(n)),
            "benchmark recall",
            hold=True,
            actor="bench",
        )
        print(f"  a recall of {recalled_lot(n)}  {time.perf_counter() - t:7.1f} s", flush=True)
    if registry.staff.get("bench-admin") is None:
        staff.add_staff(registry, "bench-admin", "admin", PASSWORD, "bench")
    token = staff.issue_token(registry, "bench-admin", "bench")
    report = output / "reports" / "2026-11"
    report.mkdir(parents=True, exist_ok=True)
    summary = {
        "as_of": "2026-11-30",
        "shipments_file": "(stored)",
        "since": "2026-11-01",
        "until": "2026-11-30",
        "generated_at": "2026-12-01T06:00:00+00:00",
        "counts": {"matched": 612_000, "activated_not_shipped": 0, "shipped_not_activated": 88},
        "severity": {"matched": "info", "activated_not_shipped": "critical"},
    }
    (report / "summary.json").write_text(json.dumps(summary))
    (report / "report.pdf").write_bytes(b"%PDF-1.7\n")
    batch = registry.batches.name_of(1)
    for name in (f"{batch}.pdf", f"{batch}.r2.pdf", f"{batch}.json"):
        (output / name).write_bytes(b"{}" if name.endswith(".json") else b"%PDF-1.7\n")
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """One keep-alive connection with the console's session cookie."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.cookie = ""

    def request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, float]:
        h = {"Cookie": self.cookie} if self.cookie else {}
        h |= headers or {}
        if body is not None:
            h["Content-Type"] = "application/x-www-form-urlencoded"
        t = time.perf_counter()
        self.conn.request(method, path, body=body, headers=h)
        resp = self.conn.getresponse()
        data = resp.read().decode()
        took = time.perf_counter() - t
        for k, v in resp.getheaders():
            if k.lower() == "set-cookie" and v.startswith("provision_console="):
                self.cookie = v.split(";", 1)[0]
        return resp.status, data, took

    def login(self) -> None:
        _, page, _ = self.request("GET", "/login")
        m = CSRF.search(page)
        assert m
        form = {"username": "bench-admin", "password": PASSWORD, "csrf_token": m.group(1)}
        status, _, _ = self.request("POST", "/login", urllib.parse.urlencode(form))
        assert status == 302, status


def pages(registry: Registry, keyring: Keyring, n: int, k: int) -> dict[str, list[str]]:
    """Each page's paths: K of them, rotating the device, serial or user asked for."""
    step = max(1, n // k)
    picks = [(j * step + 7) % n for j in range(k)]
    ids = [device_id(keyring.pepper, serial_of(i)) for i in picks]
    batch = registry.batches.name_of(1)
    return {
        "/ (overview)": ["/"],
        "/batches": ["/batches"],
        "/batches/<name>": [f"/batches/{batch}"],
        "/devices": ["/devices"],
        "/devices?status=activated": ["/devices?status=activated"],
        "/devices?batch=B&status=pending": [f"/devices?batch={batch}&status=pending"],
        "/devices?q=SERIAL": [f"/devices?q={serial_of(i)}" for i in picks],
        "/devices?q=USER": [f"/devices?q=u{i % 300_000}%40example.com" for i in picks],
        "/devices?q=ID-PREFIX": [f"/devices?q={d[:8]}" for d in ids],
        "/devices/<id>": [f"/devices/{d}" for d in ids],
        "/trace?lot= (10,000 devices)": [f"/trace?lot=MCU-L{(i // LOT):04d}" for i in picks],
        "/recalls": ["/recalls"],
        "/recalls/<name>": [f"/recalls/{RECALL}"],
        "/stats?by=batch": ["/stats?by=batch"],
        "/stats?by=model": ["/stats?by=model"],
        "/stats?by=line": ["/stats?by=line"],
        "/stats?by=week": ["/stats?by=week"],
        "/alerts": ["/alerts"],
        "/reports": ["/reports"],
        "/staff": ["/staff"],
        "API history": [f"/api/v1/staff/devices/{d}/history" for d in ids],
    }


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def screenshots(port: int, folder: Path, keyring: Keyring) -> None:
    from tests.test_browser import chromium

    folder.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    device = device_id(keyring.pepper, serial_of(70))  # activated, scanned twice
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 860}, locale="en-GB")
        page.goto(base + "/login")
        page.fill("#username", "bench-admin")
        page.fill("#password", PASSWORD)
        page.click("form button[type=submit]")
        page.wait_for_url(base + "/")
        for name, path in (
            ("overview", "/"),
            ("device", f"/devices/{device}"),
            ("stats", "/stats?by=model"),
        ):
            page.goto(base + path)
            page.screenshot(path=str(folder / f"console-{name}.png"), full_page=name != "device")
        page.close()


def measure(
    bench: Any, n: int, requests: int, output: Path, token: str, shots: Path | None = None
) -> int:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env |= {
        "PROVISION_DB_URL": bench.registry.url,
        "PROVISION_KEYRING": str(bench.work / "keyring.json"),
        "PROVISION_OUTPUT": str(output),
    }
    argv = [sys.executable, "-m", "provision", "console", "--port", str(port)]
    log = (bench.work / "console.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        client = Client(port)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                client = Client(port)
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the console did not start; see console.log")
            time.sleep(0.2)
        client.login()
        bearer = {"Authorization": f"Bearer {token}"}
        base = [client.request("GET", "/healthz")[2] for _ in range(requests)]
        rows = []
        every = pages(bench.registry, bench.keyring, n, requests)
        # The first request of each page, all of them before any is timed again: the figures
        # the console computes at start are on their way meanwhile.
        firsts = {}
        for name, paths in every.items():
            headers = bearer if name.startswith("API") else None
            status, body, firsts[name] = client.request("GET", paths[0], headers=headers)
            assert status == 200, (name, status, body[:300])
        for name, paths in every.items():
            headers = bearer if name.startswith("API") else None
            first = firsts[name]
            times = []
            for j in range(requests):
                status, body, took = client.request("GET", paths[j % len(paths)], headers=headers)
                assert status == 200, (name, status, body[:300])
                times.append(took)
            rows.append((name, first, times))
        if shots is not None:
            screenshots(port, shots, bench.keyring)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    print(f"\nregistry: {bench.db}, {n:,} devices; {requests} requests a page after the first")
    print(f"{'page':<34} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  goal p95")
    b50, b95 = pct(base, 50) * 1e3, pct(base, 95) * 1e3
    print(f"{'baseline: /healthz':<34} {'-':>9} {b50:>8.1f} {b95:>8.1f} {max(base) * 1e3:>8.1f}")
    met = True
    for name, first, times in rows:
        p95 = pct(times, 95) * 1e3
        ok = p95 <= GOAL_MS
        met &= ok
        print(
            f"{name:<34} {first * 1e3:>9.1f} {pct(times, 50) * 1e3:>8.1f} {p95:>8.1f} "
            f"{max(times) * 1e3:>8.1f}  {'met' if ok else 'NOT'}"
        )
    return 0 if met else 1


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--keep", type=Path, help="build (or reuse, SQLite) the registry here")
    ap.add_argument("--requests", type=int, default=40, help="timed requests a page")
    ap.add_argument("--screenshots", type=Path, metavar="DIR", help="take the README's pictures")
    args = ap.parse_args()
    n = args.devices
    with bench_registry(args.postgres, args.keep, "console") as bench:
        t = time.perf_counter()
        if bench.fresh:
            print(f"building {n:,} devices, {2 * n:,} attempts, {10 * n:,} actions in {bench.work}")
            build_fleet(bench.registry, bench.keyring, n, 2 * n, 10 * n)
        output = bench.work / "output"
        output.mkdir(exist_ok=True)
        token = set_up(bench.registry, bench.keyring, n, output)
        print(f"  set-up {time.perf_counter() - t:.1f} s", flush=True)
        bench.registry.close()
        return measure(bench, n, args.requests, output, token, args.screenshots)


if __name__ == "__main__":
    raise SystemExit(main())
