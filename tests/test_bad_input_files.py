"""Hostile or broken input files: each is refused with one clear line, at a cost linear in it.

Manifests have a column limit and a record limit, found before the offending record is parsed
whole; bidi and C1 control characters are refused in text fields; a reject file is safe to open
in a spreadsheet and still reads back as the rows it lists; a missing manifest is one line
without a line number; job files check the type and range of every value; a killed run's
temporary files are removed by the next run, never one that a live process is writing.

The big generated files are timed by hand, not here (no timing assertions in tests).
"""

from __future__ import annotations

import csv
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from provision import manifests
from provision.config import MAX_TTL_DAYS
from provision.errors import BatchError, JobError, RowError
from provision.files import atomic_writer, publish_revision
from provision.jobs import MAX_COPIES, load_job
from provision.keys import Keyring
from provision.manifests import (
    COMPONENTS,
    MAX_COLUMNS,
    MAX_RECORD_BYTES,
    SERIALS,
    ManifestSpec,
    read_manifest,
    write_rejects,
)
from provision.pipeline import register_batch
from provision.registry import Registry, devices
from provision.serials import device_id
from tests.helpers import write_csv

FIVE_MB = 5 << 20
QUOTED_BREAK = '"first\nsecond"'  # a field over two lines: only the csv reader reads it
BLANK_OVER_TWO_LINES = '"\n"\n'  # a blank record on lines 1-2
READERS = pytest.mark.parametrize("multiline", [False, True], ids=["fast-reader", "csv-reader"])


def write_bytes(path: Path, data: str) -> Path:
    path.write_bytes(data.encode())
    return path


def fatal_errors(path: Path, spec: ManifestSpec = SERIALS) -> list[str]:
    """The errors of a manifest that must be refused as a whole, as the CLI prints them."""
    m = read_manifest(path, spec)
    assert m.fatal
    assert m.rows == 0  # nothing of it goes through
    return [str(e) for e in m.errors]


def row_errors(path: Path, spec: ManifestSpec = SERIALS) -> list[RowError]:
    m = read_manifest(path, spec, device_type_default="sensor")
    assert not m.fatal
    return sorted(m.errors)


def good_values(path: Path, *columns: str) -> list[tuple[str, ...]]:
    m = read_manifest(path, SERIALS)
    assert m.errors == []
    return [tuple(r) for chunk in m.chunks() for r in chunk[list(columns)].itertuples(index=False)]


# -- 1. header and record limits --------------------------------------------------------------


def test_a_header_of_100000_columns_is_rejected_with_the_column_limit(tmp_path: Path) -> None:
    header = ["serial", "device_type"] + [f"c{i}" for i in range(100_000 - 2)]
    f = write_csv(tmp_path / "wide.csv", header, [["SN-1", "sensor"] + [""] * (100_000 - 2)])
    assert fatal_errors(f) == [f"{f}:1: -: header has 100000 columns, more than {MAX_COLUMNS}"]


@READERS
def test_a_header_one_column_over_the_limit_is_rejected_on_its_line(
    tmp_path: Path, multiline: bool
) -> None:
    header = ",".join(["serial", "device_type"] + [f"c{i}" for i in range(MAX_COLUMNS - 1)])
    first = BLANK_OVER_TWO_LINES if multiline else ""
    f = write_bytes(tmp_path / "wide.csv", f"{first}{header}\nSN-1,sensor\n")
    assert fatal_errors(f) == [
        f"{f}:{3 if multiline else 1}: -: header has {MAX_COLUMNS + 1} columns, "
        f"more than {MAX_COLUMNS}"
    ]


@READERS
def test_a_header_at_the_column_limit_is_read(tmp_path: Path, multiline: bool) -> None:
    header = ["serial", "device_type"] + [f"c{i}" for i in range(MAX_COLUMNS - 2)]
    rows = [["SN-1", "sensor"] + [""] * (MAX_COLUMNS - 2)]
    if multiline:
        rows.append(["SN-2", "sensor", QUOTED_BREAK] + [""] * (MAX_COLUMNS - 3))
    f = write_csv(tmp_path / "wide.csv", header, rows)
    assert good_values(f, "serial") == [(r[0],) for r in rows]
    assert read_manifest(f, SERIALS)._fast is not multiline  # both readers take it


