"""`provision shipments import` and `list`: stored, idempotent, all or nothing, serials only
as keyed hashes and ciphertext; delimiters and column maps; on both databases."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from provision.registry import Registry
from tests.helpers import write_csv

HEADER = ["serial", "shipped_at", "order_id", "customer", "destination", "carrier"]


def rows(*serials: str, day: str = "2026-11-02") -> list[list[str]]:
    return [[s, day, f"SO-{len(s)}", "Acme Retail", "Lyon", "DHL"] for s in serials]


def stored_serial_texts(registry: Registry) -> str:
    with registry.engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM shipments")).fetchall()
    return repr(found)


def test_import_is_idempotent_and_keeps_no_plaintext(
    run_cli: Any, registry: Registry, tmp_path: Path
) -> None:
    first = write_csv(tmp_path / "nov-02.csv", HEADER, rows("SHIPA1", "SHIPA2", "SHIPA1"))
    out = run_cli("shipments", "import", str(first), "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    # The row sent twice in one file is stored once.
    assert (summary["rows"], summary["stored"], summary["already_stored"]) == (3, 2, 1)
    again = run_cli("shipments", "import", str(first))
    assert again.exit_code == 0
    assert again.stdout.strip() == f"{first}: nothing new: 3 rows stored already (source erp)"
    # A later file repeating one row and adding one: one new.
    second = write_csv(tmp_path / "nov-03.csv", HEADER, rows("SHIPA2") + rows("SHIPA3"))
    data = json.loads(run_cli("shipments", "import", str(second), "--json").stdout)
    assert (data["stored"], data["already_stored"]) == (1, 1)
    # Another day's shipment of the same serial is another shipment.
    third = write_csv(tmp_path / "nov-09.csv", HEADER, rows("SHIPA1", day="2026-11-09"))
    assert json.loads(run_cli("shipments", "import", str(third), "--json").stdout)["stored"] == 1

    listed = json.loads(run_cli("shipments", "list", "--json").stdout)
    assert listed["count"] == 4 and listed["by_source"] == {"erp": 4}
    assert [s["serial"] for s in listed["shipments"]] == ["SHIPA1", "SHIPA3", "SHIPA2", "SHIPA1"]
    assert [i["stored"] for i in listed["imports"]] == [2, 0, 1, 1]
    since = json.loads(run_cli("shipments", "list", "--since", "2026-11-05", "--json").stdout)
    assert since["count"] == 1 and since["shipments"][0]["shipped_at"].startswith("2026-11-09")
    assert "SHIPA" not in stored_serial_texts(registry)  # hashes and ciphertext only


def test_a_bad_row_stores_nothing_unless_a_reject_file(
    run_cli: Any, registry: Registry, tmp_path: Path
) -> None:
    bad = write_csv(
        tmp_path / "bad.csv", HEADER, [*rows("SHIPB1"), ["SHIPB2", "yesterday", "", "", "", ""]]
    )
    out = run_cli("shipments", "import", str(bad))
    assert out.exit_code == 1
    assert f"{bad}:3: shipped_at: not an ISO 8601 date or date-time" in out.stderr
    assert json.loads(run_cli("shipments", "list", "--json").stdout)["count"] == 0
    with registry.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM shipment_imports")).scalar() == 0
    rejects = tmp_path / "rejects.csv"
    kept = run_cli("shipments", "import", str(bad), "--reject-file", str(rejects))
    assert kept.exit_code == 4, kept.output
    assert "1 row rejected, written to" in kept.stderr
    assert "SHIPB2" in rejects.read_text() and "SHIPB1" not in rejects.read_text()
    assert json.loads(run_cli("shipments", "list", "--json").stdout)["count"] == 1


def test_delimiters_and_column_maps(run_cli: Any, tmp_path: Path) -> None:
    semi = tmp_path / "sap.csv"
    semi.write_text("Serialnummer;Versanddatum;Auftrag\nSHIPC1;2026-11-02;A-1\n")
    plain = run_cli("shipments", "import", str(semi))
    assert plain.exit_code == 1
    assert (
        f"{semi}:1: -: the header is one field holding ';': this file is separated by "
        "semicolons, not commas; give --delimiter ';'"
    ) in plain.stderr
    maps = ["--map", "serial=Serialnummer", "--map", "shipped_at=versanddatum"]
    ok = run_cli("shipments", "import", str(semi), "--delimiter", ";", *maps, "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["stored"] == 1
    tab = tmp_path / "wms.tsv"
    tab.write_text("serial\tshipped_at\tcarrier\nSHIPC2\t2026-11-03T10:00:00Z\tUPS\n")
    assert "give --delimiter tab" in run_cli("shipments", "import", str(tab)).stderr
    ok = run_cli("shipments", "import", str(tab), "--delimiter", "tab", "--source", "wms")
    assert ok.exit_code == 0, ok.output
    listed = json.loads(run_cli("shipments", "list", "--source", "wms", "--json").stdout)
    assert [(s["serial"], s["carrier"]) for s in listed["shipments"]] == [("SHIPC2", "UPS")]
    for args, message in (
        (["--map", "sn=Serialnummer"], "--map sn=...: shipments have no column 'sn'"),
        (["--map", "serial"], "give COLUMN=HEADER"),
        (["--delimiter", "::"], "--delimiter '::': give ',', ';', '|' or tab"),
        (["--source", "bad source"], "--source 'bad source': use 1-64 letters"),
    ):
        bad = run_cli("shipments", "import", str(semi), *args)
        assert bad.exit_code == 2 and message in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    ("part_rows", "coded", "how"),
    [
        (250_000, None, "workers"),
        (2, None, "workers"),
        (2, None, "in-process"),
        (2, 1.0, "workers"),
        (2, 1.0, "capped"),
    ],
    ids=["whole", "partitioned", "partitioned-in-process", "partitioned-coded", "coded-capped"],
)
def test_the_monthly_report_from_the_stored_feed_has_no_false_critical(
    run_cli: Any,
    registry: Registry,
    keyring_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    part_rows: int,
    coded: float | None,
    how: str,
) -> None:
    """The README's monthly case: devices shipped in August and activated in September-
    November are not activated_not_shipped in the September-November report. The same
    report whether the registry is reconciled whole or dealt out into partitions (2 rows
    each: 5 of them, spilled to files, reconciled by worker processes or in this one), and
    when every text column is spilled as codes (missing values included), or as codes until
    its dictionary is full."""
    from datetime import UTC, datetime

    import provision.reconcile

    monkeypatch.setattr(provision.reconcile, "PART_ROWS", part_rows)
    if coded is not None:
        monkeypatch.setattr(provision.reconcile._Spill, "CODED_SHARE", coded)
    if how == "capped":
        monkeypatch.setattr(provision.reconcile._Spill, "CODED_MAX", 2)
    if how == "in-process":
        monkeypatch.setattr(provision.reconcile, "_in_process", lambda registry, parts: True)
    from provision.activation import activate
    from provision.audit import revoke
    from provision.keys import load_keyring
    from provision.payload import payload_url
    from provision.pipeline import register_batch
    from provision.serials import device_id
    from tests.helpers import with_payload

    keyring = load_keyring(keyring_path)
    header = ["serial", "device_type", "model", "line"]
    made = [[f"MON{i}", "sensor", "S-1", "line2"] for i in range(8)]
    register_batch(
        registry, keyring, write_csv(tmp_path / "s.csv", header, made), batch="aug",
        now=datetime(2026, 7, 20, tzinfo=UTC),
    )  # fmt: skip
    others = write_csv(tmp_path / "o.csv", header, [["OTH1", "sensor", "S-2", "line3"]])
    register_batch(registry, keyring, others, batch="other", now=datetime(2026, 7, 20, tzinfo=UTC))

    def device(serial: str) -> Any:
        found = registry.devices.get(device_id(keyring.pepper, serial))
        assert found is not None
        return found

    def activate_on(serial: str, day: str) -> None:
        url = payload_url("http://x", with_payload(keyring, device(serial))["payload"])
        when = datetime.fromisoformat(day).replace(tzinfo=UTC)
        activate(
            registry, keyring, url, f"{serial.lower()}@example.com", ip="198.51.100.4", now=when
        )

    # MON0-MON3 shipped in August, activated in September to November.
    aug = write_csv(
        tmp_path / "aug.csv", HEADER, rows("MON0", "MON1", "MON2", "MON3", day="2026-08-10")
    )
    # MON4, MON5 shipped in October; MON6 never shipped; MON7 shipped in November, revoked.
    octo = write_csv(
        tmp_path / "oct.csv", HEADER,
        [*rows("MON4", "MON5", day="2026-10-05"), ["OTH1", "2026-10-05", "", "", "", ""]],
    )  # fmt: skip
    nov = write_csv(tmp_path / "nov.csv", HEADER, rows("MON7", day="2026-11-03"))
    for f in (aug, octo, nov):
        assert run_cli("shipments", "import", str(f)).exit_code == 0
    for serial, day in (
        ("MON0", "2026-09-02"), ("MON1", "2026-10-12"), ("MON2", "2026-11-20"),
        ("MON3", "2026-08-20"), ("MON4", "2026-10-06"), ("MON6", "2026-11-11"),
        ("MON7", "2026-11-04"),
    ):  # fmt: skip
        activate_on(serial, day)
    revoke(registry, keyring, device("MON7"), "stolen from the van", "security")

    out = run_cli(
        "reconcile", "--since", "2026-09-01", "--until", "2026-11-30",
        "--report-dir", str(tmp_path / "q3"), "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    counts = json.loads(out.stdout)["counts"]
    assert counts["activated_not_shipped"] == 1  # MON6 only: the true one
    assert counts["shipped_revoked"] == 1 and counts["matched"] == 1  # MON7; MON4
    assert counts["shipped_not_activated"] == 2  # MON5, OTH1 (shipped in the period)
    assert counts["registered_not_shipped"] == 0  # everything pending was shipped once
    critical = {
        r["device_id"]: r
        for r in csv.DictReader((tmp_path / "q3" / "activated_not_shipped.csv").open())
    }
    mon6 = critical[device("MON6").device_id]
    assert (mon6["serial"], mon6["user"], mon6["activated_ip"]) == (
        "MON6", "mon6@example.com", "198.51.100.4",
    )  # fmt: skip
    assert (mon6["batch"], mon6["line"], mon6["model"]) == ("aug", "line2", "S-1")
    assert mon6["activated_at"].startswith("2026-11-11")
    [revoked] = csv.DictReader((tmp_path / "q3" / "shipped_revoked.csv").open())
    assert (revoked["serial"], revoked["user"], revoked["activated_ip"], revoked["line"]) == (
        "MON7", "mon7@example.com", "198.51.100.4", "line2",
    )  # fmt: skip
    # Every CSV holds the rows the registry reconciled whole gives (in partition order).
    monkeypatch.setattr(provision.reconcile, "PART_ROWS", 250_000)
    whole = run_cli(
        "reconcile", "--since", "2026-09-01", "--until", "2026-11-30",
        "--report-dir", str(tmp_path / "q3-whole"),
    )  # fmt: skip
    assert whole.exit_code == 0, whole.output
    for f in sorted((tmp_path / "q3-whole").glob("*.csv")):
        mine = (tmp_path / "q3" / f.name).read_text().splitlines()
        theirs = f.read_text().splitlines()
        assert mine[0] == theirs[0] and sorted(mine[1:]) == sorted(theirs[1:]), f.name
    monkeypatch.setattr(provision.reconcile, "PART_ROWS", part_rows)

    # The same period from a one-off Sep-Nov file (today's way): the August shipments are
    # unknown to it, so MON0, MON1 and MON2 look activated_not_shipped.
    one_off = write_csv(
        tmp_path / "sep-nov.csv", HEADER,
        rows("MON4", "MON5", "OTH1", day="2026-10-05") + rows("MON7", day="2026-11-03"),
    )  # fmt: skip
    old = run_cli(
        "reconcile", str(one_off), "--since", "2026-09-01", "--until", "2026-11-30",
        "--report-dir", str(tmp_path / "old"), "--json",
    )  # fmt: skip
    assert json.loads(old.stdout)["counts"]["activated_not_shipped"] == 4

    # One batch only: the other batch's device and shipment leave the report.
    one = run_cli("reconcile", "--batch", "other", "--report-dir", str(tmp_path / "b"), "--json")
    counts = json.loads(one.stdout)["counts"]
    assert counts["shipped_not_activated"] == 1 and sum(counts.values()) == 1
    bad = run_cli("reconcile", "--batch", "nope", "--report-dir", str(tmp_path / "c"))
    assert bad.exit_code == 1 and "--batch 'nope': no such batch" in bad.stderr


def stored_rows(registry: Registry, keyring_path: Path) -> list[tuple[str, str, str | None, int]]:
    from provision.keys import load_keyring
    from provision.serials import decrypt_serial

    key = load_keyring(keyring_path).data_key
    with registry.engine.connect() as conn:
        found = conn.execute(
            text("SELECT serial_ct, row_hash, shipped_at, order_id, line FROM shipments")
        ).fetchall()
    return sorted(
        (decrypt_serial(key, f"shipment:{rh}", bytes(ct)), str(at)[:10], order, line)
        for ct, rh, at, order, line in found
    )


def test_a_bulk_load_stores_each_row_once_and_builds_the_indexes_again(
    run_cli: Any,
    registry: Registry,
    keyring_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A big import (here: every import, and sealed by worker processes) drops the indexes,
    appends, removes the rows stored already or sent twice, and builds the indexes again; a
    bad file in that mode stores nothing and leaves the indexes as they were."""
    import provision.registry.shipments
    import provision.shipments

    monkeypatch.setattr(provision.registry.shipments, "BULK_MIN_ROWS", 1)
    monkeypatch.setattr(provision.shipments, "POOL_MIN_ROWS", 0)
    indexes = {"ux_shipments_row_hash", "ix_shipments_serial_hash", "ix_shipments_shipped_at"}

    def present() -> set[str]:
        return {i["name"] for i in inspect(registry.engine).get_indexes("shipments")}

    first = write_csv(tmp_path / "a.csv", HEADER, rows("BULK1", "BULK2", "BULK1"))
    data = json.loads(run_cli("shipments", "import", str(first), "--json").stdout)
    assert (data["rows"], data["stored"], data["already_stored"]) == (3, 2, 1)
    second = write_csv(tmp_path / "b.csv", HEADER, rows("BULK2", "BULK3", "BULK4"))
    data = json.loads(run_cli("shipments", "import", str(second), "--json").stdout)
    assert (data["stored"], data["already_stored"]) == (2, 1)
    assert present() == indexes
    unique = [i for i in inspect(registry.engine).get_indexes("shipments") if i["unique"]]
    assert [i["column_names"] for i in unique] == [["row_hash"]]
    assert [r[0] for r in stored_rows(registry, keyring_path)] == [
        "BULK1", "BULK2", "BULK3", "BULK4",
    ]  # fmt: skip

    bad = write_csv(
        tmp_path / "bad.csv", HEADER, [*rows("BULK5"), ["BULK6", "soon", "", "", "", ""]]
    )
    out = run_cli("shipments", "import", str(bad))
    assert out.exit_code == 1 and f"{bad}:3: shipped_at:" in out.stderr
    assert present() == indexes and len(stored_rows(registry, keyring_path)) == 4
    assert json.loads(run_cli("shipments", "list", "--json").stdout)["count"] == 4
    # Ids go on from the highest stored (PostgreSQL: its sequence follows the explicit ids).
    monkeypatch.setattr(provision.registry.shipments, "BULK_MIN_ROWS", 10**9)
    third = write_csv(tmp_path / "c.csv", HEADER, rows("BULK7"))
    assert json.loads(run_cli("shipments", "import", str(third), "--json").stdout)["stored"] == 1
    with registry.engine.connect() as conn:
        ids = [i for (i,) in conn.execute(text("SELECT id FROM shipments ORDER BY id"))]
    assert len(ids) == 5 and ids[-1] > ids[-2]


