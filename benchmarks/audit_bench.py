"""Benchmark `provision audit verify` of 1,000,000 devices with 10,000,000 actions (goal: 2 min).

    .venv/bin/python benchmarks/audit_bench.py [--devices 1000000] [--actions 10] [--keep DIR]
                                               [--postgres]

Set-up (timed apart, not part of the figures): a temporary keyring and a registry (SQLite, or
with --postgres a throwaway PostgreSQL server from tests.pgcluster) holding DEVICES devices,
each activated once (one accepted pairing event) and carrying ACTIONS actions. The rows are
written in bulk, as registering and activating would leave them: every entry hashed and chained
with provision.chain.Sealer, every device row sealed over its final state. The actions go in
round by round (every device's 1st action, then every device's 2nd, ...), so that a device's
entries lie scattered through the table as a live service leaves them.

Measured:
  * baseline: reading the same rows and doing nothing with them (one cursor per table, the
    same queries as the verifier): what the database costs alone;
  * `provision audit checkpoint` end to end (a subprocess);
  * `provision audit verify` end to end, and `audit verify --checkpoint FILE`;
  * each verify must report every chain intact: a benchmark of a verifier that finds nothing
    wrong because it checks nothing would be worthless.

Exit status 0 when `audit verify` meets the goal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bulk import Writer  # noqa: E402

from provision.audit import make_sealer  # noqa: E402
from provision.chain import genesis_hash, pairing_genesis, stamp  # noqa: E402
from provision.keys import init_keyring  # noqa: E402
from provision.registry import Registry  # noqa: E402
from provision.serials import device_id, encrypt_serial, serial_hash  # noqa: E402

GOAL_S = 120.0
CHUNK = 50_000
PROVISION = str(Path(sys.executable).with_name("provision"))
ACTIONS = ("firmware.update", "config.change", "diagnostics", "heartbeat", "support:ticket")


def build(registry: Registry, keyring: Any, n: int, actions: int) -> None:
    """N activated devices with ACTIONS actions each, chained and sealed, in bulk."""
    sealer = make_sealer(keyring)
    w = Writer(registry)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    expires = start + timedelta(days=730)
    cur = w.raw.cursor()
    cur.execute(
        "INSERT INTO batches (id, name, manifest_sha256, created_at, updated_at) "
        + ("VALUES (%s, %s, %s, %s, %s)" if w.pg else "VALUES (?, ?, ?, ?, ?)"),
        (1, "bench", "0" * 64, w.stamp(start), w.stamp(start)),
    )
    cur.close()
    ids: list[str] = []
    t = time.perf_counter()
    device_cols = [
        "id", "device_id", "serial_hash", "serial_ct", "device_type", "model", "batch_id",
        "batch_seq", "key_id", "expires_at", "status", "created_at", "activated_at", "user_id",
        "activation_token_hash", "action_count", "pairing_count", "seal",
    ]  # fmt: skip
    for lo in range(0, n, CHUNK):
        rows = []
        for i in range(lo, min(n, lo + CHUNK)):
            serial = f"AU{i:010d}"
            did = device_id(keyring.pepper, serial)
            ids.append(did)
            rows.append(
                (
                    i + 1, did, serial_hash(keyring.pepper, serial),
                    encrypt_serial(keyring.data_key, did, serial), "sensor", f"M-{i % 7}", 1,
                    i + 2, 1, w.stamp(expires), "activated", w.stamp(start),
                    w.stamp(start + timedelta(seconds=i)), f"user{i}@example.com", "ab" * 32,
                    0, 0, "0" * 64,
                )
            )  # fmt: skip
        w.rows("devices", device_cols, rows)
    w.commit()
    print(f"  devices inserted        {time.perf_counter() - t:7.1f} s", flush=True)

    # The activation: one accepted pairing event each, then the actions round by round.
    t = time.perf_counter()
    pairing_heads: list[str] = []
    pcols = [
        "device_pk", "seq", "occurred_at", "claimed_device_id", "ip", "user_agent",
        "fingerprint", "user_id", "result", "reason", "prev_hash", "entry_hash",
    ]  # fmt: skip
    for lo in range(0, n, CHUNK):
        rows = []
        for i in range(lo, min(n, lo + CHUNK)):
            did = ids[i]
            at = start + timedelta(seconds=i)
            user = f"user{i}@example.com"
            prev = pairing_genesis(did)
            entry = sealer.pairing(
                did, 1, at, did, "10.0.0.1", "Bench", None, user, "accepted", None, prev
            )
            pairing_heads.append(sealer.pairing_head(did, 1, entry))
            rows.append(
                (i + 1, 1, w.stamp(at), did, "10.0.0.1", "Bench", None, user, "accepted", None,
                 prev, entry)
            )  # fmt: skip
        w.rows("device_pairing_events", pcols, rows)
    w.commit()
    print(f"  pairing events          {time.perf_counter() - t:7.1f} s", flush=True)

    t = time.perf_counter()
    prevs = [genesis_hash(did) for did in ids]
    last_at: list[datetime] = [start] * n
    acols = [
        "device_pk", "seq", "occurred_at", "action_type", "metadata_json", "ip", "actor",
        "prev_hash", "entry_hash",
    ]  # fmt: skip
    for seq in range(1, actions + 1):
        for lo in range(0, n, CHUNK):
            rows = []
            for i in range(lo, min(n, lo + CHUNK)):
                did = ids[i]
                at = start + timedelta(days=seq, seconds=i, microseconds=seq)
                if seq == 1:
                    kind, meta, actor = (
                        "activated",
                        f'{{"user":"user{i}@example.com"}}',
                        f"user{i}@example.com",
                    )
                else:
                    kind = ACTIONS[(i + seq) % len(ACTIONS)]
                    meta, actor = f'{{"n":{seq}}}', None
                ip = "10.0.0.1" if seq % 2 else None
                entry = sealer.action(did, seq, at, kind, meta, ip, actor, prevs[i])
                rows.append((i + 1, seq, w.stamp(at), kind, meta, ip, actor, prevs[i], entry))
                prevs[i] = entry
                last_at[i] = at
            w.rows("device_action_log", acols, rows)
        w.commit()
        print(f"  actions, round {seq:2d}       {time.perf_counter() - t:7.1f} s", flush=True)

    t = time.perf_counter()
    for lo in range(0, n, CHUNK):
        params = []
        for i in range(lo, min(n, lo + CHUNK)):
            did = ids[i]
            head = sealer.action_head(did, actions, last_at[i], prevs[i])
            seal = sealer.device_values(
                did, serial_hash(keyring.pepper, f"AU{i:010d}"), 1, expires, "activated",
                f"user{i}@example.com", start + timedelta(seconds=i), "ab" * 32, None, None,
                None, actions, head, 1, pairing_heads[i],
            )  # fmt: skip
            params.append((actions, head, 1, pairing_heads[i], seal, i + 1))
        w.execute(
            "UPDATE devices SET action_count = ?, action_head = ?, pairing_count = ?, "
            "pairing_head = ?, seal = ? WHERE id = ?",
            params,
        )
    w.commit()
    w.close()
    assert stamp(start) is not None
    print(f"  heads and seals         {time.perf_counter() - t:7.1f} s", flush=True)
    if registry.is_postgresql:
        with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")


def baseline(registry: Registry) -> tuple[float, int]:
    """Read every row the verifier reads, doing nothing with them."""
    t = time.perf_counter()
    rows = 0
    with registry.audit_snapshot() as snap:
        bounds = snap.bounds()
        assert bounds is not None
        for stream in (
            snap.devices(*bounds),
            snap.actions(*bounds),
            snap.pairings(*bounds),
            snap.unattached(),
        ):
            for _ in stream:
                rows += 1
    return time.perf_counter() - t, rows


def timed_cli(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    proc = subprocess.run([PROVISION, *args], env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - t, proc


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--actions", type=int, default=10, help="actions per device")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the registry in this folder")
    ap.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL, not SQLite")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="provision-audit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    keyring_path = work / "keyring.json"
    cluster = None
    if args.postgres:
        from tests.pgcluster import PostgresCluster

        cluster = PostgresCluster()
        cluster.start()
        url = cluster.create_database("auditbench")
        fresh = True
    else:
        db = work / "registry.db"
        url = f"sqlite:///{db}"
        fresh = not db.exists()
    try:
        if fresh and keyring_path.exists():
            keyring_path.unlink()
        if not keyring_path.exists():
            init_keyring(keyring_path)
        from provision.keys import load_keyring

        keyring = load_keyring(keyring_path)
        registry = Registry(url, sealer=make_sealer(keyring))
        if fresh:
            print(f"building {args.devices:,} devices x {args.actions} actions in {work} ...")
            t = time.perf_counter()
            build(registry, keyring, args.devices, args.actions)
            print(f"  set-up total            {time.perf_counter() - t:7.1f} s\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
        env |= {"PROVISION_DB_URL": url, "PROVISION_KEYRING": str(keyring_path)}

        base_s, base_rows = baseline(registry)
        registry.close()
        cp = work / "checkpoint.txt"
        cp_s, cp_proc = timed_cli(env, "audit", "checkpoint", "--output", str(cp), "--json")
        if cp_proc.returncode != 0:
            raise SystemExit(f"audit checkpoint failed:\n{cp_proc.stderr}")
        v_s, v_proc = timed_cli(env, "audit", "verify", "--json")
        vc_s, vc_proc = timed_cli(env, "audit", "verify", "--checkpoint", str(cp), "--json")
        for name, proc in (("verify", v_proc), ("verify --checkpoint", vc_proc)):
            if proc.returncode != 0:
                raise SystemExit(f"audit {name} did not pass:\n{proc.stdout[:2000]}{proc.stderr}")
        report = json.loads(v_proc.stdout)
        assert report["devices_checked"] == args.devices, report
        assert report["entries_checked"] == args.devices * args.actions, report

        entries = report["entries_checked"] + report["pairing_events_checked"]
        print(f"registry: {'PostgreSQL' if args.postgres else 'SQLite'}, {os.cpu_count()} CPUs")
        print(f"{'figure':<52} {'value':>12}")
        print(f"{'devices':<52} {report['devices_checked']:>12,}")
        print(f"{'actions':<52} {report['entries_checked']:>12,}")
        print(f"{'pairing events':<52} {report['pairing_events_checked']:>12,}")
        print(f"{'baseline: read the same rows, no checks (s)':<52} {base_s:>12.1f}")
        print(f"{'  rows read':<52} {base_rows:>12,}")
        print(f"{'provision audit checkpoint (s)':<52} {cp_s:>12.1f}")
        print(f"{'  checkpoint file (MB)':<52} {cp.stat().st_size / 1e6:>12.1f}")
        print(f"{'provision audit verify (s)':<52} {v_s:>12.1f}")
        rate = (entries + args.devices) / v_s
        print(f"{'  entries and seals checked per second':<52} {rate:>12,.0f}")
        print(f"{'  verify / baseline':<52} {v_s / base_s:>11.1f}x")
        print(f"{'provision audit verify --checkpoint (s)':<52} {vc_s:>12.1f}")
        met = v_s <= GOAL_S
        print(f"{'goal (audit verify <= 120 s)':<52} {'met' if met else 'NOT met':>12}")
        return 0 if met else 1
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
