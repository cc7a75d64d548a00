"""Reconciliation: every category in known numbers, safe CSVs, bad input, exit codes."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime
from pathlib import Path

import pandas as pd
import pypdfium2 as pdfium
import pytest
from click.testing import Result

from provision.activation import activate
from provision.audit import revoke
from provision.categories import CATEGORY_NAMES
from provision.keys import Keyring
from provision.payload import payload_url
from provision.pipeline import register_batch
from provision.reconcile import neutralise
from provision.registry import Registry
from provision.serials import device_id
from tests.helpers import with_payload, write_csv

AS_OF = "2026-11-28"
SHIP_HEADER = ["serial", "shipped_at", "order_id", "customer", "destination", "carrier"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the scenario ------------------------------------------------------------------------------
# Registered devices and what customers did with them (activate / revoke at a fixed time).
MATCHED = {  # serial -> (activated at, days from shipping to activation)
    "TST-M1": ("2026-10-03T20:00:00Z", 2.5),  # shipped 2026-10-01T08:00Z
    "TST-M2": ("2026-09-01T18:00:00Z", 0.75),  # shipped 2026-09-01 (date only)
    "TST-M3": ("2026-07-20T06:00:00Z", 40.25),  # shipped 2026-06-10T00:00Z
    "TST-M4": ("2026-11-01T20:00:00Z", 0.5),  # shipped 2026-11-01T10:00+02:00
}
EARLY = {  # serial -> (activated at, days activated before shipped_at)
    "TST-B1": ("2026-10-09T00:00:00Z", 1.5),  # shipped 2026-10-10T12:00Z
    "TST-B2": ("2026-10-19T23:00:00Z", 0.04),  # shipped 2026-10-20 (date only): 1 h early
    "TST-B3": ("2026-11-04T12:00:00Z", 0.5),  # shipped 2026-11-05T00:00Z
}
PENDING = {  # serial -> (age in days at AS_OF, aging bucket)
    "TST-P1": (0, "0-30"),
    "TST-P2": (18, "0-30"),
    "TST-P3": (30, "0-30"),
    "TST-P4": (31, "31-90"),
    "TST-P5": (90, "31-90"),
    "TST-P6": (91, "91+"),
    "TST-P7": (365, "91+"),
}
REVOKED = {"TST-R1": "2026-08-05T10:00:00Z"}
NOT_SHIPPED_ACTIVE = {"INV-A1": "2026-11-01T10:00:00Z", "INV-A2": "2026-11-20T00:00:00Z"}
INVENTORY = [f"INV-N{i}" for i in range(1, 7)]
REVOKED_UNSHIPPED = "INV-X1"  # in no category: revoked, never shipped
UNKNOWN = ["GHOST-U1", "GHOST-U2", "GHOST-U3"]

SCENARIO_SHIPMENTS = [  # line 2 onwards
    ["TST-M1", "2026-10-01T08:00:00Z", "SO-1", "Nordic Retail AB", "SE", "DHL"],  # 2
    ["TST-M2", "2026-09-01", "SO-1", "Casa Digitale SpA", "IT", "UPS"],  # 3
    ["TST-M3", "2026-06-10T00:00:00Z", "SO-2", "Maison SARL", "FR", "FedEx"],  # 4
    ["TST-M4", "2026-11-01T10:00:00+02:00", "SO-2", "Acme GmbH", "DE", "DHL"],  # 5
    ["TST-B1", "2026-10-10T12:00:00Z", "SO-3", "Nordic Retail AB", "SE", "DHL"],  # 6
    ["TST-B2", "2026-10-20", "SO-3", "Nordic Retail AB", "SE", "DHL"],  # 7
    ["TST-B3", "2026-11-05T00:00:00Z", "SO-3", "Nordic Retail AB", "SE", "DHL"],  # 8
    ["TST-P1", "2026-11-28", "SO-4", "Casa Digitale SpA", "IT", "UPS"],  # 9
    ["TST-P2", "2026-11-10T00:00:00Z", "SO-4", "Casa Digitale SpA", "IT", "UPS"],  # 10
    ["TST-P3", "2026-10-29", "SO-4", "Casa Digitale SpA", "IT", "UPS"],  # 11
    ["TST-P4", "2026-10-28", "SO-5", "Casa Digitale SpA", "IT", "UPS"],  # 12
    ["TST-P5", "2026-08-30", "SO-5", "Casa Digitale SpA", "IT", "UPS"],  # 13
    ["TST-P6", "2026-08-29", "SO-5", "Casa Digitale SpA", "IT", "UPS"],  # 14
    ["TST-P7", "2025-11-28", "SO-6", "Casa Digitale SpA", "IT", "UPS"],  # 15
    ["TST-R1", "2026-08-01T09:00:00Z", "SO-7", "Maison SARL", "FR", "FedEx"],  # 16
    ["GHOST-U1", "2026-11-02", "SO-8", "Maison SARL", "FR", "FedEx"],  # 17
    ["GHOST-U2", "2026-11-03", "SO-8", "Maison SARL", "FR", "FedEx"],  # 18
    ["GHOST-U3", "2026-11-04", "SO-8", "Maison SARL", "FR", "FedEx"],  # 19
    ["TST-M1", "2026-10-02", "SO-9", "Nordic Retail AB", "SE", "DHL"],  # 20: dup of 2
    ["GHOST-U1", "2026-11-09", "SO-9", "Maison SARL", "FR", "FedEx"],  # 21: dup of 17
    ["TST-M1", "2026-10-05", "SO-9", "Nordic Retail AB", "SE", "DHL"],  # 22: dup of 2
    ["TST-P7", "2026-01-15", "SO-9", "Casa Digitale SpA", "IT", "UPS"],  # 23: dup of 15
    ["TST-R1", "2026-08-02", "SO-9", "Maison SARL", "FR", "FedEx"],  # 24: dup of 16
]
DUPLICATES = {  # (serial, its line, the line it repeats)
    ("TST-M1", 20, 2),
    ("GHOST-U1", 21, 17),
    ("TST-M1", 22, 2),
    ("TST-P7", 23, 15),
    ("TST-R1", 24, 16),
}
EXPECTED_COUNTS = {
    "matched": 4,
    "activated_not_shipped": 2,
    "activated_before_shipped": 3,
    "shipped_not_activated": 7,
    "shipped_unknown_serial": 3,
    "duplicate_shipment": 5,
    "shipped_revoked": 1,
    "registered_not_shipped": 6,
}
REGISTERED = [
    *MATCHED,
    *EARLY,
    *PENDING,
    *REVOKED,
    *NOT_SHIPPED_ACTIVE,
    *INVENTORY,
    REVOKED_UNSHIPPED,
]


# -- helpers -----------------------------------------------------------------------------------


def register(
    registry: Registry,
    keyring: Keyring,
    tmp_path: Path,
    serials: list[str],
    *,
    device_type: str = "sensor",
    model: str = "M-1",
    types: dict[str, tuple[str, str]] | None = None,
) -> None:
    """Register SERIALS in one batch; `types` overrides (device_type, model) per serial."""
    types = types or {}
    rows = [[s, *types.get(s, (device_type, model)), "Acme"] for s in serials]
    path = write_csv(
        tmp_path / "serials.csv", ["serial", "device_type", "model", "manufacturer"], rows
    )
    result = register_batch(registry, keyring, path, batch="recon")
    assert result.registered == len(serials)


def activate_at(registry: Registry, keyring: Keyring, serial: str, when: str) -> None:
    device = registry.devices.get(device_id(keyring.pepper, serial))
    assert device is not None
    url = payload_url("http://localhost:5001", with_payload(keyring, device)["payload"])
    activate(registry, keyring, url, "customer@example.com", ip="203.0.113.7", now=at(when))


def revoke_at(registry: Registry, keyring: Keyring, serial: str, when: str) -> None:
    device = registry.devices.get(device_id(keyring.pepper, serial))
    assert device is not None
    revoke(registry, keyring, device, "reported stolen", "security", now=at(when))


def shipments(path: Path, rows: list[list[str]], header: list[str] = SHIP_HEADER) -> Path:
    return write_csv(path, header, rows)


def reconcile(run_cli, ship: Path, report: Path, *extra: str) -> Result:
    return run_cli(
        "reconcile",
        str(ship),
        "--as-of",
        AS_OF,
        "--report-dir",
        str(report),
        "--quiet",
        *extra,
    )


def ok_json(result: Result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def header_of(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def pdf_pages_text(path: Path) -> tuple[int, str]:
    pdf = pdfium.PdfDocument(str(path))
    try:
        texts = []
        for page in pdf:
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return len(pdf), "\n".join(texts)
    finally:
        pdf.close()


def did(keyring: Keyring, serial: str) -> str:
    return device_id(keyring.pepper, serial)


def without_generated_at(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "generated_at"}


@pytest.fixture
def scenario(registry: Registry, keyring: Keyring, tmp_path: Path) -> Path:
    """The registry and shipments file of the every-category scenario."""
    register(registry, keyring, tmp_path, REGISTERED)
    for serial, (when, _) in (MATCHED | EARLY).items():
        activate_at(registry, keyring, serial, when)
    for serial, when in NOT_SHIPPED_ACTIVE.items():
        activate_at(registry, keyring, serial, when)
    for serial, when in REVOKED.items():
        revoke_at(registry, keyring, serial, when)
    revoke_at(registry, keyring, REVOKED_UNSHIPPED, "2026-11-10T00:00:00Z")
    return shipments(tmp_path / "shipments.csv", SCENARIO_SHIPMENTS)


# -- the every-category scenario ---------------------------------------------------------------


def test_every_category_in_known_numbers(run_cli, scenario, keyring, tmp_path):
    report = tmp_path / "reports" / "nov"
    out = ok_json(reconcile(run_cli, scenario, report, "--json"))

    assert out["counts"] == EXPECTED_COUNTS
    assert list(out["counts"]) == list(CATEGORY_NAMES)
    assert out["as_of"] == AS_OF
    assert out["aging_buckets"] == {"0-30": 3, "31-90": 2, "91+": 2}
    assert out["days_to_activation"]["median"] == 1.625  # of 0.5, 0.75, 2.5, 40.25
    assert out["days_to_activation"]["max"] == 40.25
    assert out["days_to_activation"]["p90"] == pytest.approx(28.925)

    # The folder appeared in one piece, with nothing left beside it.
    assert sorted(os.listdir(report.parent)) == ["nov"]
    expected_files = sorted([f"{name}.csv" for name in CATEGORY_NAMES] + ["report.pdf"])
    assert sorted(os.listdir(report)) == sorted([*expected_files, "summary.json"])
    summary = json.loads((report / "summary.json").read_text())
    assert summary["counts"] == EXPECTED_COUNTS
    assert without_generated_at(summary) == without_generated_at(out)
    assert summary["files"] == sorted([*expected_files, "summary.json"])
    assert summary["severity"]["activated_not_shipped"] == "critical"
    assert summary["severity"]["shipped_revoked"] == "critical"

    for name, count in EXPECTED_COUNTS.items():
        assert len(rows_of(report / f"{name}.csv")) == count, name

    matched = {r["serial"]: r for r in rows_of(report / "matched.csv")}
    assert {s: float(r["days_to_activation"]) for s, r in matched.items()} == {
        s: days for s, (_, days) in MATCHED.items()
    }
    assert {s: r["device_id"] for s, r in matched.items()} == {s: did(keyring, s) for s in MATCHED}
    assert matched["TST-M1"]["shipments_line"] == "2"  # the first of its three shipments
    assert matched["TST-M1"]["order_id"] == "SO-1"

    early = {
        r["serial"]: float(r["days_early"])
        for r in rows_of(report / "activated_before_shipped.csv")
    }
    assert early == {s: days for s, (_, days) in EARLY.items()}

    pending = {
        r["serial"]: (int(r["age_days"]), r["aging_bucket"])
        for r in rows_of(report / "shipped_not_activated.csv")
    }
    assert pending == PENDING

    unknown = rows_of(report / "shipped_unknown_serial.csv")
    assert sorted(r["serial"] for r in unknown) == UNKNOWN
    assert {r["shipments_line"] for r in unknown} == {"17", "18", "19"}

    dups = rows_of(report / "duplicate_shipment.csv")
    assert {(r["serial"], int(r["shipments_line"]), int(r["first_line"])) for r in dups} == (
        DUPLICATES
    )

    revoked = rows_of(report / "shipped_revoked.csv")
    assert [(r["serial"], r["device_id"]) for r in revoked] == [("TST-R1", did(keyring, "TST-R1"))]
    assert revoked[0]["revoked_at"].startswith("2026-08-05T10:00:00")

    not_shipped = rows_of(report / "activated_not_shipped.csv")
    assert {r["device_id"] for r in not_shipped} == {did(keyring, s) for s in NOT_SHIPPED_ACTIVE}
    assert {r["activated_at"][:19] for r in not_shipped} == {
        w[:19] for w in NOT_SHIPPED_ACTIVE.values()
    }
    inventory = rows_of(report / "registered_not_shipped.csv")
    assert {r["device_id"] for r in inventory} == {did(keyring, s) for s in INVENTORY}
    assert {r["status"] for r in inventory} == {"pending"}
    assert {r["batch"] for r in inventory} == {"recon"}

    pdf = report / "report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    pages, text = pdf_pages_text(pdf)
    assert pages >= 1
    for name in CATEGORY_NAMES:
        assert name in text, name


def test_text_output_lists_every_count(run_cli, scenario, tmp_path):
    report = tmp_path / "nov"
    result = reconcile(run_cli, scenario, report)
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    assert str(report) in lines[0]
    for name, count in EXPECTED_COUNTS.items():
        assert any(line.split() == [name, str(count)] for line in lines), name


def test_plaintext_serials_only_where_a_follow_up_needs_them(run_cli, scenario, tmp_path):
    """The rule: a serial appears where the shipments file gave it, and in the two critical
    categories an analyst must follow up (activated_not_shipped from the keyring's encrypted
    serial); never for a device nobody needs to look for (registered_not_shipped)."""
    report = tmp_path / "nov"
    ok_json(reconcile(run_cli, scenario, report, "--json"))
    path = report / "registered_not_shipped.csv"
    assert "serial" not in header_of(path) and "serial_hash" not in header_of(path)
    for serial in REGISTERED:
        assert serial.encode() not in path.read_bytes(), serial
    follow = list(csv.DictReader((report / "activated_not_shipped.csv").open()))
    assert sorted(r["serial"] for r in follow) == sorted(NOT_SHIPPED_ACTIVE)
    assert {(r["user"], r["activated_ip"]) for r in follow} == {
        ("customer@example.com", "203.0.113.7")
    }
    assert all(r["activated_at"] and r["batch"] for r in follow)
    # Serials nobody shipped and nobody must follow up appear nowhere, the PDF text included.
    unshipped = [*INVENTORY, REVOKED_UNSHIPPED]
    _, text = pdf_pages_text(report / "report.pdf")
    for path in report.iterdir():
        data = path.read_bytes()
        for serial in unshipped:
            assert serial.encode() not in data, (path.name, serial)
            assert serial not in text
    # The shipped ones come from the shipments file, as given.
    assert "TST-R1" in text  # shipped_revoked is critical: its first rows are in the PDF


# -- dates -------------------------------------------------------------------------------------


def test_date_only_shipped_at_means_that_whole_day(run_cli, registry, keyring, tmp_path):
    register(registry, keyring, tmp_path, ["D-1", "D-2", "D-3", "D-4"])
    activate_at(registry, keyring, "D-1", "2026-11-02T18:00:00Z")  # later the same day
    activate_at(registry, keyring, "D-2", "2026-11-02T08:00:00Z")  # before a 12:00 shipment
    activate_at(registry, keyring, "D-3", "2026-11-01T23:59:00Z")  # the day before
    activate_at(registry, keyring, "D-4", "2026-11-02T00:00:00Z")  # the first instant
    ship = shipments(
        tmp_path / "s.csv",
        [
            ["D-1", "2026-11-02", "", "", "", ""],
            ["D-2", "2026-11-02T12:00:00Z", "", "", "", ""],
            ["D-3", "2026-11-02", "", "", "", ""],
            ["D-4", "2026-11-02", "", "", "", ""],
        ],
    )
    report = tmp_path / "r"
    out = ok_json(reconcile(run_cli, ship, report, "--json"))
    assert out["counts"]["matched"] == 2
    assert out["counts"]["activated_before_shipped"] == 2
    matched = {r["serial"]: float(r["days_to_activation"]) for r in rows_of(report / "matched.csv")}
    assert matched == {"D-1": 0.75, "D-4": 0.0}
    early = {
        r["serial"]: float(r["days_early"])
        for r in rows_of(report / "activated_before_shipped.csv")
    }
    assert early == {"D-2": 0.17, "D-3": 0.0}  # 4 h; 1 min rounds to 0.00 days


# -- spreadsheet safety ------------------------------------------------------------------------


def test_formula_injection_is_neutralised(run_cli, registry, keyring, tmp_path):
    hyperlink = '=HYPERLINK("http://x","y")'
    register(
        registry,
        keyring,
        tmp_path,
        ["INJ-1", "INJ-2"],
        types={"INJ-1": ("-sensor", "=1+2"), "INJ-2": ("@sensor", "+M")},
    )
    activate_at(registry, keyring, "INJ-1", "2026-11-03T12:00:00Z")
    ship = shipments(
        tmp_path / "s.csv",
        [
            ["INJ-1", "2026-11-01T00:00:00Z", "+SO-1", hyperlink, "-DE", "@dhl"],
            [hyperlink, "2026-11-02", "SO-2", "Plain Co", "SE", "DHL"],  # valid GS1 AI 82
            ["-42", "2026-11-02", "SO-2", "Plain Co", "SE", "DHL"],
            ["+1", "2026-11-02", "SO-2", "Plain Co", "SE", "DHL"],
        ],
    )
    report = tmp_path / "r"
    out = ok_json(reconcile(run_cli, ship, report, "--json"))
    assert out["counts"]["matched"] == 1
    assert out["counts"]["shipped_unknown_serial"] == 3
    assert out["counts"]["registered_not_shipped"] == 1

    [m] = rows_of(report / "matched.csv")
    assert m["serial"] == "INJ-1"
    assert m["order_id"] == "'+SO-1"
    assert m["customer"] == "'" + hyperlink
    assert m["destination"] == "'-DE"
    assert m["carrier"] == "'@dhl"
    assert m["device_type"] == "'-sensor"
    assert m["model"] == "'=1+2"
    assert m["days_to_activation"] == "2.5"  # numbers are left alone
    assert m["shipments_line"] == "2"

    unknown = sorted(r["serial"] for r in rows_of(report / "shipped_unknown_serial.csv"))
    assert unknown == sorted(["'" + hyperlink, "'-42", "'+1"])

    [inv] = rows_of(report / "registered_not_shipped.csv")
    assert (inv["device_type"], inv["model"]) == ("'@sensor", "'+M")

    for path in report.glob("*.csv"):
        for row in rows_of(path):
            for col, value in row.items():
                assert not value.startswith(FORMULA_START), (path.name, col, value)


def test_neutralise_covers_tab_and_carriage_return_and_leaves_numbers_alone():
    # The manifest rejects control characters, so tab and CR are checked on the function itself.
    frame = pd.DataFrame(
        {
            "text": ["\tcmd", "\rcmd", "=1", "+1", "-1", "@x", "a=b", "", None],
            "days": [-1.5, 0.0, 2.25, -3.0, 4.0, 5.5, 6.0, 7.0, 8.0],
            "age": [-1, 0, 1, 2, 3, 4, 5, 6, 7],
        }
    )
    out = neutralise(frame)
    assert out["text"].tolist()[:8] == ["'\tcmd", "'\rcmd", "'=1", "'+1", "'-1", "'@x", "a=b", ""]
    assert pd.isna(out["text"].iloc[8])
    assert out["days"].tolist() == frame["days"].tolist()
    assert out["age"].tolist() == frame["age"].tolist()
    assert out["days"].dtype == frame["days"].dtype
    assert out["age"].dtype == frame["age"].dtype
    assert frame["text"].iloc[0] == "\tcmd"  # the input is not modified


# -- bad input ---------------------------------------------------------------------------------

BAD_ROWS = (
    b"serial,shipped_at,order_id,customer\n"
    b"TST-1,2026-11-01,SO-1,Good Co\n"
    b"TST-2,2026-13-01,SO-2,Bad Month Co\n"
    b",2026-11-02,SO-3,No Serial Co\n"
    b"TST-4,2026-11-03,SO-4,Caf\xff Co\n"
    b"TST-5,yesterday,SO-5,Vague Co\n"
    b"TST-6,,SO-6,Undated Co\n"
    b"TST-7,2026-02-30,SO-7,Leap Co\n"
)
BAD_ROWS_ERRORS = [
    "3: shipped_at: not an ISO 8601 date or date-time",
    "4: serial: empty serial",
    "5: customer: not valid UTF-8 (an undecodable byte 0xFF)",
    "6: shipped_at: not an ISO 8601 date or date-time",
    "7: shipped_at: required value is empty",
    "8: shipped_at: not an ISO 8601 date or date-time",
]
NO_DATE_COLUMN = b"serial,order_id\nTST-1,SO-1\n"
NO_DATE_COLUMN_ERRORS = ["1: shipped_at: required column missing from the header"]


@pytest.mark.parametrize(
    ("content", "errors"),
    [(BAD_ROWS, BAD_ROWS_ERRORS), (NO_DATE_COLUMN, NO_DATE_COLUMN_ERRORS)],
    ids=["bad-rows", "no-shipped_at-column"],
)
def test_bad_shipments_file_names_each_line_and_writes_nothing(
    run_cli, registry, keyring, tmp_path, content, errors
):
    register(registry, keyring, tmp_path, ["TST-1", "TST-2"])
    ship = tmp_path / "shipments.csv"
    ship.write_bytes(content)
    parent = tmp_path / "reports"
    parent.mkdir()
    report = parent / "nov"

    result = reconcile(run_cli, ship, report)

    assert result.exit_code == 1
    prefix = f"{ship}:"
    got = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert got == [prefix + e for e in errors]
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    assert not report.exists()
    assert os.listdir(parent) == []  # no hidden temp folder either


def test_bad_shipments_file_as_json(run_cli, tmp_path):
    ship = tmp_path / "shipments.csv"
    ship.write_bytes(BAD_ROWS)
    assert run_cli("db", "upgrade").exit_code == 0
    result = reconcile(run_cli, ship, tmp_path / "r", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "manifest"
    assert error["rows"] == [f"{ship}:{e}" for e in BAD_ROWS_ERRORS]
    assert not (tmp_path / "r").exists()


# -- exit codes and the report folder ----------------------------------------------------------


@pytest.fixture
def small(registry: Registry, keyring: Keyring, tmp_path: Path) -> Path:
    """One device activated but never shipped, one shipped and pending."""
    register(registry, keyring, tmp_path, ["SM-A", "SM-S"])
    activate_at(registry, keyring, "SM-A", "2026-11-20T00:00:00Z")
    return shipments(tmp_path / "s.csv", [["SM-S", "2026-11-01", "SO-1", "Co", "SE", "DHL"]])


def test_fail_on_a_non_empty_category_exits_3_after_writing_the_summary(run_cli, small, tmp_path):
    report = tmp_path / "r"
    result = reconcile(
        run_cli, small, report, "--fail-on", "activated_not_shipped,shipped_revoked", "--json"
    )
    assert result.exit_code == 3, result.output + result.stderr
    assert "activated_not_shipped" in result.stderr
    assert "shipped_revoked" not in result.stderr  # only the non-empty ones are named
    assert json.loads(result.stdout)["counts"]["activated_not_shipped"] == 1
    summary = json.loads((report / "summary.json").read_text())
    assert summary["counts"]["activated_not_shipped"] == 1
    assert summary["counts"]["shipped_revoked"] == 0
    assert len(rows_of(report / "activated_not_shipped.csv")) == 1


def test_fail_on_empty_categories_exits_0(run_cli, small, tmp_path):
    report = tmp_path / "r"
    out = ok_json(
        reconcile(
            run_cli,
            small,
            report,
            "--fail-on",
            "shipped_revoked,duplicate_shipment,shipped_unknown_serial",
            "--json",
        )
    )
    assert out["counts"]["shipped_revoked"] == 0
    assert out["counts"]["shipped_not_activated"] == 1
    assert (report / "summary.json").is_file()


def test_fail_on_unknown_category_is_a_usage_error(run_cli, small, tmp_path):
    report = tmp_path / "r"
    result = reconcile(run_cli, small, report, "--fail-on", "matched,stolen")
    assert result.exit_code == 2
    assert "stolen" in result.stderr
    assert not report.exists()


def test_existing_report_dir_is_refused_and_untouched(run_cli, small, tmp_path):
    report = tmp_path / "reports" / "nov"
    report.mkdir(parents=True)
    (report / "notes.txt").write_text("mine\n")
    result = reconcile(run_cli, small, report)
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert os.listdir(report) == ["notes.txt"]
    assert (report / "notes.txt").read_text() == "mine\n"
    assert os.listdir(report.parent) == ["nov"]


def test_a_failure_while_writing_leaves_no_folder(run_cli, small, tmp_path, monkeypatch):
    def disk_full(result, path):
        path.write_bytes(b"%PDF-1.4 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("provision.report.render_reconciliation_pdf", disk_full)
    parent = tmp_path / "reports"
    parent.mkdir()
    with pytest.raises(OSError, match="No space left"):
        reconcile(run_cli, small, parent / "nov")
    assert os.listdir(parent) == []  # neither the report nor its hidden temp folder


@pytest.mark.parametrize(
    ("formats", "files"),
    [
        ("csv", [f"{name}.csv" for name in CATEGORY_NAMES]),
        ("json", []),
        ("pdf", ["report.pdf"]),
        ("csv,pdf", [f"{name}.csv" for name in CATEGORY_NAMES] + ["report.pdf"]),
    ],
)
def test_format_chooses_the_outputs(run_cli, small, tmp_path, formats, files):
    report = tmp_path / "r"
    out = ok_json(reconcile(run_cli, small, report, "--format", formats, "--json"))
    expected = sorted([*files, "summary.json"])
    assert sorted(os.listdir(report)) == expected
    assert out["files"] == expected
    assert json.loads((report / "summary.json").read_text())["files"] == expected


def test_unknown_format_is_a_usage_error(run_cli, small, tmp_path):
    result = reconcile(run_cli, small, tmp_path / "r", "--format", "csv,xlsx")
    assert result.exit_code == 2
    assert "xlsx" in result.stderr
    assert not (tmp_path / "r").exists()


def test_default_report_dir_is_under_the_output_folder(run_cli, small, output_dir):
    result = run_cli("reconcile", str(small), "--as-of", AS_OF, "--json")
    out = ok_json(result)
    [folder] = os.listdir(output_dir)
    assert folder.startswith(f"reconciliation-{AS_OF}-")
    assert out["report_dir"] == str(output_dir / folder)
    assert (output_dir / folder / "summary.json").is_file()


def test_empty_registry_makes_every_shipment_unknown(run_cli, tmp_path):
    ship = shipments(
        tmp_path / "s.csv",
        [["X-1", "2026-11-01", "", "", "", ""], ["X-1", "2026-11-02", "", "", "", ""]],
    )
    report = tmp_path / "r"
    assert run_cli("db", "upgrade").exit_code == 0  # an empty registry
    out = ok_json(reconcile(run_cli, ship, report, "--json"))
    assert out["counts"] == {name: 0 for name in CATEGORY_NAMES} | {
        "shipped_unknown_serial": 1,
        "duplicate_shipment": 1,
    }
    assert (report / "report.pdf").read_bytes().startswith(b"%PDF")
