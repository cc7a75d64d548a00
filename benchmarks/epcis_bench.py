"""Benchmark `provision export epcis`: one batch (100,000 devices), then the whole registry
(1,000,000), each in its own process, with the seconds and peak memory of each; beside them the
same-run baseline `provision devices --format csv` over the whole registry (reading every
device, no events).

    .venv/bin/python benchmarks/epcis_bench.py [--keep DIR]

The registry is the shipments benchmark's (`shipments_bench.py --devices 1000000 --keep DIR`,
built first when DIR has none): 1,000,000 devices, 7 in 10 activated, 1 in 100 revoked, and
915,000 stored shipments. A tenth of the devices get a GTIN here (Digital Link EPCs), the rest
keep private URNs. Goal (issue "Speak GS1"): memory flat as the registry grows, i.e. the
whole registry's export peaks within 10% of one batch's. Exit status 0 when it does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from shipments_bench import run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--keep", type=Path, default=Path("/tmp/provision-epcis-bench"))
    args = ap.parse_args()
    work = args.keep
    db = work / "registry.db"
    if not (work / "built.txt").exists() or (work / "built.txt").read_text().strip() != "1000000":
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "shipments_bench.py"), "--keep",
             str(work), "--devices", "1000000", "--reuse"],
            check=True,
        )  # fmt: skip
    import sqlite3

    from provision.registry import Registry

    Registry(f"sqlite:///{db}").close()  # brought to the newest schema first
    with sqlite3.connect(db) as conn:  # a tenth with a GTIN, the same each run
        conn.execute("UPDATE devices SET gtin = CASE WHEN id % 10 = 0 THEN '04012345000016' END")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env |= {"PROVISION_DB_URL": f"sqlite:///{db}", "PROVISION_KEYRING": str(work / "keyring.json")}
    results = []
    for label, extra in (
        ("export epcis, one batch", ["--batch", "b000"]),
        ("export epcis, all", []),
    ):
        target = work / "export.jsonld"
        target.unlink(missing_ok=True)
        s, mb, out = run(env, "export", "epcis", *extra, "--output", str(target), "--json")
        summary = json.loads(out)
        events = sum(summary["events"].values())
        results.append((label, summary["devices"], events, s, mb))
    s, mb, _ = run(env, "devices", "--format", "csv")
    results.append(("baseline: devices --format csv, all", 1_000_000, 0, s, mb))
    print(
        f"{'operation':<40} {'devices':>10} {'events':>10} {'s':>8} {'events/s':>9} {'peak MB':>8}"
    )
    for label, n, events, s, mb in results:
        rate = f"{events / s:,.0f}" if events else "-"
        print(f"{label:<40} {n:>10,} {events:>10,} {s:>8.1f} {rate:>9} {mb:>8.0f}")
    flat = results[1][4] <= results[0][4] * 1.10
    print(f"memory flat (all within 10% of one batch): {'met' if flat else 'NOT'}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