@pytest.mark.parametrize("pooled", [False, True], ids=["in-process", "workers"])
def test_a_file_read_again_by_the_slower_reader_is_stored_once(
    run_cli: Any,
    registry: Registry,
    keyring_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pooled: bool,
) -> None:
    """The fast reader hands each block to the import as it goes; a quoted line break in a
    later block sends the whole file to the csv reader, from its start: what the import had
    stored from the first blocks is forgotten, and every row is stored exactly once (also
    when worker processes seal the blocks and a thread stores them)."""
    import provision.manifests
    import provision.shipments
    from provision.registry.shipments import ShipmentImport

    monkeypatch.setattr(provision.manifests, "BLOCK_BYTES", 200)
    if pooled:
        monkeypatch.setattr(provision.shipments, "POOL_MIN_ROWS", 0)
    restarts: list[int] = []
    restart = ShipmentImport.restart

    def counted(self: ShipmentImport) -> None:
        restarts.append(self._added)  # rows stored before the file is read again
        restart(self)

    monkeypatch.setattr(ShipmentImport, "restart", counted)
    many = rows(*[f"AGAIN{i}" for i in range(60)])
    many[50][3] = "Acme\nRetail"  # a quoted line break (and a control character: rejected)
    f = write_csv(tmp_path / "again.csv", HEADER, many)
    out = run_cli("shipments", "import", str(f), "--reject-file", str(tmp_path / "r.csv"), "--json")
    assert out.exit_code == 4, out.output
    data = json.loads(out.stdout)
    assert (data["rows"], data["stored"], data["rejected"]) == (59, 59, 1)
    assert len(restarts) == 1 and restarts[0] > 0
    serials = [r[0] for r in stored_rows(registry, keyring_path)]
    assert sorted(serials) == sorted(f"AGAIN{i}" for i in range(60) if i != 50)


