"""Benchmark `provision history` of one device with 100,000 actions (issue 6, point 3).

    .venv/bin/python benchmarks/history_bench.py [--actions 100000] [--no-postgres]

Set-up (not part of the figures, its time is printed): a temporary keyring, a registry with one
device registered through `register_batch`, then a chain of N actions bulk-inserted with
SQLAlchemy Core executemany. Each entry is sealed exactly as `Registry._append_action` does
(`provision.chain.Sealer`, `provision.chain.genesis_hash`, the sealed chain head in
`devices.action_head`, and the device's seal over its new state), and
`provision audit verify DEVICE` must accept the chain.

Measured, on SQLite and on a throwaway PostgreSQL server (tests.pgcluster.PostgresCluster):
  * `provision history DEVICE_ID --json` end to end as a subprocess (process start, imports and
    JSON output of every action included), and the same with `--limit 100`; the start-up cost
    of the CLI alone (`provision --version`) is printed beside them;
  * in this process, `device_history(registry, device)` (all N actions) and
    `device_history(registry, device, limit=100)`, best of 5;
  * the query plan of the newest-actions query, to show which index serves it.

The goal (under 100 ms) is compared with each figure. `history` without `--limit` returns every
action, so its cost grows with N whatever the index; the goal is met by the paged read.
Exit status: 0 when the paged library call meets the goal and the chains verify, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text, update

from provision.audit import device_history, make_sealer, verify_chains
from provision.chain import SEALED_COLUMNS, canonical_json, genesis_hash
from provision.keys import init_keyring
from provision.pipeline import register_batch
from provision.registry import DeviceRecord, Registry, action_log, devices

GOAL_MS = 100.0
CHUNK = 10_000
ROOT = Path(__file__).resolve().parent.parent
PROVISION = str(Path(sys.executable).with_name("provision"))
ACTIONS = ("firmware.update", "config.change", "diagnostics", "relocated", "support:ticket")


def build_chain(registry: Registry, keyring: Any, device: DeviceRecord, n: int) -> None:
    """Append N sealed actions to the device's chain in bulk, as _append_action would."""
    sealer = make_sealer(keyring)
    did, pk = device.device_id, device.id
    prev = genesis_hash(did)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    occurred = start
    with registry.engine.begin() as conn:
        for lo in range(1, n + 1, CHUNK):
            rows = []
            for seq in range(lo, min(n, lo + CHUNK - 1) + 1):
                occurred = start + timedelta(seconds=seq * 37, microseconds=seq % 1000)
                action = ACTIONS[seq % len(ACTIONS)]
                meta = canonical_json({"step": seq, "note": f"bench action {seq}"})
                ip = f"10.0.{seq % 250}.{seq % 200}" if seq % 3 else None
                actor = "support@example.com" if seq % 2 else None
                entry = sealer.action(did, seq, occurred, action, meta, ip, actor, prev)
                rows.append(
                    {
                        "device_pk": pk,
                        "seq": seq,
                        "occurred_at": occurred,
                        "action_type": action,
                        "metadata_json": meta,
                        "ip": ip,
                        "actor": actor,
                        "prev_hash": prev,
                        "entry_hash": entry,
                    }
                )
                prev = entry
            conn.execute(insert(action_log), rows)
        head = sealer.action_head(did, n, occurred, prev)
        conn.execute(
            update(devices).where(devices.c.id == pk).values(action_count=n, action_head=head)
        )
        state = conn.execute(
            select(*(devices.c[c] for c in SEALED_COLUMNS)).where(devices.c.id == pk)
        ).one()
        conn.execute(
            update(devices).where(devices.c.id == pk).values(seal=sealer.device_values(*state))
        )
    if registry.engine.dialect.name == "postgresql":
        with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE device_action_log"))


def best_of(fn: Callable[[], Any], runs: int = 5) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_cli(env: dict[str, str], *args: str, runs: int = 3) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run(
            [PROVISION, *args], env=env, capture_output=True, text=True, check=False
        )
        best = min(best, time.perf_counter() - t)
        if proc.returncode != 0:
            raise SystemExit(f"provision {' '.join(args)} failed:\n{proc.stderr}")
        out = proc.stdout
    return best, out


