"""Registering batches: idempotent, crash-safe, and no plaintext serial in the registry."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from provision.jobs import load_job
from provision.migrations import head_revision
from provision.registry import Registry, devices
from tests.helpers import serials_csv, write_csv

REPO = Path(__file__).resolve().parents[1]


def _json(result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def test_register_reports_counts_as_json(run_cli, tmp_path, db_url):
    manifest = serials_csv(tmp_path / "serials.csv", 25)
    out = _json(run_cli("register", str(manifest), "--batch", "night-1", "--json"))
    assert out == {
        "batch": "night-1",
        "registered": 25,
        "already_registered": 0,
        "rejected": 0,
        "other_batch": 0,
        "components": 0,
    }
    assert Registry(db_url).devices.count() == 25


def test_rerunning_a_batch_changes_nothing(run_cli, tmp_path, db_url, output_dir):
    manifest = serials_csv(tmp_path / "serials.csv", 40)
    comps = write_csv(
        tmp_path / "components.csv",
        ["serial", "component_type", "component_spec"],
        [[f"SN{i:06d}", "mcu", "STM32"] for i in range(40)],
    )
    args = ("register", str(manifest), "--components", str(comps), "--batch", "b", "--json")
    first = _json(run_cli(*args))
    assert (first["registered"], first["components"]) == (40, 40)
    assert _json(run_cli("labels", "b", "--json"))["labels"] == 40
    pdf1 = (output_dir / "b.pdf").read_bytes()
    registry = Registry(db_url)
    with registry.engine.connect() as conn:
        before = conn.execute(select(devices).order_by(devices.c.id)).all()

    second = _json(run_cli(*args))
    assert second["registered"] == 0
    assert second["already_registered"] == 40
    assert second["components"] == 0
    assert _json(run_cli("labels", "b", "--json"))["labels"] == 40
    with registry.engine.connect() as conn:
        after = conn.execute(select(devices).order_by(devices.c.id)).all()
    assert after == before  # payloads are stored, not re-signed
    assert registry.devices.count_components() == 40
    assert (output_dir / "b.pdf").read_bytes() == pdf1


def test_default_batch_name_is_stable_for_the_same_manifest(run_cli, tmp_path):
    manifest = serials_csv(tmp_path / "line1.csv", 3)
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    out = _json(run_cli("register", str(manifest), "--json"))
    assert out["batch"] == f"line1-{sha[:8]}"
    assert _json(run_cli("register", str(manifest), "--json"))["already_registered"] == 3


def test_serial_from_another_batch_is_reported_and_skipped(run_cli, tmp_path, db_url):
    run_cli("register", str(serials_csv(tmp_path / "a.csv", 5)), "--batch", "a")
    b = write_csv(
        tmp_path / "b.csv",
        ["serial", "device_type"],
        [["NEW-1", "sensor"], ["SN000003", "sensor"], ["NEW-2", "sensor"]],
    )
    result = run_cli("register", str(b), "--batch", "b", "--json")
    out = _json(result)
    assert (out["registered"], out["other_batch"], out["already_registered"]) == (2, 1, 0)
    assert f"warning: {b}:3: serial: already registered in batch 'a'; skipped" in result.stderr
    assert Registry(db_url).devices.count() == 7


def test_batch_killed_halfway_and_rerun_has_every_device_once(tmp_path, db_url, keyring_path):
    n = 12000
    manifest = serials_csv(tmp_path / "big.csv", n)
    env = os.environ | {"PROVISION_DB_URL": db_url, "PROVISION_KEYRING": str(keyring_path)}
    argv = [
        sys.executable,
        "-m",
        "provision",
        "register",
        str(manifest),
        "--batch",
        "big",
        "--chunk-size",
        "100",
        "--quiet",
    ]
    registry = Registry(db_url)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    count = 0
    while time.monotonic() < deadline and proc.poll() is None:
        count = registry.devices.count()
        if count >= 300:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the batch finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = registry.devices.count()
    assert 0 < killed_at < n

    done = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout)
    assert out["registered"] + out["already_registered"] == n
    assert out["already_registered"] >= killed_at - 100  # at most one chunk was in flight
    with registry.engine.connect() as conn:
        total, distinct = conn.execute(
            select(func.count(), func.count(func.distinct(devices.c.serial_hash)))
        ).one()
    assert total == distinct == n


def test_no_serial_appears_in_the_bytes_of_the_sqlite_file(tmp_path, sqlite_url, keyring_path):
    from click.testing import CliRunner

    from provision.cli import cli

    serials = [f"ZX{i:05d}Q" for i in range(60)]
    manifest = write_csv(
        tmp_path / "s.csv", ["serial", "device_type"], [[s, "meter"] for s in serials]
    )
    comp_serials = [f"CMP{i:05d}K" for i in range(60)]
    comps = write_csv(
        tmp_path / "c.csv",
        ["serial", "component_type", "component_spec", "component_serial"],
        [[s, "radio", "nRF52", c] for s, c in zip(serials, comp_serials, strict=True)],
    )
    env = {
        "PROVISION_DB_URL": sqlite_url,
        "PROVISION_KEYRING": str(keyring_path),
        "PROVISION_OUTPUT": str(tmp_path / "out"),
    }
    result = CliRunner().invoke(
        cli, ["--verbose", "register", str(manifest), "--components", str(comps)], env=env
    )
    assert result.exit_code == 0, result.output
    db_file = Path(sqlite_url.removeprefix("sqlite:///"))
    Registry(sqlite_url).engine.dispose()
    blobs = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    assert len(blobs) > 10_000
    for s in serials + comp_serials:
        assert s.encode() not in blobs
        assert s not in result.stdout + result.stderr


def test_run_job_registers_then_renders(run_cli, tmp_path, output_dir):
    serials_csv(tmp_path / "job" / "serials.csv", 8)
    job = tmp_path / "job.toml"
    job.write_text(
        'batch = "line1-{date:%Y%m%d}"\nserials = "job/serials.csv"\n'
        'template = "avery-5160"\nttl_days = 30\n'
    )
    out = _json(run_cli("run", str(job), "--json"))
    batch = out["register"]["batch"]
    assert batch.startswith("line1-2") and len(batch) == len("line1-20261128")
    assert out["register"]["registered"] == 8
    assert out["labels"]["labels"] == 8
    assert out["labels"]["template"] == "avery-5160"
    assert (output_dir / f"{batch}.pdf").exists()
    summary = json.loads((output_dir / f"{batch}.json").read_text())
    assert summary["labels"] == 8


def test_job_file_with_unknown_key_is_refused(run_cli, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('batch = "x"\nserials = "s.csv"\ntempalte = "avery-5160"\n')
    result = run_cli("run", str(job))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {job}: unknown key(s) tempalte;")


def test_demo_job_has_enough_devices_of_several_types():
    job = load_job(REPO / "jobs" / "demo.toml")
    lines = job.serials.read_text().splitlines()
    types = {line.split(",")[1] for line in lines[1:]}
    assert len(lines) - 1 >= 200
    assert len(types) >= 3
    assert job.components is not None and job.components.exists()


def test_db_upgrade_brings_the_schema_to_head(run_cli, db_url):
    result = run_cli("db", "upgrade", "--json")
    assert _json(result)["revision"] == head_revision()
    assert {"batches", "devices", "device_components", "alembic_version"} <= set(
        Registry(db_url, migrate=False).table_names()
    )


def test_unknown_batch_gives_a_one_line_error(run_cli):
    assert run_cli("db", "upgrade").exit_code == 0  # a registry, with no batch in it
    result = run_cli("labels", "no-such-batch")
    assert result.exit_code == 1
    assert result.stderr == "Error: no batch named 'no-such-batch'; no batch registered yet\n"


def test_bad_batch_name_is_refused_before_writing(run_cli, tmp_path, db_url):
    result = run_cli("register", str(serials_csv(tmp_path / "s.csv", 2)), "--batch", "../x")
    assert result.exit_code == 1
    assert "batch name '../x' is not usable" in result.stderr
    assert Registry(db_url).devices.count() == 0
