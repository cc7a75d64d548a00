"""Benchmark the registry's questions at 1,000,000 devices and 4,000,000 components.

    .venv/bin/python benchmarks/questions_bench.py [--devices 1000000] [--postgres]
                                                   [--keep DIR] [--runs 5]

Set-up (timed apart): a temporary keyring and a registry (SQLite, or with --postgres a throwaway
PostgreSQL server from tests.pgcluster) holding DEVICES devices in batches of 100,000, each with
four components (mcu, battery, radio, antenna); the mcu lot covers 10,000 devices (lot
`MCU-L0007` is devices 70,000 to 79,999), the mcu carries its own serial. One device in 50 is
activated by its own user. Rows are written in bulk, as registering would leave them (keyed
serial hashes, encrypted serials, sealed rows, component serial hashes), then ANALYZEd.

Measured in this process, each the best of RUNS (goal in brackets, from the issue):
  * `find` by device id, by id prefix, by serial, by QR URL, by user and by component serial
    [50 ms each];
  * the first page of `devices` (50 rows), unfiltered and with --status activated
    [100 ms];
  * `trace --lot` of a lot covering 10,000 devices, with its summary [1 s];
  * `recall create` for those 10,000 devices, chain entries and seals included [3 s], once
    (a second recall of the same lot under another name, so each run creates a new one).
Baseline in the same run: a primary-key look-up of one device (the floor of any query).
Exit status 0 when every goal is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bulk import Writer, bench_registry  # noqa: E402

from provision.audit import make_sealer  # noqa: E402
from provision.keys import Keyring  # noqa: E402
from provision.payload import payload_url, sign_token  # noqa: E402
from provision.registry import Registry  # noqa: E402
from provision.serials import (  # noqa: E402
    component_row_hash,
    component_serial_hash,
    device_id,
    encrypt_serial,
    serial_hash,
)

CHUNK = 20_000
BATCH = 100_000
LOT_SIZE = 10_000
BASE = "https://act.example.com"
COMPONENTS = (
    ("mcu", "STM32L4", "ST"),
    ("battery", "CR2032", "Renata"),
    ("radio", "nRF52", "Nordic"),
    ("antenna", "PCB-2G4", "Taoglas"),
)


def serial_of(i: int) -> str:
    return f"QB{i:09d}"


def build(registry: Registry, keyring: Keyring, n: int) -> None:
    sealer = make_sealer(keyring)
    key = keyring.active
    w = Writer(registry)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    expires = start + timedelta(days=730)
    cur = w.raw.cursor()
    mark = "%s" if w.pg else "?"
    for b in range(0, n, BATCH):
        cur.execute(
            "INSERT INTO batches (id, name, manifest_sha256, created_at, updated_at) VALUES "
            f"({mark}, {mark}, {mark}, {mark}, {mark})",
            (b // BATCH + 1, f"line1-{b // BATCH:03d}", "0" * 64, w.stamp(start), w.stamp(start)),
        )
    cur.close()
    dcols = [
        "id", "device_id", "serial_hash", "serial_ct", "device_type", "manufacturer", "model",
        "production_line", "batch_id", "batch_seq", "key_id", "expires_at", "status",
        "created_at", "activated_at", "user_id", "action_count", "pairing_count", "seal",
    ]  # fmt: skip
    ccols = [
        "device_pk", "component_type", "component_spec", "component_serial_ct", "row_hash",
        "supplier", "lot", "batch_id", "created_at", "component_serial_hash",
    ]  # fmt: skip
    t = time.perf_counter()
    for lo in range(0, n, CHUNK):
        devs, comps = [], []
        for i in range(lo, min(n, lo + CHUNK)):
            serial = serial_of(i)
            did = device_id(keyring.pepper, serial)
            sh = serial_hash(keyring.pepper, serial)
            activated = i % 50 == 0
            user = f"customer{i}@example.com" if activated else None
            at = start + timedelta(minutes=i) if activated else None
            status = "activated" if activated else "pending"
            # Sealed as a real row (activation's chain entries are left out: the questions
            # read no chain, and audit_bench.py measures those).
            seal = sealer.device_values(
                did, sh, key.id, expires, status, user, at, None, None, None, None, 0, None, 0,
                None,
            )  # fmt: skip
            batch_id = i // BATCH + 1
            devs.append(
                (i + 1, did, sh, encrypt_serial(keyring.data_key, did, serial), "thermostat",
                 "Acme", f"TH-{i % 5}", f"line-{i % 3}", batch_id, i % BATCH, key.id,
                 w.stamp(expires), status, w.stamp(start), w.stamp(at) if at else None, user,
                 0, 0, seal)
            )  # fmt: skip
            for kind, spec, supplier in COMPONENTS:
                own = f"{kind.upper()}-{i:09d}" if kind == "mcu" else ""
                rh = component_row_hash(keyring.pepper, sh, kind, spec, own)
                lot = f"MCU-L{i // LOT_SIZE:04d}" if kind == "mcu" else f"{kind}-{i // 50_000}"
                comps.append(
                    (i + 1, kind, spec,
                     encrypt_serial(keyring.data_key, rh[:16], own) if own else None, rh,
                     supplier, lot, batch_id, w.stamp(start),
                     component_serial_hash(keyring.pepper, own) if own else None)
                )  # fmt: skip
        w.rows("devices", dcols, devs)
        w.rows("device_components", ccols, comps)
        w.commit()
        if lo % 200_000 == 0:
            print(f"  {lo + len(devs):>9,} devices  {time.perf_counter() - t:6.1f} s", flush=True)
    w.close()
    with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def best(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--keep", type=Path, help="build (or reuse, SQLite) the registry here")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.devices
    with bench_registry(args.postgres, args.keep, "questions") as bench:
        if bench.fresh:
            print(f"building {n:,} devices, {4 * n:,} components in {bench.work} ...")
            t = time.perf_counter()
            build(bench.registry, bench.keyring, n)
            print(f"  set-up {time.perf_counter() - t:.1f} s\n")
        return measure(bench.registry, bench.keyring, n, args.runs, bench.db)


def measure(registry: Registry, keyring: Keyring, n: int, runs: int, db: str) -> int:
    from provision.queries import DeviceFilter, find, list_devices
    from provision.recalls import create_recall
    from provision.states import DeviceStatus
    from provision.trace import TraceQuery, trace_components, write_trace

    probe = n // 2 + 7  # a device in the middle
    did = device_id(keyring.pepper, serial_of(probe))
    key = keyring.active
    assert key.secret is not None
    # The device's own payload: the device rows above all expire on the same day.
    expiry = int((datetime(2026, 6, 1, tzinfo=UTC) + timedelta(days=730)).timestamp())
    url = payload_url(BASE, sign_token(key.id, key.secret, did, expiry))
    user_of = (n // 2 // 50) * 50  # an activated device
    lot = f"MCU-L{(n // 2) // LOT_SIZE:04d}"
    rows: list[tuple[str, float, float]] = []

    def row(name: str, seconds: float, goal: float) -> None:
        rows.append((name, seconds, goal))

    base, _ = best(lambda: registry.devices.get(did), runs)
    for label, text in (
        ("find: device id", did),
        ("find: id prefix (8)", did[:8]),
        ("find: ID as printed", f"ID {did}"),
        ("find: serial", serial_of(probe)),
        ("find: serial, wrong case", serial_of(probe).lower()),
        ("find: QR URL", url),
        ("find: user", f"Customer{user_of}@Example.com"),
        ("find: component serial", f"MCU-{probe:09d}"),
    ):
        seconds, result = best(lambda text=text: find(registry, keyring, text), runs)
        assert result.hits, (label, text)
        row(label, seconds, 0.050)
    seconds, page = best(lambda: list_devices(registry, DeviceFilter(), limit=50), runs)
    assert len(page.devices) == 50
    row("devices: first page", seconds, 0.100)
    flt = DeviceFilter(status=DeviceStatus.ACTIVATED)
    seconds, page = best(lambda: list_devices(registry, flt, limit=50), runs)
    assert len(page.devices) == 50
    row("devices: first page, --status activated", seconds, 0.100)
    seconds, page = best(
        lambda: list_devices(registry, flt, after=page.next_cursor, limit=50), runs
    )
    row("devices: second page, --status activated", seconds, 0.100)

    def trace() -> int:
        # What `provision trace --lot L --format json` does: every row read and written, the
        # summary counted on the way.
        result = trace_components(registry, keyring, TraceQuery(lot=lot))
        summary = write_trace(result, "json", None, io.StringIO())
        return summary.devices

    seconds, traced = best(trace, runs)
    assert traced == LOT_SIZE, traced
    row(f"trace --lot {lot} ({LOT_SIZE:,} devices)", seconds, 1.0)
    t = time.perf_counter()
    made = create_recall(
        registry,
        keyring,
        f"bench-{int(time.time())}",
        TraceQuery(lot=lot),
        "benchmark: supplier reported a bad lot",
        hold=True,
        actor="bench",
    )
    seconds = time.perf_counter() - t
    assert made.counts.devices == LOT_SIZE, made
    row(f"recall create --lot {lot} --hold ({LOT_SIZE:,} devices)", seconds, 3.0)

    print(f"registry: {db}, {n:,} devices, {4 * n:,} components; best of {runs}")
    print(f"{'operation':<52} {'ms':>9} {'goal ms':>9}  result")
    print(f"{'baseline: one device by primary key':<52} {base * 1000:>9.2f} {'-':>9}")
    met = True
    for name, seconds, goal in rows:
        ok = seconds <= goal
        met &= ok
        print(f"{name:<52} {seconds * 1000:>9.1f} {goal * 1000:>9.0f}  {'met' if ok else 'NOT'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