def query_plan(registry: Registry, pk: int) -> str:
    q = select(action_log).where(action_log.c.device_pk == pk).order_by(action_log.c.seq.desc())
    sql = str(q.limit(100).compile(registry.engine, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if registry.is_sqlite else "EXPLAIN "
    with registry.engine.connect() as conn:
        rows = conn.execute(text(prefix + sql)).all()
    return "; ".join(str(r[-1]) for r in rows)


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:9.1f} ms  {'meets' if ms < GOAL_MS else 'MISSES'} the {GOAL_MS:.0f} ms goal"


def bench(label: str, url: str, work: Path, keyring_path: Path, n: int) -> bool:
    print(f"\n== {label}: one device with {n:,} actions ==")
    t0 = time.perf_counter()
    from provision.keys import load_keyring

    keyring = load_keyring(keyring_path)
    manifest = work / "one.csv"
    manifest.write_text("serial,device_type\nHB-000001,sensor\n")
    registry = Registry(url)
    register_batch(registry, keyring, manifest, batch="history-bench")
    with registry.engine.connect() as conn:
        did = conn.execute(select(devices.c.device_id)).scalar_one()
    device = registry.devices.get(did)
    assert device is not None
    build_chain(registry, keyring, device, n)
    t_build = time.perf_counter() - t0
    t = time.perf_counter()
    report = verify_chains(registry, keyring, did)
    t_verify = time.perf_counter() - t
    print(f"set-up: register + bulk chain {t_build:.1f} s; ", end="")
    print(f"audit verify {t_verify:.2f} s -> ok={report.ok}, entries={report.entries:,}")
    ok = report.ok and report.entries == n

    device = registry.devices.get(did)
    assert device is not None
    print(f"plan (newest 100): {query_plan(registry, device.id)}")
    t_all, h_all = best_of(lambda: device_history(registry, device))
    t_100, h_100 = best_of(lambda: device_history(registry, device, limit=100))
    t_1k, _ = best_of(lambda: device_history(registry, device, limit=1000))
    t_json, _ = best_of(lambda: json.dumps(h_all, indent=2, default=str))
    ok = ok and len(h_all["actions"]) == n and len(h_100["actions"]) == min(100, n)
    ok = ok and h_100["actions"][-1]["seq"] == n
    registry.close()

    env = {**os.environ, "PROVISION_DB_URL": url, "PROVISION_KEYRING": str(keyring_path)}
    t_start, _ = run_cli(env, "--version")
    t_cli_all, out = run_cli(env, "history", did, "--json")
    t_cli_100, out_100 = run_cli(env, "history", did, "--json", "--limit", "100")
    ok = ok and len(json.loads(out)["actions"]) == n
    ok = ok and len(json.loads(out_100)["actions"]) == min(100, n)
    print("in-process, best of 5:")
    print(f"  device_history(all {n:,} actions)   {fmt_ms(t_all)}")
    print(f"  device_history(limit=1000)          {fmt_ms(t_1k)}")
    print(f"  device_history(limit=100)           {fmt_ms(t_100)}")
    print(f"  json.dumps of the full history      {fmt_ms(t_json)}  ({len(out) / 1e6:.1f} MB)")
    print("subprocess, best of 3:")
    print(f"  provision --version (start-up only) {fmt_ms(t_start)}")
    print(f"  provision history ID --json         {fmt_ms(t_cli_all)}")
    print(f"  provision history ID --json --limit 100  {fmt_ms(t_cli_100)}")
    print(f"  ... minus start-up (--limit 100)    {fmt_ms(max(0.0, t_cli_100 - t_start))}")
    return ok and t_100 * 1000 < GOAL_MS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--actions", type=int, default=100_000)
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
        work = Path(tmp)
        keyring_path = work / "keyring.json"
        init_keyring(keyring_path)
        ok &= bench("SQLite", f"sqlite:///{work / 'reg.db'}", work, keyring_path, args.actions)
        if not args.no_postgres:
            sys.path.insert(0, str(ROOT))
            from tests.pgcluster import PostgresCluster, postgres_available

            avail, why = postgres_available()
            if not avail:
                print(f"\nPostgreSQL skipped: {why}")
            else:
                cluster = PostgresCluster()
                cluster.start()
                try:
                    url = cluster.create_database("history_bench")
                    ok &= bench("PostgreSQL", url, work, keyring_path, args.actions)
                finally:
                    cluster.stop()
    print(f"\n{'OK' if ok else 'FAILED'}: paged history (limit=100) vs the {GOAL_MS:.0f} ms goal")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
