"""A worker process that ends in the middle of its work (the OOM killer, `kill -9`): the
command fails in one line and keeps nothing of the run, where it used to print a traceback
(reconcile, labels) or wait forever (a shipments import, audit verify); the console starts a
new worker.

Each test puts tests.helpers.exit_in_worker in place of the pool's task function: the worker
runs it (found by name, as any task function is) and its process ends."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from provision.errors import WorkerError
from provision.keys import Keyring
from provision.registry import Registry
from tests.helpers import exit_in_worker, serials_csv, write_csv

DIED = "a worker process ended unexpectedly (killed, out of memory, or failed to start)"
SHIPMENTS_HEADER = ["serial", "shipped_at", "order_id", "customer", "destination", "carrier"]


@contextlib.contextmanager
def tasks_that_die(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> Iterator[None]:
    """MODULE.NAME, a pool's task function, replaced by one that ends its worker process; and
    a pool that would wait forever for the lost task (multiprocessing.Pool did) fails the
    test after two minutes instead of hanging the suite."""
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        with monkeypatch.context() as m:
            m.setattr(module, name, exit_in_worker)
            yield
    finally:
        faulthandler.cancel_dump_traceback_later()


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
    f = shipments_csv(tmp_path / "s.csv", [f"DIE{i}" for i in range(20)])
    with tasks_that_die(monkeypatch, provision.shipments, "seal_in_worker"):
        out = run_cli("shipments", "import", str(f))
    assert out.exit_code == 1, out.output
    assert out.stderr.strip().splitlines() == [
        f"Error: shipments import: {DIED}; nothing of this file is stored"
    ]
    assert stored_shipments(registry) == 0
    assert run_cli("shipments", "import", str(f)).exit_code == 0  # workers that live: all of it
    assert stored_shipments(registry) == 20


def test_an_audit_verify_whose_worker_dies_fails_in_one_line(
    run_cli: Any,
    registry: Registry,
    keyring: Keyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import provision.audit
    from provision.pipeline import register_batch

    register_batch(registry, keyring, serials_csv(tmp_path / "d.csv", 6, "AUD"), batch="aud")
    monkeypatch.setattr(provision.audit, "PARALLEL_FROM", 1)  # verified by worker processes
    assert run_cli("audit", "verify").exit_code == 0
    with tasks_that_die(monkeypatch, provision.audit, "_verify_worker"):
        out = run_cli("audit", "verify")
    assert out.exit_code == 1, out.output
    assert out.stderr.strip().splitlines() == [
        f"Error: audit verify: {DIED}; nothing verified; run it again"
    ]


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
    reports = tmp_path / "reports"
    with tasks_that_die(monkeypatch, provision.reconcile, "_part_in_worker"):
        out = run_cli("reconcile", "--report-dir", str(reports / "nov"), "--json")
    assert out.exit_code == 1, out.output
    assert json.loads(out.stdout)["error"]["type"] == "worker"
    assert out.stderr.strip().splitlines() == [f"Error: reconcile: {DIED}; no report written"]
    assert not reports.exists() or os.listdir(reports) == []  # nor its hidden temp folder


def test_labels_whose_worker_dies_fail_and_publish_nothing(
    db_url: str, keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import provision.labels.render
    from provision import pipeline
    from provision.labels.render import TASK_PAGES
    from provision.labels.templates import load_template

    template = load_template("avery-5160")
    registry = Registry(db_url)
    out = tmp_path / "out"
    manifest = serials_csv(tmp_path / "s.csv", 3 * TASK_PAGES * template.per_page)
    with (
        tasks_that_die(monkeypatch, provision.labels.render, "_compose_in_worker"),
        pytest.raises(WorkerError, match=rf"^labels: {re.escape(DIED)}; no half-drawn file"),
    ):
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
        with (
            tasks_that_die(monkeypatch, figures, "_compute_in_worker"),
            pytest.raises(BrokenProcessPool),
        ):
            cache.get("status")  # the figure being computed fails, once
        assert cache.get("status")[0] == figures.compute(registry, "status")  # a new worker
    finally:
        worker.close()
