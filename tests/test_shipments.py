"""`provision shipments import` and `list`: stored, idempotent, all or nothing, serials only
as keyed hashes and ciphertext; delimiters and column maps; on both databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import text

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