def test_a_5_mb_line_of_commas_as_the_header_is_rejected_with_the_line_limit(
    tmp_path: Path,
) -> None:
    f = write_bytes(tmp_path / "commas.csv", "," * FIVE_MB + "\nSN-1,sensor\n")
    assert fatal_errors(f) == [f"{f}:1: -: line longer than the limit of {MAX_RECORD_BYTES} bytes"]


@READERS
def test_a_5_mb_line_of_commas_as_a_data_row_is_rejected_with_the_line_limit(
    tmp_path: Path, multiline: bool
) -> None:
    before = f"SN-1,{QUOTED_BREAK}\n" if multiline else "SN-1,sensor\n"
    f = write_bytes(tmp_path / "commas.csv", "serial,device_type\n" + before + "," * FIVE_MB)
    line = 4 if multiline else 3
    assert fatal_errors(f) == [
        f"{f}:{line}: -: line longer than the limit of {MAX_RECORD_BYTES} bytes"
    ]


def test_a_5_mb_line_of_one_value_is_rejected_with_the_line_limit(tmp_path: Path) -> None:
    f = write_bytes(tmp_path / "long.csv", "serial,device_type\n" + "S" * FIVE_MB + ",x\n")
    assert fatal_errors(f) == [f"{f}:2: -: line longer than the limit of {MAX_RECORD_BYTES} bytes"]


def test_a_record_of_short_lines_longer_than_the_limit_is_rejected_on_its_first_line(
    tmp_path: Path,
) -> None:
    # Line 2 opens a quoted field; each later line (1000 bytes) closes one, adds 996 empty
    # fields and opens another: one record, 2 + 1000 * k bytes after k of those lines.
    inner = '",' + "," * 996 + '"\n'
    f = write_bytes(tmp_path / "record.csv", 'serial,device_type\n"\n' + inner * 1100 + '",x\n')
    last = 2 + 1049  # 2 + 1000 * 1049 - 1 (its line break) is the first size over 2**20
    assert fatal_errors(f) == [
        f"{f}:2: -: record on lines 2-{last} longer than the limit of {MAX_RECORD_BYTES} bytes"
    ]


def test_a_line_at_the_record_limit_is_read(tmp_path: Path) -> None:
    head = "SN-1,sensor,"
    line = head + "," * (MAX_RECORD_BYTES - len(head))  # empty fields past the header's
    assert len(line) == MAX_RECORD_BYTES
    f = write_bytes(tmp_path / "long.csv", f"serial,device_type\n{line}\nSN-2,sensor\n")
    fields = MAX_RECORD_BYTES - len(head) + 3
    assert row_errors(f) == [RowError(str(f), 2, "-", f"row has {fields} fields, the header has 2")]


def test_the_line_limit_holds_whatever_the_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write_bytes(tmp_path / "commas.csv", "serial,device_type\nSN-1,x\n" + "," * (2 << 20))
    whole = fatal_errors(f)
    monkeypatch.setattr(manifests, "BLOCK_BYTES", 4096)
    assert (
        fatal_errors(f)
        == whole
        == [f"{f}:3: -: line longer than the limit of {MAX_RECORD_BYTES} bytes"]
    )


def test_a_wide_header_is_refused_by_the_cli_with_nothing_written(
    run_cli, tmp_path: Path, db_url: str
) -> None:
    header = ["serial", "device_type"] + [f"c{i}" for i in range(100_000 - 2)]
    f = write_csv(tmp_path / "wide.csv", header, [["SN-1", "sensor"] + [""] * (100_000 - 2)])
    result = run_cli("register", str(f), "--batch", "night-1")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{f}:1: -: header has 100000 columns, more than {MAX_COLUMNS}",
        f"Error: 1 bad row in {f}; nothing written",
    ]
    registry = Registry(db_url)
    try:
        assert (registry.devices.count(), registry.batches.names()) == (0, [])
    finally:
        registry.close()


