"""Benchmark `provision reconcile`: N shipments against N registered devices (issue 4, point 7).

    .venv/bin/python benchmarks/reconcile_bench.py --n 1000000

Set-up (not part of the figure, its time is printed): a temporary folder with a keyring, a SQLite
registry bulk-filled with N synthetic devices (real keyed serial hashes; ~60 % activated, ~5 %
revoked, the rest pending) and a shipments CSV of N rows (registered serials, ~3 % unknown
serials, ~2 % repeated rows; date and date-time `shipped_at`, some with a UTC offset).

Measured:
  * the figure: `provision reconcile ... --format csv,json,pdf --quiet --json` end to end as a
    subprocess (process start, imports and the PDF included): wall time and peak RSS;
  * a stage breakdown: `reconcile_shipments` in this process, with timestamps taken from its
    progress callback and from wrappers placed around its stages (benchmark-only timing);
  * a baseline: the same report CSVs from a naive per-row Python reconciliation (csv.reader,
    per-cell checks, a hash and a dict lookup per row, per-cell neutralising), its device load
    timed in full and its row loops on a sample (--baseline-fraction, default N/10) extrapolated
    to N; no process start and no PDF are counted for it.

The category counts reported by the CLI are checked against the counts the generator planted.
Exit status: 0 when the figure is within the limits and the counts are right, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import insert, text

from provision.keys import init_keyring, load_keyring
from provision.registry import Registry, batches, devices
from provision.serials import GS1_AI82_RE, device_id, serial_hash

LIMIT_SECONDS = 30.0
LIMIT_MB = 2048.0
AS_OF = "2026-11-28"
DAY_S = 86_400
CHUNK = 50_000
BATCH_SIZE = 100_000

CUSTOMERS = [
    "Nordic Retail AB",
    "Casa Digitale SpA",
    "Maison SARL",
    "Acme GmbH",
    "Acme, Inc.",  # a comma: the writer quotes it
    "Iberia Hogar SL",
    "Polska Dom Sp. z o.o.",
    "Orange Shop BV",
]
DESTINATIONS = ["SE", "IT", "FR", "DE", "US", "ES", "PL", "NL"]
CARRIERS = ["DHL", "UPS", "FedEx", "PostNord", "DPD"]


def epoch(text_: str) -> int:
    return int(datetime.fromisoformat(text_).replace(tzinfo=UTC).timestamp())


@dataclass
class Fleet:
    """The synthetic registry, as arrays (index = device number, serial BM{i:09d})."""

    n: int
    status: np.ndarray  # "pending" | "activated" | "revoked"
    activated_at: np.ndarray  # epoch seconds, -1 when never activated
    hashes: list[str]


# -- set-up ------------------------------------------------------------------------------------


def build_registry(db_url: str, pepper: bytes, n: int, rng: np.random.Generator) -> Fleet:
    """Bulk-insert N devices with SQLAlchemy Core executemany (no per-device registration)."""
    r = rng.random(n)
    status = np.where(r < 0.60, "activated", np.where(r < 0.65, "revoked", "pending"))
    was_activated = (status == "activated") | ((status == "revoked") & (rng.random(n) < 0.5))
    act = np.where(
        was_activated, epoch("2026-01-01T00:00:00") + rng.integers(0, 330 * DAY_S, n), -1
    )
    revoked = np.where(
        status == "revoked",
        np.where(act > 0, act, epoch("2026-01-01T00:00:00")) + rng.integers(0, 20 * DAY_S, n),
        -1,
    )
    created = epoch("2025-10-01T00:00:00") + rng.integers(0, 60 * DAY_S, n)
    expires = datetime(2031, 1, 1)

    def stamps(values: np.ndarray) -> list[Any]:
        out = np.where(values >= 0, values, np.iinfo(np.int64).min).astype("datetime64[s]")
        return out.astype("datetime64[us]").tolist()  # datetime, or None for NaT

    registry = Registry(db_url)
    hashes: list[str] = []
    ct = b"\x00" * 12 + b"bench-serial-ciphertext!"
    with registry.engine.begin() as conn:
        conn.execute(text("PRAGMA synchronous=OFF"))
        conn.execute(text("PRAGMA cache_size=-400000"))
        now = datetime(2025, 10, 1)
        conn.execute(
            insert(batches),
            [
                {
                    "id": b + 1,
                    "name": f"bench-{b + 1:04d}",
                    "manifest_sha256": "0" * 64,
                    "components_sha256": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for b in range((n + BATCH_SIZE - 1) // BATCH_SIZE)
            ],
        )
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            act_c, rev_c, cre_c = stamps(act[lo:hi]), stamps(revoked[lo:hi]), stamps(created[lo:hi])
            rows = []
            for k, i in enumerate(range(lo, hi)):
                serial = f"BM{i:09d}"
                h = serial_hash(pepper, serial)
                hashes.append(h)
                did = device_id(pepper, serial)
                st = str(status[i])
                rows.append(
                    {
                        "device_id": did,
                        "serial_hash": h,
                        "serial_ct": ct,
                        "device_type": "sensor" if i % 3 else "gateway",
                        "manufacturer": "Bench Devices",
                        "model": f"BM-{i % 7}",
                        "manufactured_at": None,
                        "production_line": "L1",
                        "batch_id": i // BATCH_SIZE + 1,
                        "batch_seq": i % BATCH_SIZE,
                        "key_id": 1,
                        "expires_at": expires,
                        "status": st,
                        "created_at": cre_c[k],
                        "activated_at": act_c[k],
                        "user_id": "customer@example.com" if act_c[k] is not None else None,
                        "activation_token_hash": None,
                        "revoked_at": rev_c[k],
                        "revoked_by": "security" if st == "revoked" else None,
                        "revoked_reason": "reported stolen" if st == "revoked" else None,
                        "action_count": 0,
                        "action_head": None,
                        "pairing_count": 0,
                        "pairing_head": None,
                        "seal": "0" * 64,  # reconcile reads no seal; audit is not benchmarked here
                    }
                )
            conn.execute(insert(devices), rows)
    registry.close()
    return Fleet(n, status, act, hashes)


def write_shipments(
    path: Path, fleet: Fleet, n_rows: int, rng: np.random.Generator, multiline: bool
) -> dict[str, int]:
    """Write the shipments CSV; returns the category counts it must produce."""
    n_unknown = max(1, n_rows * 3 // 100)
    n_dup = max(1, n_rows * 2 // 100)
    n_known = min(fleet.n, n_rows - n_unknown - n_dup)
    shipped = rng.permutation(fleet.n)[:n_known]
    act = fleet.activated_at[shipped]
    has_act = act >= 0
    early = has_act & (rng.random(n_known) < 0.03)
    # Matched: shipped 1-60 days before activation; early: 1-10 days after it (so a date-only
    # shipped_at never changes the category); never activated: shipped up to 400 days ago.
    as_of = epoch(AS_OF + "T00:00:00")
    ship_known = np.where(
        has_act,
        np.where(
            early,
            act + DAY_S + rng.integers(0, 9 * DAY_S, n_known),
            act - DAY_S - rng.integers(0, 59 * DAY_S, n_known),
        ),
        as_of - rng.integers(0, 400 * DAY_S, n_known),
    )
    ship_unknown = as_of - rng.integers(0, 200 * DAY_S, n_unknown)
    serials = np.concatenate(
        [
            np.char.add("BM", np.char.zfill(shipped.astype(str), 9)),
            np.char.add("UK", np.char.zfill(np.arange(n_unknown).astype(str), 9)),
        ]
    )
    when = np.concatenate([ship_known, ship_unknown]).astype("datetime64[s]")
    kind = rng.integers(0, 5, len(when))  # 0,1: date; 2,3: ...Z; 4: +02:00
    local = (when + np.timedelta64(2, "h")).astype("datetime64[s]")  # the same instant at +02:00
    stamp = np.where(
        kind < 2,
        np.datetime_as_string(when, unit="D"),
        np.where(
            kind < 4,
            np.char.add(np.datetime_as_string(when, unit="s"), "Z"),
            np.char.add(np.datetime_as_string(local, unit="s"), "+02:00"),
        ),
    )
    # Repeated rows carry the same shipped_at as the row they repeat, so whichever comes first
    # in the file, the serial's category is the same.
    dup_of = rng.integers(0, len(serials), n_dup)
    serials = np.concatenate([serials, serials[dup_of]])
    stamp = np.concatenate([stamp, stamp[dup_of]])
    order = rng.permutation(len(serials))
    total = len(serials)
    frame = pd.DataFrame(
        {
            "serial": serials[order],
            "shipped_at": stamp[order],
            "order_id": np.char.add("SO-", (np.arange(total) // 4 + 100_000).astype(str)),
            "customer": np.array(CUSTOMERS)[rng.integers(0, len(CUSTOMERS), total)],
            "destination": np.array(DESTINATIONS)[rng.integers(0, len(DESTINATIONS), total)],
            "carrier": np.array(CARRIERS)[rng.integers(0, len(CARRIERS), total)],
        }
    )
    if multiline:  # a quoted line break: the reader must keep physical line numbers right
        frame.loc[total // 2, "customer"] = "Acme GmbH\nWarehouse 2"
    frame.to_csv(path, index=False, lineterminator="\n")

    unshipped = np.ones(fleet.n, dtype=bool)
    unshipped[shipped] = False
    st = fleet.status[shipped]
    live = st != "revoked"  # a revoked device is reported as shipped_revoked only
    return {
        "matched": int((live & has_act & ~early).sum()),
        "activated_not_shipped": int((unshipped & (fleet.activated_at >= 0)).sum()),
        "activated_before_shipped": int((live & early).sum()),
        "shipped_not_activated": int((st == "pending").sum()),
        "shipped_unknown_serial": n_unknown,
        "duplicate_shipment": n_dup,
        "shipped_revoked": int((st == "revoked").sum()),
        "registered_not_shipped": int((unshipped & (fleet.status == "pending")).sum()),
    }


# -- the figure: the CLI as a subprocess -------------------------------------------------------


def provision_exe() -> str:
    here = Path(sys.executable).parent / "provision"
    return str(here) if here.exists() else shutil.which("provision") or "provision"


def run_cli(
    db_url: str, keyring: Path, shipments: Path, report_dir: Path
) -> tuple[float, float, dict[str, Any], list[str]]:
    """(wall seconds, peak RSS MB, summary JSON, the command) of one `provision reconcile`."""
    cmd = [
        provision_exe(),
        "--db",
        db_url,
        "--keyring",
        str(keyring),
        "reconcile",
        str(shipments),
        "--as-of",
        AS_OF,
        "--report-dir",
        str(report_dir),
        "--format",
        "csv,json,pdf",
        "--quiet",
        "--json",
    ]
    gnu_time = Path("/usr/bin/time")
    timing = report_dir.parent / "time.txt"
    full = [str(gnu_time), "-f", "%e %M", "-o", str(timing), *cmd] if gnu_time.exists() else cmd
    t0 = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"provision reconcile failed with exit code {proc.returncode}")
    if gnu_time.exists():
        _elapsed, kb = timing.read_text().split()[-2:]
        peak_mb = int(kb) / 1024
    else:  # Linux reports ru_maxrss in KiB: the largest child waited for so far
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak_mb, json.loads(proc.stdout), cmd


# -- the stage breakdown: in process -----------------------------------------------------------


@contextmanager
def wrapped(module: Any, name: str, marks: list[tuple[str, float]]) -> Iterator[None]:
    """Timestamp the start and end of module.name (benchmark-only instrumentation)."""
    original = getattr(module, name, None)
    if original is None:
        yield
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        marks.append((f"{name}:start", time.perf_counter()))
        try:
            return original(*args, **kwargs)
        finally:
            marks.append((f"{name}:end", time.perf_counter()))

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, original)


def stage_breakdown(
    db_url: str, keyring_path: Path, shipments: Path, report_dir: Path
) -> list[tuple[str, float]]:
    import provision.reconcile as rec

    marks: list[tuple[str, float]] = []

    def on_progress(stage: str, done: int, total: int) -> None:
        if done == 0:
            marks.append((f"{stage}:start", time.perf_counter()))
        if done >= total:
            marks.append((f"{stage}:end", time.perf_counter()))

    registry = Registry(db_url, migrate=False)
    keyring = load_keyring(keyring_path)
    gc.collect()
    with (
        wrapped(rec, "read_shipments", marks),
        wrapped(rec, "categorise", marks),
        wrapped(rec, "write_report", marks),
    ):
        t0 = time.perf_counter()
        rec.reconcile_shipments(
            registry,
            keyring,
            shipments,
            as_of=date.fromisoformat(AS_OF),
            report_dir=report_dir,
            formats=("csv", "json", "pdf"),
            on_progress=on_progress,
        )
        total = time.perf_counter() - t0
    registry.close()

    def span(stage: str) -> float:
        starts = [t for k, t in marks if k == f"{stage}:start"]
        ends = [t for k, t in marks if k == f"{stage}:end"]
        return (max(ends) - min(starts)) if starts and ends else 0.0

    stages = [
        ("read/validate", span("read_shipments")),
        ("hash", span("hash")),
        ("load", span("load")),
        ("categorise", span("categorise")),
        ("write", span("write_report")),
    ]
    stages.append(("other", total - sum(s for _, s in stages)))
    stages.append(("total", total))
    return stages


# -- the baseline: naive per-row Python --------------------------------------------------------

FORMULA = ("=", "+", "-", "@", "\t", "\r")
CONTROL = re.compile("[\x00-\x1f\x7f]")
SHIP_HEAD = ["shipments_line", "serial", "shipped_at", "order_id", "customer", "destination"]
SHIP_HEAD += ["carrier"]
DEV_HEAD = ["device_id", "device_type", "model", "batch", "status"]
NAIVE_HEADERS = {
    "matched": [*SHIP_HEAD, *DEV_HEAD, "activated_at", "days_to_activation"],
    "activated_not_shipped": [*DEV_HEAD, "activated_at"],
    "activated_before_shipped": [*SHIP_HEAD, *DEV_HEAD, "activated_at", "days_early"],
    "shipped_not_activated": [*SHIP_HEAD, *DEV_HEAD, "age_days", "aging_bucket"],
    "shipped_unknown_serial": SHIP_HEAD,
    "duplicate_shipment": [*SHIP_HEAD, "first_line", "first_shipped_at"],
    "shipped_revoked": [*SHIP_HEAD, *DEV_HEAD, "revoked_at"],
    "registered_not_shipped": [*DEV_HEAD, "registered_at"],
}


def _parse(stamp: str) -> datetime:
    t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else ""


def _safe(cell: Any) -> Any:
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA) else cell


def _days(a: datetime, b: datetime) -> float:
    return round((a - b).total_seconds() / DAY_S, 2)


def shipped_hash_set(pepper: bytes, shipments: Path) -> set[str]:
    with open(shipments, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        col = [h.strip().lower() for h in next(reader)].index("serial")
        return {serial_hash(pepper, row[col].strip()) for row in reader if row}


def naive_reconcile(
    db_path: str, pepper: bytes, shipments: Path, sample: int, shipped: set[str], out_dir: Path
) -> tuple[float, float, float, int, int]:
    """The same report as CSVs, one Python step per row (validation, hash, dict lookup,
    categories, neutralised cells), on the first SAMPLE shipment rows and SAMPLE devices.

    Returns (device load s, shipment rows s, device rows s, rows, devices); writing the CSVs is
    counted with the rows. SHIPPED (every shipped hash, computed untimed) tells which sampled
    devices were never shipped, as the full run would.
    """
    t0 = time.perf_counter()
    con = sqlite3.connect(db_path)
    devs = {
        row[0]: row[1:]
        for row in con.execute(
            "SELECT d.serial_hash, d.device_id, d.device_type, d.model, b.name, d.status, "
            "d.created_at, d.activated_at, d.revoked_at "
            "FROM devices d JOIN batches b ON b.id = d.batch_id ORDER BY d.id"
        )
    }
    con.close()
    t_load = time.perf_counter() - t0

    as_of = _parse(AS_OF)
    out: dict[str, list[list[Any]]] = {name: [] for name in NAIVE_HEADERS}
    errors: list[tuple[int, str]] = []
    seen: dict[str, tuple[int, datetime]] = {}
    t0 = time.perf_counter()
    rows = 0
    with open(shipments, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader)]
        i_serial, i_ship = header.index("serial"), header.index("shipped_at")
        texts = [header.index(c) for c in ("order_id", "customer", "destination", "carrier")]
        for line, raw in enumerate(reader, start=2):
            if rows >= sample:
                break
            if not any(v.strip() for v in raw):
                continue
            rows += 1
            vals = [v.strip() for v in raw]
            serial, stamp = vals[i_serial], vals[i_ship]
            if not GS1_AI82_RE.fullmatch(serial) or len(serial) > 64:
                errors.append((line, "serial"))
                continue
            try:
                when = _parse(stamp)
            except ValueError:
                errors.append((line, "shipped_at"))
                continue
            if any(len(vals[i]) > 128 or CONTROL.search(vals[i]) for i in texts):
                errors.append((line, "text"))
                continue
            h = serial_hash(pepper, serial)
            ship = [line, serial, _iso(when), *(vals[i] for i in texts)]
            if h in seen:
                first_line, first_at = seen[h]
                out["duplicate_shipment"].append([*ship, first_line, _iso(first_at)])
                continue
            seen[h] = (line, when)
            dev = devs.get(h)
            if dev is None:
                out["shipped_unknown_serial"].append(ship)
                continue
            did, kind, model, batch, st, _created, act, rev = dev
            cells = [*ship, did, kind, model, batch, st]
            if st == "revoked":
                out["shipped_revoked"].append([*cells, _iso(_parse(rev))])
            elif act is not None:
                activated = _parse(act)
                if activated < when:
                    out["activated_before_shipped"].append(
                        [*cells, _iso(activated), _days(when, activated)]
                    )
                else:
                    out["matched"].append([*cells, _iso(activated), _days(activated, when)])
            elif st == "pending":
                age = max(0, (as_of - when).days)
                bucket = "0-30" if age <= 30 else "31-90" if age <= 90 else "91+"
                out["shipped_not_activated"].append([*cells, age, bucket])
    t_rows = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_dev = 0
    for h, (did, kind, model, batch, st, created, act, _rev) in devs.items():
        if n_dev >= sample:
            break
        n_dev += 1
        if h in shipped:
            continue
        if act is not None:
            out["activated_not_shipped"].append([did, kind, model, batch, st, _iso(_parse(act))])
        elif st == "pending":
            out["registered_not_shipped"].append(
                [did, kind, model, batch, st, _iso(_parse(created))]
            )
    t_dev = time.perf_counter() - t0

    t0 = time.perf_counter()
    out_dir.mkdir()
    for name, cat_rows in out.items():
        with open(out_dir / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(NAIVE_HEADERS[name])
            writer.writerows([_safe(c) for c in r] for r in cat_rows)
    t_write = time.perf_counter() - t0
    return t_load, t_rows + t_write, t_dev, rows, n_dev


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="devices and shipment rows")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--baseline-fraction", type=float, default=0.1, help="sample of the baseline")
    ap.add_argument("--no-stages", action="store_true", help="skip the in-process breakdown")
    ap.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    ap.add_argument(
        "--multiline", action="store_true", help="put one quoted line break in the shipments"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--dir", type=Path, help="work here instead of a temporary folder")
    args = ap.parse_args(argv)
    n = args.n
    rng = np.random.default_rng(args.seed)

    work = args.dir or Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        keyring_path = work / "keys" / "keyring.json"
        keyring = init_keyring(keyring_path)
        db_path = work / "registry.db"
        db_url = f"sqlite:///{db_path}"
        print(f"work folder: {work}", flush=True)

        t0 = time.perf_counter()
        fleet = build_registry(db_url, keyring.pepper, n, rng)
        t_registry = time.perf_counter() - t0
        print(f"setup: registry of {n:,} devices in {t_registry:.1f} s", flush=True)
        t0 = time.perf_counter()
        shipments = work / "shipments.csv"
        expected = write_shipments(shipments, fleet, n, rng, args.multiline)
        t_ship = time.perf_counter() - t0
        size_mb = shipments.stat().st_size / 2**20
        print(f"setup: shipments CSV of {n:,} rows ({size_mb:.0f} MB) in {t_ship:.1f} s")
        del fleet
        gc.collect()

        print("timing: provision reconcile (subprocess) ...", flush=True)
        wall, peak_mb, summary, cmd = run_cli(db_url, keyring_path, shipments, work / "report")
        counts_ok = summary["counts"] == expected
        shown = [Path(c).name if c == cmd[0] else c for c in cmd]
        print("command: " + " ".join(shown).replace(str(work), "$WORK"))

        stages: list[tuple[str, float]] = []
        if not args.no_stages:
            print("timing: reconcile_shipments stages (in process) ...", flush=True)
            stages = stage_breakdown(db_url, keyring_path, shipments, work / "report-stages")

        base_rps = None
        if not args.no_baseline:
            sample = max(1, int(n * args.baseline_fraction))
            print(f"timing: naive per-row baseline on {sample:,} rows ...", flush=True)
            shipped = shipped_hash_set(keyring.pepper, shipments)  # untimed
            t_load, t_rows, t_dev, rows, n_dev = naive_reconcile(
                str(db_path), keyring.pepper, shipments, sample, shipped, work / "report-naive"
            )
            del shipped
            base_total = t_load + t_rows * n / rows + t_dev * n / max(1, n_dev)
            base_rps = n / base_total
            print(
                f"baseline: load {n:,} devices {t_load:.1f} s, {rows:,} rows {t_rows:.1f} s, "
                f"{n_dev:,} devices {t_dev:.2f} s -> {base_total:.1f} s extrapolated to {n:,}"
            )
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    ok = wall <= LIMIT_SECONDS and peak_mb <= LIMIT_MB and counts_ok
    table = [
        ("N (shipments = devices)", f"{n:,}"),
        ("setup s (not timed)", f"{t_registry + t_ship:.1f}"),
        ("reconcile s (end to end)", f"{wall:.2f}"),
        ("peak MB (RSS)", f"{peak_mb:.0f}"),
        ("rows/s", f"{n / wall:,.0f}"),
        ("baseline rows/s (naive)", f"{base_rps:,.0f}" if base_rps else "-"),
        ("speed-up", f"{n / wall / base_rps:.1f}x" if base_rps else "-"),
        ("counts as planted", "yes" if counts_ok else "NO"),
        (
            f"result (<= {LIMIT_SECONDS:.0f} s, <= {LIMIT_MB:.0f} MB)",
            "PASS" if ok else "FAIL",
        ),
    ]
    width = max(len(k) for k, _ in table)
    print()
    print(f"{'figure':<{width}}  value")
    for k, v in table:
        print(f"{k:<{width}}  {v}")
    if stages:
        print()
        print(f"{'stage (in process)':<{width}}  seconds")
        for stage, seconds in stages:
            print(f"{stage:<{width}}  {seconds:.2f}")
    if not counts_ok:
        print("\ncounts differ (category: got / expected):")
        for k in expected:
            if summary["counts"].get(k) != expected[k]:
                print(f"  {k}: {summary['counts'].get(k)} / {expected[k]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
