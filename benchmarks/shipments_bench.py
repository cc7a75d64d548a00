"""Benchmark the shipments feed: `shipments import`, then `reconcile` of the stored feed, beside
today's one-off `reconcile FILE` (the in-memory approach), at 1M or 10M devices and shipments.

    .venv/bin/python benchmarks/shipments_bench.py [--devices 1000000] [--postgres]
        [--keep DIR [--reuse]] [--build-only]

Goals (issue "Shipments as a feed"): 10,000,000 shipments imported in at most 2 minutes, and
reconciled against 10,000,000 devices end to end in at most 3 minutes with at most 2 GB peak
memory.

The baseline (today's in-memory `reconcile FILE`) runs at up to 1,000,000 devices only.

Set-up (timed apart): N devices in batches of 100,000 (7 in 10 activated, 1 in 100 revoked),
and a shipments file of one row for 9 in 10 of them, plus 1% unknown serials and 0.5% repeated
rows. Each measured step runs as its own `python -m provision` process; its peak memory is the
largest sum of that process's and its worker processes' resident memory (sampled every 0.1 s).
Exit status 0 when every goal is met.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bulk import Writer  # noqa: E402
from fleet_bench import DEVICE_COLS  # noqa: E402

from provision.audit import make_sealer  # noqa: E402
from provision.keys import init_keyring, load_keyring  # noqa: E402
from provision.registry import Registry  # noqa: E402
from provision.serials import device_id, encrypt_serial, serial_hash  # noqa: E402

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
BASELINE_MAX = 1_000_000  # the in-memory reconcile grows with the rows: 1M takes 1.4 GB
CHUNK = 20_000


def build(registry: Registry, keyring_path: Path, n: int, ship_file: Path) -> None:
    keyring = load_keyring(keyring_path)
    sealer = make_sealer(keyring)
    key = keyring.active
    w = Writer(registry)
    expires = START + timedelta(days=1000)
    for b in range((n + 99_999) // 100_000):
        made = START + timedelta(days=3 * b)
        w.sql(
            "INSERT INTO batches (id, name, manifest_sha256, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (b + 1, f"b{b:03d}", "0" * 64, w.stamp(made), w.stamp(made)),
        )
    t = time.perf_counter()
    with ship_file.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["serial", "shipped_at", "order_id", "customer", "destination", "carrier"])
        for lo in range(0, n, CHUNK):
            devs = []
            for i in range(lo, min(n, lo + CHUNK)):
                serial = f"SB{i:010d}"
                did = device_id(keyring.pepper, serial)
                sh = serial_hash(keyring.pepper, serial)
                created = START + timedelta(days=3 * (i // 100_000), seconds=i % 86_400)
                shipped = created + timedelta(days=2 + i % 5)
                status, activated, user = "pending", None, None
                if i % 10 < 7:
                    status, activated = "activated", shipped + timedelta(days=1 + i % 40)
                    user = f"u{i % 50_000}@example.com"
                if i % 100 == 99:
                    status = "revoked"
                seal = sealer.device_values(
                    did, sh, key.id, expires, status, user, activated, None, None, None,
                    None, 0, None, 0, None,
                )  # fmt: skip
                devs.append(
                    (i + 1, did, sh, encrypt_serial(keyring.data_key, did, serial), "sensor",
                     "Acme", "S-1", "l1", i // 100_000 + 1, i % 100_000, key.id,
                     w.stamp(expires), status, w.stamp(created), w.stamp(activated), user, None,
                     0, None, 0, None, seal)
                )  # fmt: skip
                if i % 10 != 9:
                    row = [serial, shipped.strftime("%Y-%m-%dT%H:%M:%SZ"), f"SO{i}", "Retail",
                           "Lyon", "DHL"]  # fmt: skip
                    out.writerow(row)
                    if i % 200 == 0:
                        out.writerow(row)  # sent twice
                if i % 100 == 50:
                    out.writerow([f"XX{i:010d}", shipped.strftime("%Y-%m-%d"), "", "", "", ""])
            w.rows("devices", DEVICE_COLS, devs)
            w.commit()
            if lo % 1_000_000 == 0:
                print(f"  {lo + len(devs):>10,} devices  {time.perf_counter() - t:7.1f} s")
    w.raw.close()
    with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if registry.is_postgresql else "ANALYZE")


_CHILD = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "f'\\nMAXRSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'))\n"
    "from provision.cli import main\n"
    "sys.argv = ['provision', *sys.argv[1:]]\n"
    "main()\n"
)


def _tree_rss(pid: int) -> int:
    """Resident bytes of PID and all its descendants (worker processes included), now."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run(env: dict[str, str], *args: str) -> tuple[float, float, str]:
    """Seconds and peak MB of one `provision ...` process: the largest sum of its own and its
    worker processes' resident memory, sampled every 0.1 s (and never below its own
    ru_maxrss)."""
    os.sync()  # what an earlier step (or the set-up) wrote is on disk: not measured here
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak_tree = 0
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.append(proc.stdout.read())),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err.append(proc.stderr.read())),  # type: ignore[union-attr]
    ]
    for r in readers:
        r.start()
    while proc.poll() is None:
        peak_tree = max(peak_tree, _tree_rss(proc.pid))
        time.sleep(0.1)
    for r in readers:
        r.join()
    seconds = time.perf_counter() - t
    stdout, stderr = "".join(out), "".join(err)
    if proc.returncode not in (0, 3):
        sys.exit(f"provision {' '.join(args)} failed ({proc.returncode}):\n{stderr}")
    peak = [ln for ln in stderr.splitlines() if ln.startswith("MAXRSS ")]
    own = int(peak[-1].split()[1]) * 1024
    return seconds, max(own, peak_tree) / 2**20, stdout


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--keep", type=Path)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="SQLite: reuse the registry and file a kept folder built for as many devices "
        "(its stored shipments are cleared first)",
    )
    ap.add_argument("--build-only", action="store_true", help="build the data and stop")
    args = ap.parse_args()
    n = args.devices
    work = args.keep or Path(tempfile.mkdtemp(prefix="provision-ship-"))
    work.mkdir(parents=True, exist_ok=True)
    keyring_path = work / "keyring.json"
    ship_file = work / "shipments.csv"
    cluster = None
    if args.postgres:
        from tests.pgcluster import PostgresCluster

        cluster = PostgresCluster()
        cluster.start()
        url = cluster.create_database("ship")
    else:
        db = work / "registry.db"
        url = f"sqlite:///{db}"
    marker = work / "built.txt"
    reuse = (
        args.reuse
        and not args.postgres
        and marker.exists()
        and marker.read_text().strip() == str(n)
    )
    if not reuse and not args.postgres:
        for p in (work / "registry.db", keyring_path, marker):
            p.unlink(missing_ok=True)
    for report in ("stored", "file", "out"):  # a kept folder's earlier reports
        shutil.rmtree(work / report, ignore_errors=True)
    try:
        if reuse:
            registry = Registry(url, keyring=load_keyring(keyring_path))
            with registry.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM shipments")
                conn.exec_driver_sql("DELETE FROM shipment_imports")
            registry.close()
            print(f"reusing {n:,} devices and their shipments file in {work}")
        else:
            keyring_path.unlink(missing_ok=True)
            init_keyring(keyring_path)
            registry = Registry(url, keyring=load_keyring(keyring_path))
            print(f"building {n:,} devices and their shipments file in {work}")
            t = time.perf_counter()
            build(registry, keyring_path, n, ship_file)
            registry.close()
            marker.write_text(f"{n}\n")
            print(f"  set-up {time.perf_counter() - t:.1f} s")
        rows = sum(1 for _ in ship_file.open()) - 1
        print(f"  {rows:,} shipment rows\n")
        if args.build_only:
            return 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
        env |= {"PROVISION_DB_URL": url, "PROVISION_KEYRING": str(keyring_path)}
        env |= {"PROVISION_OUTPUT": str(work / "out")}
        results = []
        s, mb, _ = run(env, "--verbose", "shipments", "import", str(ship_file), "--json")
        goal = 120.0 * n / 10_000_000
        results.append(("shipments import", s, mb, goal, None))
        s, mb, _ = run(env, "reconcile", "--report-dir", str(work / "stored"), "--json")
        results.append(("reconcile, stored feed", s, mb, 180.0 * n / 10_000_000, 2048.0))
        if n <= BASELINE_MAX:
            s, mb, _ = run(env, "reconcile", str(ship_file), "--report-dir", str(work / "file"))
            results.append(("baseline: reconcile FILE (in memory)", s, mb, None, None))
        else:
            print(f"(baseline, the in-memory reconcile FILE, runs at --devices {BASELINE_MAX:,})")
    finally:
        if cluster is not None:
            cluster.stop()
    db_name = "PostgreSQL" if args.postgres else "SQLite"
    print(f"registry: {db_name}: {n:,} devices, {rows:,} shipment rows")
    print(f"{'operation':<40} {'s':>8} {'peak MB':>8} {'goal s':>8} {'goal MB':>8}  result")
    met = True
    for name, seconds, mb, goal_s, goal_mb in results:
        ok = (goal_s is None or seconds <= goal_s) and (goal_mb is None or mb <= goal_mb)
        if goal_s is not None:
            met &= ok
        gs = f"{goal_s:.0f}" if goal_s is not None else "-"
        gm = f"{goal_mb:.0f}" if goal_mb is not None else "-"
        verdict = ("met" if ok else "NOT") if goal_s is not None else ""
        print(f"{name:<40} {seconds:>8.1f} {mb:>8.0f} {gs:>8} {gm:>8}  {verdict}")
    print("(goals scale with --devices: 120 s and 180 s at 10,000,000)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