# -- 2. bidi and C1 control characters in text fields -----------------------------------------


@READERS
def test_bidi_controls_in_text_fields_are_rejected_naming_the_column(
    tmp_path: Path, multiline: bool
) -> None:
    rows = [
        ["B-1", "sen\u202esor", "Acme", "M-1", "L1"],  # RIGHT-TO-LEFT OVERRIDE
        ["B-2", "sensor", "\u202aAcme", "M-1", "L1"],  # LEFT-TO-RIGHT EMBEDDING
        ["B-3", "sensor", "Acme", "M-\u2066x\u2069", "L1"],  # LEFT-TO-RIGHT ISOLATE ... PDI
        ["B-4", "sensor", "Acme", "M-1", "L\u2067"],  # RIGHT-TO-LEFT ISOLATE
        ["B-5", "sensor", "Acme Corp" if not multiline else "Acme\nCorp", "M-1", "L1"],
    ]
    f = write_csv(
        tmp_path / "bidi.csv", ["serial", "device_type", "manufacturer", "model", "line"], rows
    )
    bidi = "contains a bidirectional control character"
    assert row_errors(f) == [
        RowError(str(f), 2, "device_type", bidi),
        RowError(str(f), 3, "manufacturer", bidi),
        RowError(str(f), 4, "model", bidi),
        RowError(str(f), 5, "line", bidi),
    ] + ([RowError(str(f), 6, "manufacturer", "contains a control character")] if multiline else [])


@READERS
def test_c1_controls_in_text_fields_are_rejected_as_control_characters(
    tmp_path: Path, multiline: bool
) -> None:
    rows = [
        ["C-1", "sensor", "Ac\x85me", "M-1"],  # NEXT LINE (at either end, strip() drops it)
        ["C-2", "sensor", "Acme", "\x9b31m"],  # CSI: a terminal escape on its own
        ["C-3", "sensor", "Acme", "M-\u202e\x9f"],  # both kinds: the control character wins
        ["C-4", "sensor", "Acme", "M-1" if not multiline else QUOTED_BREAK],
    ]
    f = write_csv(tmp_path / "c1.csv", ["serial", "device_type", "manufacturer", "model"], rows)
    control = "contains a control character"
    expected = [
        RowError(str(f), 2, "manufacturer", control),
        RowError(str(f), 3, "model", control),
        RowError(str(f), 4, "model", control),
    ]
    if multiline:
        expected.append(RowError(str(f), 5, "model", control))  # the quoted line break
    assert row_errors(f) == expected


def test_bidi_controls_in_component_fields_are_rejected(tmp_path: Path) -> None:
    header = ["serial", "component_type", "component_spec", "supplier", "lot"]
    rows = [
        ["D-1", "mcu", "STM32\u202e", "Acme", "L1"],
        ["D-2", "mcu", "STM32", "\u2068Acme", "L1"],
        ["D-3", "mcu", "STM32", "Acme", "L\u202b1"],
    ]
    f = write_csv(tmp_path / "components.csv", header, rows)
    bidi = "contains a bidirectional control character"
    assert row_errors(f, COMPONENTS) == [
        RowError(str(f), 2, "component_spec", bidi),
        RowError(str(f), 3, "supplier", bidi),
        RowError(str(f), 4, "lot", bidi),
    ]


# -- 3. the reject file: formula-safe, and it reads back as the rows it lists -----------------

FORMULA_ROWS = [  # serial, manufacturer, model, line: each row lacks its device type
    ["=SUM(1)", "Acme", "M-1", "L1"],
    ["+HYPER(2)", "Acme", "@X-3", "L1"],
    ["-5", "=1+2", "+M", "-L"],
    ["'=x", "@Acme", "'abc", "L1"],
    ["''y", "'+", "-", "'"],
]


