"""Manifests through `provision register`: every bad row named as FILE:LINE: column: reason.

Each case runs on SQLite and on PostgreSQL (the `run_cli` fixture). The fixture files in
tests/data/ are exact bytes (BOM, CRLF, undecodable bytes); tests/data/.gitattributes keeps git
from converting them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import select

from provision.keys import Keyring
from provision.registry import Registry, devices
from provision.serials import device_id

DATA = Path(__file__).parent / "data"

SPACE = "serial contains a space, outside the GS1 AI 82 character set"
NO_TYPE = "device type missing and no --device-type default given"


def data(name: str) -> str:
    return str(DATA / name)


def err(name: str, line: int, column: str, reason: str) -> str:
    return f"{data(name)}:{line}: {column}: {reason}"


def db_state(db_url: str) -> tuple[int, list[str]]:
    """(devices, batch names): what a rejected manifest must leave untouched."""
    registry = Registry(db_url)
    try:
        return registry.devices.count(), registry.batches.names()
    finally:
        registry.close()


def stored(db_url: str, *columns: str) -> list[tuple[Any, ...]]:
    """(batch_seq, *columns) of every device; batch_seq is the manifest line of its row."""
    registry = Registry(db_url)
    try:
        cols = [devices.c.batch_seq, *(devices.c[c] for c in columns)]
        with registry.engine.connect() as conn:
            rows = conn.execute(select(*cols).order_by(devices.c.batch_seq, devices.c.id))
            return [tuple(r) for r in rows]
    finally:
        registry.close()


def ok_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rejected_json(result: Result) -> dict[str, Any]:
    """The summary of a run whose bad rows went to the reject file: exit code 4, for cron."""
    assert result.exit_code == 4, result.output
    assert result.stderr.splitlines()[-1].startswith("Warning: ")
    assert "rejected, written to" in result.stderr
    return json.loads(result.stdout)


def assert_rejected(result: Result, rows: list[str], *files: str) -> None:
    """Exit 1; stderr is exactly every bad row, then the one-line summary."""
    assert result.exit_code == 1, result.output
    plural = "s" if len(rows) != 1 else ""
    summary = f"Error: {len(rows)} bad row{plural} in {', '.join(data(f) for f in files)}; "
    assert result.stderr.splitlines() == [*rows, summary + "nothing written"]
    assert result.stdout == ""


def register(run_cli, name: str, *args: str) -> Result:
    return run_cli("register", data(name), "--batch", "night-1", *args)


# -- each bad-manifest case: exit 1, every bad row named, nothing written -------------------------


def test_empty_serial_is_reported_on_each_of_its_lines(run_cli, db_url):
    result = register(run_cli, "empty_serial.csv")
    f = "empty_serial.csv"
    assert_rejected(
        result, [err(f, 3, "serial", "empty serial"), err(f, 5, "serial", "empty serial")], f
    )
    assert db_state(db_url) == (0, [])


def test_serial_over_64_characters_is_reported_with_its_length(run_cli, db_url):
    f = "long_serial.csv"
    result = register(run_cli, f)
    assert_rejected(
        result,
        [
            err(f, 2, "serial", "serial is 65 characters long; at most 64 allowed"),
            err(f, 4, "serial", "serial is 100 characters long; at most 64 allowed"),
        ],
        f,
    )  # line 3 holds exactly 64 characters: accepted
    assert db_state(db_url) == (0, [])


def test_serial_with_a_space_is_outside_gs1_ai82(run_cli, db_url):
    f = "serial_with_space.csv"
    assert_rejected(register(run_cli, f), [err(f, 3, "serial", SPACE)], f)
    assert db_state(db_url) == (0, [])


def test_tab_and_control_characters_are_named_with_line_and_column(run_cli, db_url):
    f = "control_char.csv"
    outside = "outside the GS1 AI 82 character set"
    assert_rejected(
        register(run_cli, f),
        [
            err(f, 3, "serial", f"serial contains a tab, {outside}"),
            err(f, 4, "serial", f"serial contains control character U+0001, {outside}"),
            err(f, 5, "device_type", "contains a control character"),
            err(f, 6, "serial", f"serial contains control character U+007F, {outside}"),
        ],
        f,
    )
    assert db_state(db_url) == (0, [])


def test_hash_sign_and_accented_letter_are_outside_gs1_ai82(run_cli, db_url):
    f = "serial_with_hash.csv"
    outside = "outside the GS1 AI 82 character set"
    assert_rejected(
        register(run_cli, f),
        [
            err(f, 3, "serial", f"serial contains '#' (U+0023), {outside}"),
            err(f, 4, "serial", f"serial contains 'é' (U+00E9), {outside}"),
        ],
        f,
    )
    assert db_state(db_url) == (0, [])


def test_duplicate_serial_names_both_lines(run_cli, db_url):
    f = "dup_serial.csv"
    assert_rejected(
        register(run_cli, f),
        [
            err(f, 2, "serial", "same serial again on line 4, 6"),
            err(f, 3, "serial", "same serial again on line 7"),
            err(f, 4, "serial", "same serial as line 2"),
            err(f, 6, "serial", "same serial as line 2"),
            err(f, 7, "serial", "same serial as line 3"),
        ],
        f,
    )
    assert db_state(db_url) == (0, [])


def test_component_whose_serial_is_neither_in_the_manifest_nor_registered_is_reported(
    run_cli, db_url
):
    ok_json(run_cli("register", data("earlier_batch_serials.csv"), "--batch", "earlier", "--json"))
    before = db_state(db_url)
    assert before == (1, ["earlier"])
    s, c = "components_owner_serials.csv", "components_unknown_serial.csv"
    result = run_cli("register", data(s), "--components", data(c), "--batch", "night-1")
    why = f"serial is neither in {data(s)} nor registered"
    assert_rejected(result, [err(c, 3, "serial", why), err(c, 5, "serial", why)], c)
    assert db_state(db_url) == before


def test_component_of_a_serial_registered_in_an_earlier_batch_is_accepted(run_cli, db_url):
    ok_json(run_cli("register", data("earlier_batch_serials.csv"), "--batch", "earlier", "--json"))
    s, c = "components_owner_serials.csv", "components_for_earlier_batch.csv"
    out = ok_json(
        run_cli("register", data(s), "--components", data(c), "--batch", "night-1", "--json")
    )
    assert (out["registered"], out["components"], out["rejected"]) == (2, 2, 0)
    registry = Registry(db_url)
    try:
        assert registry.devices.count_components() == 2
        assert registry.batches.names() == ["earlier", "night-1"]
    finally:
        registry.close()


def test_missing_serial_column_is_named_on_the_header_line(run_cli, db_url):
    f = "missing_serial_column.csv"
    assert_rejected(
        register(run_cli, f), [err(f, 1, "serial", "required column missing from the header")], f
    )
    assert db_state(db_url) == (0, [])


def test_every_missing_component_column_is_named(run_cli, db_url):
    s, c = "components_owner_serials.csv", "components_missing_columns.csv"
    result = run_cli("register", data(s), "--components", data(c), "--batch", "night-1")
    why = "required column missing from the header"
    # in the order the spec lists them
    assert_rejected(result, [err(c, 1, "component_type", why), err(c, 1, "component_spec", why)], c)
    assert db_state(db_url) == (0, [])


def test_undecodable_bytes_are_named_by_line_and_column(run_cli, db_url):
    f = "undecodable_bytes.csv"
    assert_rejected(
        register(run_cli, f),
        [
            err(f, 3, "serial", "not valid UTF-8 (an undecodable byte 0xFF)"),
            err(f, 4, "manufacturer", "not valid UTF-8 (an undecodable byte 0xE9)"),
        ],
        f,
    )
    assert db_state(db_url) == (0, [])


@pytest.mark.parametrize(
    "name", ["empty.csv", "blank_lines_only.csv", "bom_only.csv", "commas_only.csv"]
)
def test_empty_file_is_reported(run_cli, db_url, name):
    assert_rejected(register(run_cli, name), [err(name, 1, "-", "file is empty")], name)
    assert db_state(db_url) == (0, [])


@pytest.mark.parametrize("name", ["header_only.csv", "header_then_blank_rows.csv"])
def test_header_only_file_is_reported(run_cli, db_url, name):
    why = "no data rows (the file has only a header)"
    assert_rejected(register(run_cli, name), [err(name, 1, "-", why)], name)
    assert db_state(db_url) == (0, [])


def test_device_type_column_absent_without_default_is_reported(run_cli, db_url):
    f = "no_device_type_column.csv"
    why = "column missing and no --device-type default given"
    assert_rejected(register(run_cli, f), [err(f, 1, "device_type", why)], f)
    assert db_state(db_url) == (0, [])


def test_empty_device_type_without_default_is_reported_on_each_line(run_cli, db_url):
    f = "empty_device_type.csv"
    assert_rejected(
        register(run_cli, f),
        [err(f, 3, "device_type", NO_TYPE), err(f, 4, "device_type", NO_TYPE)],
        f,
    )
    assert db_state(db_url) == (0, [])


def test_device_type_option_fills_an_absent_column(run_cli, db_url):
    out = ok_json(
        register(run_cli, "no_device_type_column.csv", "--device-type", "probe", "--json")
    )
    assert out["registered"] == 2
    assert stored(db_url, "device_type", "manufacturer") == [
        (2, "probe", "Acme"),
        (3, "probe", "Acme"),
    ]


def test_device_type_option_fills_only_the_empty_cells(run_cli, db_url):
    out = ok_json(register(run_cli, "empty_device_type.csv", "--device-type", "probe", "--json"))
    assert (out["registered"], out["rejected"]) == (4, 0)
    assert stored(db_url, "device_type") == [
        (2, "sensor"),
        (3, "probe"),
        (4, "probe"),
        (5, "gateway"),
    ]


def test_every_bad_row_of_both_manifests_is_reported_together(run_cli, db_url):
    s, c = "mixed_good_bad.csv", "mixed_good_bad_components.csv"
    result = run_cli("register", data(s), "--components", data(c), "--batch", "night-1")
    assert_rejected(
        result,
        [
            err(s, 3, "serial", SPACE),
            err(s, 5, "device_type", NO_TYPE),
            err(s, 6, "manufactured_at", "not an ISO 8601 date or date-time"),
            err(c, 3, "serial", SPACE),
            err(c, 4, "component_type", "required value is empty"),
            err(c, 5, "serial", f"its device row ({data(s)} line 5) is rejected"),
        ],
        s,
        c,
    )
    assert db_state(db_url) == (0, [])


def test_bad_manifest_with_json_lists_every_row_in_the_error_object(run_cli, db_url):
    f = "empty_serial.csv"
    result = register(run_cli, f, "--json")
    assert result.exit_code == 1
    rows = [err(f, 3, "serial", "empty serial"), err(f, 5, "serial", "empty serial")]
    assert json.loads(result.stdout) == {
        "error": {
            "type": "manifest",
            "message": f"2 bad rows in {data(f)}; nothing written",
            "rows": rows,
        }
    }
    assert db_state(db_url) == (0, [])


# -- what a manifest may look like ----------------------------------------------------------------


def test_headers_are_case_insensitive_and_trimmed(run_cli, db_url):
    out = ok_json(register(run_cli, "messy_header.csv", "--json"))
    assert (out["registered"], out["rejected"]) == (2, 0)
    assert stored(db_url, "device_type", "manufacturer", "model") == [
        (2, "sensor", "Acme", "M-1"),
        (3, "gateway", "Acme", "M-2"),
    ]


def test_utf8_bom_and_crlf_manifest_registers(run_cli, db_url):
    raw = (DATA / "bom_and_crlf.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfserial,") and raw.count(b"\r\n") == 3  # fixture intact
    out = ok_json(register(run_cli, "bom_and_crlf.csv", "--json"))
    assert (out["registered"], out["rejected"]) == (2, 0)
    assert stored(db_url, "device_type") == [(2, "sensor"), (3, "gateway")]


def test_quoted_fields_keep_their_commas_and_quotes(run_cli, db_url):
    out = ok_json(register(run_cli, "quoted_fields.csv", "--json"))
    assert (out["registered"], out["rejected"]) == (2, 0)
    assert stored(db_url, "device_type", "manufacturer", "model") == [
        (2, "sensor", "Acme, Inc.", "M-1"),
        (3, "sensor", 'Say "Hi" Ltd', "M-2, rev B"),
    ]


@pytest.mark.parametrize(
    ("name", "break_name"),
    [("quoted_multiline.csv", "a line break"), ("quoted_multiline_crlf.csv", "a carriage return")],
)
def test_line_numbers_stay_right_after_a_quoted_line_break(run_cli, db_url, name, break_name):
    # Line 2's quoted model runs onto line 3, line 5's quoted serial onto line 6.
    assert_rejected(
        register(run_cli, name),
        [
            err(name, 2, "model", "contains a control character"),
            err(
                name,
                5,
                "serial",
                f"serial contains {break_name}, outside the GS1 AI 82 character set",
            ),
            err(name, 7, "serial", "empty serial"),
            err(name, 8, "serial", SPACE),
        ],
        name,
    )
    assert db_state(db_url) == (0, [])


# -- --json and --reject-file ---------------------------------------------------------------------


def test_json_output_has_batch_and_every_count(run_cli):
    first = ok_json(register(run_cli, "quoted_fields.csv", "--json"))
    assert first == {
        "batch": "night-1",
        "registered": 2,
        "already_registered": 0,
        "rejected": 0,
        "other_batch": 0,
        "components": 0,
    }
    again = ok_json(register(run_cli, "quoted_fields.csv", "--json"))
    assert again == first | {"registered": 0, "already_registered": 2}


def test_reject_file_lets_good_rows_through_and_lists_bad_ones_with_reason(
    run_cli, db_url, tmp_path, keyring: Keyring
):
    s, c = "mixed_good_bad.csv", "mixed_good_bad_components.csv"
    rejects = tmp_path / "rejects.csv"
    out = rejected_json(
        run_cli(
            "register",
            data(s),
            "--components",
            data(c),
            "--batch",
            "night-1",
            "--reject-file",
            str(rejects),
            "--json",
        )
    )
    assert out == {
        "batch": "night-1",
        "registered": 2,
        "already_registered": 0,
        "rejected": 6,
        "other_batch": 0,
        "components": 2,
        "reject_file": str(rejects),
    }
    assert stored(db_url, "device_id", "production_line") == [
        (2, device_id(keyring.pepper, "R-001"), "L1"),
        (4, device_id(keyring.pepper, "R-003"), "L2"),
    ]
    with rejects.open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == [
        "source_file",
        "source_line",
        "serial",
        "device_type",
        "manufacturer",
        "model",
        "manufactured_at",
        "line",
        "gtin",
        "component_type",
        "component_spec",
        "component_serial",
        "supplier",
        "lot",
        "reason",
    ]
    device = ["Acme", "M-1"]
    no_comp = ["", "", "", "", ""]
    no_device = ["", "", "", "", "", ""]
    assert table[1:] == [
        [
            data(s),
            "3",
            "R 002",
            "sensor",
            *device,
            "2026-11-01",
            "L1",
            "",
            *no_comp,
            f"serial: {SPACE}",
        ],
        [
            data(s),
            "5",
            "R-004",
            "",
            *device,
            "2026-11-01",
            "L2",
            "",
            *no_comp,
            f"device_type: {NO_TYPE}",
        ],
        [
            data(s),
            "6",
            "R-005",
            "sensor",
            *device,
            "not-a-date",
            "L2",
            "",
            *no_comp,
            "manufactured_at: not an ISO 8601 date or date-time",
        ],
        [data(c), "3", "R 002", *no_device, "mcu", "STM32", "", "", "", f"serial: {SPACE}"],
        [
            data(c),
            "4",
            "R-003",
            *no_device,
            "",
            "STM32",
            "",
            "",
            "",
            "component_type: required value is empty",
        ],
        [
            data(c),
            "5",
            "R-004",
            *no_device,
            "mcu",
            "STM32",
            "",
            "",
            "",
            f"serial: its device row ({data(s)} line 5) is rejected",
        ],
    ]


def test_reject_file_keeps_undecodable_rows_readable_as_utf8(run_cli, db_url, tmp_path):
    rejects = tmp_path / "rejects.csv"
    out = rejected_json(
        register(run_cli, "undecodable_bytes.csv", "--reject-file", str(rejects), "--json")
    )
    assert (out["registered"], out["rejected"]) == (1, 2)
    with rejects.open(newline="", encoding="utf-8") as fh:  # strict: any stray byte fails here
        rows = [(r[1], r[2], r[4], r[-1]) for r in list(csv.reader(fh))[1:]]
    assert rows == [
        ("3", "U-\ufffd02", "Acme", "serial: not valid UTF-8 (an undecodable byte 0xFF)"),
        (
            "4",
            "U-003",
            "Soci\ufffdt\ufffd",
            "manufacturer: not valid UTF-8 (an undecodable byte 0xE9)",
        ),
    ]
    assert stored(db_url, "manufacturer") == [(2, "Acme")]
