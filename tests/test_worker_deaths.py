"""A worker process that ends in the middle of its work (the OOM killer, `kill -9`): the
command fails in one line and keeps nothing of the run, where it used to print a traceback
(reconcile, labels) or wait forever (a shipments import); the console starts a new worker.

Each test puts tests.helpers.exit_in_worker in place of the pool's task function: the worker
runs it (found by name, as any task function is) and its process ends."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from provision.errors import WorkerError
from provision.keys import Keyring
from provision.registry import Registry
from tests.helpers import exit_in_worker, serials_csv, write_csv

SHIPMENTS_HEADER = ["serial", "shipped_at", "order_id", "customer", "destination", "carrier"]


def shipments_csv(path: Path, serials: list[str]) -> Path:
    rows = [[s, "2026-11-02", "SO-1", "Acme Retail", "Lyon", "DHL"] for s in serials]
    return write_csv(path, SHIPMENTS_HEADER, rows)


def stored_shipments(registry: Registry) -> int:
    from provision.registry.schema import shipments

    with registry.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(shipments)).scalar_one())


def test_a_shipments_import_whose_worker_dies_fails_and_stores_nothing(
    run_cli: Any, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import provision.shipments

    monkeypatch.setattr(provision.shipments, "POOL_MIN_ROWS", 0)  # sealed by workers
    monkeypatch.setattr(provision.shipments, "seal_in_worker", exit_in_worker)
    f = shipments_csv(tmp_path / "s.csv", [f"DIE{i}" for i in range(20)])
    out = run_cli("shipments", "import", str(f))
    assert out.exit_code == 1, out.output
    assert out.stderr.strip().splitlines() == [
        "Error: shipments import: a worker process ended unexpectedly (killed, or out of "
        "memory?); nothing of this file is stored"
    ]
    assert stored_shipments(registry) == 0
    monkeypatch.undo()  # the same file, workers that live: all of it
    monkeypatch.setattr(provision.shipments, "POOL_MIN_ROWS", 0)
    assert run_cli("shipments", "import", str(f)).exit_code == 0
    assert stored_shipments(registry) == 20


def test_a_reconcile_whose_worker_dies_fails_and_writes_no_report(
    run_cli: Any,
    registry: Registry,
    keyring: Keyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import provision.reconcile
    from provision.pipeline import register_batch

    register_batch(registry, keyring, serials_csv(tmp_path / "d.csv", 8, "REC"), batch="rec")
    f = shipments_csv(tmp_path / "s.csv", [f"REC{i:06d}" for i in range(8)])
    assert run_cli("shipments", "import", str(f)).exit_code == 0
    monkeypatch.setattr(provision.reconcile, "PART_ROWS", 2)  # partitions, reconciled by workers
    monkeypatch.setattr(provision.reconcile, "_part_in_worker", exit_in_worker)
    reports = tmp_path / "reports"
    out = run_cli("reconcile", "--report-dir", str(reports / "nov"), "--json")
    assert out.exit_code == 1, out.output
    assert json.loads(out.stdout)["error"]["type"] == "worker"
    assert out.stderr.strip().splitlines() == [
        "Error: reconcile: a worker process ended unexpectedly (killed, or out of memory?); "
        "no report written"
    ]
    assert not reports.exists() or os.listdir(reports) == []  # nor its hidden temp folder


def test_labels_whose_worker_dies_fail_and_publish_nothing(
    db_url: str, keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import provision.labels.render
    from provision import pipeline
    from provision.labels.render import TASK_PAGES
    from provision.labels.templates import load_template

    template = load_template("avery-5160")
    monkeypatch.setattr(provision.labels.render, "_compose_in_worker", exit_in_worker)
    registry = Registry(db_url)
    out = tmp_path / "out"
    manifest = serials_csv(tmp_path / "s.csv", 3 * TASK_PAGES * template.per_page)
    with pytest.raises(WorkerError, match=r"^labels: a worker process ended unexpectedly"):
        pipeline.register_and_render(
            registry, keyring, manifest, batch="b1", template=template, output_dir=out,
            base_url="https://id.example.com", workers=2,
        )  # fmt: skip
    assert not out.exists() or not any(out.iterdir())  # no sheet, no half file
    registry.close()


def test_the_console_starts_a_new_figures_worker_after_one_died(
    registry: Registry, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from provision.web.console import figures

    worker = figures.Worker(db_url)
    cache = figures.Figures(registry, worker)
    try:
        monkeypatch.setattr(figures, "_compute_in_worker", exit_in_worker)
        with pytest.raises(BrokenProcessPool):  # the figure being computed fails, once
            cache.get("status")
        monkeypatch.undo()
        assert cache.get("status")[0] == figures.compute(registry, "status")  # a new worker
    finally:
        worker.close()