def test_a_bad_file_stops_being_stored_at_its_first_bad_row(
    run_cli: Any, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import reads the file once, storing each block as it is checked; without a reject
    file, once a row is bad nothing more is sealed or stored (the transaction is left anyway),
    while the rest of the file is still checked and its errors reported."""
    import provision.manifests
    from provision.registry.shipments import ShipmentImport

    monkeypatch.setattr(provision.manifests, "BLOCK_BYTES", 200)
    added: list[int] = []
    add = ShipmentImport.add

    def counted(self: ShipmentImport, serial_hash: Any, *args: Any) -> None:
        added.append(len(serial_hash))
        add(self, serial_hash, *args)

    monkeypatch.setattr(ShipmentImport, "add", counted)
    many = rows(*[f"STOP{i:02d}" for i in range(40)])
    many[20][1] = "soon"  # line 22, in a block after the first ones
    many[35][1] = "later"  # line 37: still checked
    f = write_csv(tmp_path / "stop.csv", HEADER, many)
    out = run_cli("shipments", "import", str(f))
    assert out.exit_code == 1
    assert f"{f}:22: shipped_at:" in out.stderr and f"{f}:37: shipped_at:" in out.stderr
    assert 0 < sum(added) < 20  # the blocks before the bad row, none after
    assert json.loads(run_cli("shipments", "list", "--json").stdout)["count"] == 0
    rejects = tmp_path / "r.csv"
    out = run_cli("shipments", "import", str(f), "--reject-file", str(rejects), "--json")
    assert out.exit_code == 4 and json.loads(out.stdout)["stored"] == 38


def test_a_block_the_database_refuses_stops_the_import_and_stores_nothing(
    run_cli: Any, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With worker processes sealing and a thread storing, a block the database refuses
    ends the import with that error (not a hang, not a partial import)."""
    import provision.manifests
    import provision.shipments
    from provision.errors import RegistryError
    from provision.registry.shipments import ShipmentImport

    monkeypatch.setattr(provision.manifests, "BLOCK_BYTES", 200)
    monkeypatch.setattr(provision.shipments, "POOL_MIN_ROWS", 0)
    calls: list[int] = []
    add = ShipmentImport.add

    def refused(self: ShipmentImport, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RegistryError("registry test.db: database or disk is full")
        add(self, *args)

    monkeypatch.setattr(ShipmentImport, "add", refused)
    f = write_csv(tmp_path / "full.csv", HEADER, rows(*[f"FULL{i:02d}" for i in range(40)]))
    out = run_cli("shipments", "import", str(f))
    assert out.exit_code != 0 and "database or disk is full" in out.stderr
    assert len(calls) == 3  # nothing stored after the refused block
    assert json.loads(run_cli("shipments", "list", "--json").stdout)["count"] == 0