def formula_manifest(tmp_path: Path) -> Path:
    header = ["serial", "device_type", "manufacturer", "model", "line"]
    rows = [[s, "", m, mo, ln] for s, m, mo, ln in FORMULA_ROWS]
    return write_csv(
        tmp_path / "formulas.csv", header, [*rows, ["GOOD-1", "sensor", "A", "M", "L"]]
    )


def fix_device_types(rejects: Path, fixed: Path) -> Path:
    """The operator's fix: fill in each row's device type, leave every other cell as it is."""
    with rejects.open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    column = table[0].index("device_type")
    for row in table[1:]:
        row[column] = "sensor"
    return write_csv(fixed, table[0], table[1:])


def test_reject_file_cells_that_start_like_a_formula_get_an_apostrophe(tmp_path: Path) -> None:
    m = read_manifest(formula_manifest(tmp_path), SERIALS)
    rejects = tmp_path / "rejects.csv"
    assert write_rejects(rejects, [m]) == 5
    with rejects.open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    cols = [table[0].index(c) for c in ("serial", "manufacturer", "model", "line")]
    assert [[row[i] for i in cols] for row in table[1:]] == [
        ["'=SUM(1)", "Acme", "M-1", "L1"],
        ["'+HYPER(2)", "Acme", "'@X-3", "L1"],
        ["'-5", "'=1+2", "'+M", "'-L"],
        ["''=x", "'@Acme", "''abc", "L1"],
        ["'''y", "''+", "'-", "''"],
    ]
    for row in table[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


def test_a_ragged_rows_reason_in_the_reject_file_does_not_start_like_a_formula(
    tmp_path: Path,
) -> None:
    f = write_bytes(tmp_path / "ragged.csv", "serial,device_type\nR-1,sensor,extra\nR-2,sensor\n")
    rejects = tmp_path / "rejects.csv"
    write_rejects(rejects, [read_manifest(f, SERIALS)])
    with rejects.open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[1][-1] == "'-: row has 3 fields, the header has 2"


def test_a_fixed_reject_file_reads_back_with_every_value_as_it_was(tmp_path: Path) -> None:
    m = read_manifest(formula_manifest(tmp_path), SERIALS)
    rejects = tmp_path / "rejects.csv"
    write_rejects(rejects, [m])
    fixed = fix_device_types(rejects, tmp_path / "fixed.csv")
    assert good_values(fixed, "serial", "device_type", "manufacturer", "model", "line") == [
        (s, "sensor", mf, mo, ln) for s, mf, mo, ln in FORMULA_ROWS
    ]


def test_a_fixed_reject_file_registers_the_original_values(
    tmp_path: Path, sqlite_url: str, keyring: Keyring
) -> None:
    registry = Registry(sqlite_url)
    try:
        rejects = tmp_path / "rejects.csv"
        first = register_batch(
            registry, keyring, formula_manifest(tmp_path), batch="night-1", reject_file=rejects
        )
        assert (first.registered, first.rejected) == (1, 5)
        fixed = fix_device_types(rejects, tmp_path / "fixed.csv")
        again = register_batch(registry, keyring, fixed, batch="night-1b")
        assert (again.registered, again.rejected) == (5, 0)
        columns = ("device_id", "manufacturer", "model", "production_line")
        with registry.engine.connect() as conn:
            query = select(*(devices.c[c] for c in columns)).order_by(devices.c.batch_seq)
            stored = conn.execute(query).all()
    finally:
        registry.close()
    expected = [(device_id(keyring.pepper, s), mf, mo, ln) for s, mf, mo, ln in FORMULA_ROWS]
    assert [tuple(r) for r in stored if r[0] != device_id(keyring.pepper, "GOOD-1")] == expected


def test_an_ordinary_manifest_keeps_its_leading_apostrophes(tmp_path: Path) -> None:
    header = ["serial", "device_type", "model"]
    f = write_csv(
        tmp_path / "plain.csv", header, [["'=x", "sensor", "'@M"], ["''y", "sensor", "'"]]
    )
    assert good_values(f, "serial", "model") == [("'=x", "'@M"), ("''y", "'")]


# -- 4. a manifest that cannot be read ----------------------------------------------------------


def test_a_missing_manifest_is_one_error_without_a_line_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BatchError) as caught:
        read_manifest("nope.csv", SERIALS)
    assert str(caught.value) == "nope.csv: cannot read file: No such file or directory"


