"""`make demo`'s own steps, in a temporary folder: the nightly job, the simulated customers and
the reconciliation. The demo is what a new user runs first; it must not break unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_registers_activates_and_reconciles(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env |= {
        "PROVISION_KEYRING": str(tmp_path / "var" / "keyring.json"),
        "PROVISION_DB_URL": f"sqlite:///{tmp_path / 'var' / 'demo.db'}",
        "PROVISION_OUTPUT": str(tmp_path / "output"),
    }

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{argv}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    provision = (sys.executable, "-m", "provision")
    run(*provision, "keys", "init")
    run(*provision, "db", "upgrade")
    run(*provision, "run", "jobs/demo.toml")
    run(sys.executable, "jobs/demo/customers.py")
    report = tmp_path / "output" / "reconciliation-demo"
    run(*provision, "reconcile", "jobs/demo/shipments.csv", "--as-of", "2026-11-28",
        "--report-dir", str(report))  # fmt: skip
    summary = json.loads((report / "summary.json").read_text())
    assert summary["counts"]["matched"] > 0 and summary["counts"]["activated_not_shipped"] > 0
    labels = json.loads((tmp_path / "output" / "demo.json").read_text())
    assert (labels["labels"], labels["pdf"]) == (240, "demo.pdf")
    run(*provision, "audit", "verify")  # what the customers did left every chain intact