def test_the_cli_reports_a_missing_manifest_in_one_line(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("register", "nope.csv", "--batch", "night-1")
    assert result.exit_code == 1
    assert result.stderr == "Error: nope.csv: cannot read file: No such file or directory\n"


# -- 5. job files -------------------------------------------------------------------------------


def job_error(tmp_path: Path, toml: str) -> str:
    path = tmp_path / "night.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(JobError) as caught:
        load_job(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


GOOD_JOB = 'batch = "line1"\nserials = "serials.csv"\n'


@pytest.mark.parametrize(
    ("toml", "reason"),
    [
        ('batch = 5\nserials = "s.csv"\n', "`batch` must be a string"),
        ('batch = "line1"\nserials = 5\n', "`serials` must be a string"),
        ('batch = ["a"]\nserials = "s.csv"\n', "`batch` must be a string"),
        ('serials = "s.csv"\n', "`batch` is required"),
        ('batch = ""\nserials = "s.csv"\n', "`batch` is required"),
    ],
    ids=["batch-int", "serials-int", "batch-list", "batch-absent", "batch-empty"],
)
def test_batch_and_serials_of_the_wrong_type_are_named_as_such(
    tmp_path: Path, toml: str, reason: str
) -> None:
    assert job_error(tmp_path, toml).startswith(f"{reason} (")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ttl_days = 100000000", f"`ttl_days` must be 1 to {MAX_TTL_DAYS}, not 100000000"),
        ("ttl_days = 0", f"`ttl_days` must be 1 to {MAX_TTL_DAYS}, not 0"),
        (f"ttl_days = {MAX_TTL_DAYS + 1}", f"`ttl_days` must be 1 to {MAX_TTL_DAYS}, not 3661"),
        ("ttl_days = true", "`ttl_days` must be a whole number"),
        ("ttl_days = 30.0", "`ttl_days` must be a whole number"),
        ("start_at = 0", "`start_at` must be at least 1, not 0"),
        ("start_at = -3", "`start_at` must be at least 1, not -3"),
        ("start_at = false", "`start_at` must be a whole number"),
        ("copies = 0", f"`copies` must be 1 to {MAX_COPIES}, not 0"),
        (f"copies = {MAX_COPIES + 1}", f"`copies` must be 1 to {MAX_COPIES}, not 1001"),
        ("copies = true", "`copies` must be a whole number"),
        ("offset_x_mm = true", "`offset_x_mm` must be a number"),
        ("offset_y_mm = inf", "`offset_y_mm` must be a finite number"),
        ("offset_x_mm = nan", "`offset_x_mm` must be a finite number"),
    ],
)
def test_job_numbers_are_whole_and_in_range(tmp_path: Path, line: str, reason: str) -> None:
    assert job_error(tmp_path, f"{GOOD_JOB}{line}\n") == reason


@pytest.mark.parametrize("key", ["template", "device_type", "station"])
def test_job_names_must_be_strings(tmp_path: Path, key: str) -> None:
    assert job_error(tmp_path, f"{GOOD_JOB}{key} = 5\n").startswith(f"`{key}` must be a string (")


def test_a_job_device_type_with_a_bidi_control_is_refused(tmp_path: Path) -> None:
    reason = job_error(tmp_path, f'{GOOD_JOB}device_type = "sen\\u202Esor"\n')
    assert reason == "`device_type` contains a bidirectional control character (U+202E)"


def test_a_job_at_every_bound_loads(tmp_path: Path) -> None:
    path = tmp_path / "night.toml"
    path.write_text(
        f"{GOOD_JOB}ttl_days = {MAX_TTL_DAYS}\nstart_at = 1\ncopies = {MAX_COPIES}\n"
        'template = "avery-l7160"\ndevice_type = "sensor"\nstation = "dock"\noffset_x_mm = -1.5\n',
        encoding="utf-8",
    )
    job = load_job(path)
    assert (job.ttl_days, job.start_at, job.copies, job.offset_x_mm) == (
        MAX_TTL_DAYS,
        1,
        MAX_COPIES,
        -1.5,
    )
    assert (job.template, job.device_type, job.station) == ("avery-l7160", "sensor", "dock")


# -- 6. temporary files of killed runs ----------------------------------------------------------


@pytest.fixture
def held_lock() -> Iterator[list[int]]:
    """Descriptors flocked here, as a live writer holds its temporary file; closed at the end."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def live_writer(path: Path, fds: list[int]) -> Path:
    """A temporary file another process is writing right now: it holds the file's lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    fds.append(fd)
    return path


def killed_writer(path: Path) -> Path:
    """A temporary file a killed run left: the name and some bytes, no lock held."""
    path.write_bytes(b"%PDF-1.7 half a file")
    return path


def test_publishing_a_batch_removes_its_stale_temporary_files_but_not_one_being_written(
    tmp_path: Path, held_lock: list[int]
) -> None:
    stale = killed_writer(tmp_path / ".line1.pdf.k1ll3d_x.tmp")
    live = live_writer(tmp_path / ".line1.pdf.writing1.tmp", held_lock)
    path, revision, _ = publish_revision(tmp_path, "line1", "pdf", lambda fh: fh.write(b"%PDF"))
    assert (path, revision) == (tmp_path / "line1.pdf", 1)
    assert not stale.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "line1.pdf"]


def test_only_the_temporary_files_of_the_same_batch_and_format_are_removed(
    tmp_path: Path,
) -> None:
    others = [
        killed_writer(tmp_path / ".line2.pdf.k1ll3d_x.tmp"),  # another batch
        killed_writer(tmp_path / ".line1.zpl.k1ll3d_x.tmp"),  # another format
        killed_writer(tmp_path / ".line1.pdf.json.k1ll3d_x.tmp"),  # the summary of line1.pdf
        killed_writer(tmp_path / ".line1.pdf.k1ll3d_x.part"),  # not a temporary name
    ]
    killed_writer(tmp_path / ".line1.pdf.k1ll3d_x.tmp")
    publish_revision(tmp_path, "line1", "pdf", lambda fh: fh.write(b"%PDF"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(p.name for p in others), "line1.pdf"]
    )


def test_an_atomic_write_removes_the_stale_temporary_files_of_its_target(
    tmp_path: Path, held_lock: list[int]
) -> None:
    stale = killed_writer(tmp_path / ".line1.pdf.k1ll3d_x.tmp")
    live = live_writer(tmp_path / ".line1.pdf.writing1.tmp", held_lock)
    with atomic_writer(tmp_path / "line1.pdf") as fh:
        fh.write(b"%PDF")
    assert (tmp_path / "line1.pdf").read_bytes() == b"%PDF"
    assert not stale.exists()
    assert live.exists()


@pytest.mark.parametrize("writer", ["publish_revision", "atomic_writer"])
def test_a_temporary_file_is_locked_while_it_is_written(tmp_path: Path, writer: str) -> None:
    seen: list[str] = []

    def write(fh) -> None:
        fh.write(b"%PDF")
        (tmp,) = tmp_path.glob(".line1.pdf.*.tmp")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.append(tmp.name)

    if writer == "publish_revision":
        publish_revision(tmp_path, "line1", "pdf", write)
    else:
        with atomic_writer(tmp_path / "line1.pdf") as fh:
            write(fh)
    assert len(seen) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line1.pdf"]
