"""CSV manifests -> validated pandas frames; every bad row reported with its line and column.

Reading uses pandas' C parser when every record is one physical line (the common case, and ten
times faster), else the csv module (it tracks physical line numbers across quoted line breaks,
which pandas' parser cannot report); the checks themselves are vectorised over the frame.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from provision.errors import ManifestError, RowError
from provision.files import atomic_writer
from provision.serials import GS1_AI82_RE, MAX_SERIAL_LENGTH, describe_char, serial_problem

MAX_TEXT_LENGTH = 128
LINE = "source_line"  # the physical line a row starts on (csv tracks quoted line breaks)
_UNDECODABLE = "[\udc80-\udcff]"
_CONTROL = "[\x00-\x1f\x7f]"
_END = "\x01"  # appended to every line by the fast reader: marks where a record really ends


@dataclass(frozen=True)
class ManifestSpec:
    """Which columns a kind of manifest has."""

    kind: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    serial_columns: tuple[str, ...] = ("serial",)
    unique_serial: bool = True  # shipments may repeat a serial: reconcile reports it
    dates: tuple[str, ...] = ()  # ISO 8601 date or date-time when given

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


SERIALS = ManifestSpec(
    "serials",
    required=("serial",),
    optional=("device_type", "manufacturer", "model", "manufactured_at", "line"),
    dates=("manufactured_at",),
)
COMPONENTS = ManifestSpec(
    "components",
    required=("serial", "component_type", "component_spec"),
    optional=("component_serial", "supplier", "lot"),
    unique_serial=False,  # a device has several components
)
SHIPMENTS = ManifestSpec(
    "shipments",
    required=("serial", "shipped_at"),
    optional=("order_id", "customer", "destination", "carrier"),
    unique_serial=False,
    dates=("shipped_at",),
)


@dataclass
class Manifest:
    """A parsed manifest: every spec column present (empty strings where absent) plus `_line`."""

    path: Path
    spec: ManifestSpec
    frame: pd.DataFrame
    header: list[str]
    sha256: str
    errors: list[RowError] = field(default_factory=list)
    fatal: bool = False  # a file-level problem: no row can go through

    @property
    def name(self) -> str:
        return str(self.path)

    def bad_lines(self) -> set[int]:
        return {e.line for e in self.errors}

    def add_errors(self, errors: Iterable[RowError]) -> None:
        self.errors.extend(errors)

    def good_rows(self) -> pd.DataFrame:
        bad = self.bad_lines()
        return self.frame[~self.frame[LINE].isin(bad)] if bad else self.frame

    def raise_if_bad(self) -> None:
        if self.errors:
            raise ManifestError(sorted(self.errors))


def read_manifest(
    path: str | Path, spec: ManifestSpec, *, device_type_default: str | None = None
) -> Manifest:
    """Read and validate one manifest; problems are collected in `errors`, never raised here."""
    p = Path(path)
    name = str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ManifestError([RowError(name, 0, "-", f"cannot read file: {exc.strerror}")]) from None
    sha = hashlib.sha256(data).hexdigest()
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in (*spec.columns, LINE)})

    def fatal(line: int, column: str, reason: str) -> Manifest:
        return Manifest(p, spec, empty, [], sha, [RowError(name, line, column, reason)], True)

    fast = _read_single_line_records(data)
    if fast is not None:
        head, head_line, raw, at = fast
        return _build(p, spec, head, head_line, raw, at, sha, [], device_type_default, False)
    # surrogateescape keeps undecodable bytes as lone surrogates, so each one can be located
    # by line and column after parsing instead of failing the whole file at the first one.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    header_line = 1
    prev = 0
    try:
        for row in reader:
            start = prev + 1
            prev = reader.line_num
            if not row or all(not v.strip() for v in row):
                continue
            if header is None:
                header, header_line = row, start
                continue
            rows.append(row)
            lines.append(start)
    except csv.Error as exc:
        return fatal(prev + 1, "-", f"CSV syntax error: {exc}")
    if header is None:  # no bytes, only blank lines, only a BOM or only separators
        return fatal(1, "-", "file is empty")
    return build_manifest(p, spec, header, header_line, rows, lines, sha, device_type_default)


def build_manifest(
    p: Path,
    spec: ManifestSpec,
    header: list[str],
    header_line: int,
    rows: list[list[str]],
    lines: list[int],
    sha: str,
    device_type_default: str | None = None,
) -> Manifest:
    """Validate parsed rows (also used for rows that come from the command line)."""
    name = str(p)
    width = len(header)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ragged = np.flatnonzero(lengths != width)
    errors = [
        RowError(name, lines[i], "-", f"row has {lengths[i]} fields, the header has {width}")
        for i in ragged
    ]
    if len(ragged):
        rows = [r[:width] + [""] * (width - len(r)) if len(r) != width else r for r in rows]
    raw = pd.DataFrame(rows, columns=pd.Index(range(width)), dtype=object)
    return _build(p, spec, header, header_line, raw, lines, sha, errors, device_type_default, True)


def _read_single_line_records(
    data: bytes,
) -> tuple[list[str], int, pd.DataFrame, np.ndarray] | None:
    """(header, its line, data rows, their lines) from pandas' C parser, or None.

    Only when each record is exactly one physical line, so that a record's line is its index:
    valid UTF-8, no NUL, no lone CR, no quoted line break. pandas pads a short row with empty
    fields, so an end marker is appended to every line first: a row whose marker is not in the
    last column has the wrong number of fields. Anything irregular (a short or long row, a blank
    line before the header, an empty file) returns None and the csv module path reports it.
    """
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    if not body.strip() or b"\x00" in body or _END.encode() in body:
        return None
    if b"\r" in body:
        if body.count(b"\r") != body.count(b"\r\n"):
            return None
        body = body.replace(b"\r\n", b"\n")
    if not body.endswith(b"\n"):
        body += b"\n"
    n_lines = body.count(b"\n")
    body = body.replace(b"\n", b"," + _END.encode() + b"\n")
    try:
        raw = pd.read_csv(
            io.BytesIO(body),
            header=None,
            dtype=object,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8",
            encoding_errors="strict",
        )
    except (ValueError, UnicodeError):  # pandas' ParserError and EmptyDataError are ValueErrors
        return None
    del body
    if len(raw) != n_lines:  # a quoted line break joined lines into one record
        return None
    width = raw.shape[1] - 1
    # Blank rows (only whitespace and separators) are skipped, as the csv path does; only rows
    # whose first field is empty or starts with whitespace can be blank.
    first = raw[0].to_numpy(dtype=object).astype("U1")
    maybe_blank = np.flatnonzero((first == "") | (first == _END) | np.char.isspace(first))
    blank = np.zeros(len(raw), dtype=bool)
    if len(maybe_blank):
        cells = raw.iloc[maybe_blank]
        blank[maybe_blank] = cells.apply(lambda c: c.str.strip().isin(["", _END])).all(axis=1)
    keep = np.flatnonzero(~blank)
    if not len(keep) or not (raw[width].to_numpy()[keep] == _END).all():
        return None
    header = [str(v) for v in raw.iloc[keep[0], :width]]
    rows = raw.iloc[keep[1:], :width].reset_index(drop=True)
    return header, int(keep[0]) + 1, rows, keep[1:] + 1


def _build(
    p: Path,
    spec: ManifestSpec,
    header: list[str],
    header_line: int,
    raw: pd.DataFrame,
    lines: Sequence[int] | np.ndarray,
    sha: str,
    row_errors: list[RowError],
    device_type_default: str | None,
    maybe_undecodable: bool,
) -> Manifest:
    """Check the header, then the rows of RAW (columns 0..n-1 in header order)."""
    name = str(p)
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in (*spec.columns, LINE)})
    names = [h.strip().lower() for h in header]
    errors: list[RowError] = []
    for i, h in enumerate(names):
        if h and names.index(h) != i:
            errors.append(RowError(name, header_line, h, "column appears twice in the header"))
    missing = [c for c in spec.required if c not in names]
    for c in missing:
        errors.append(RowError(name, header_line, c, "required column missing from the header"))
    if spec is SERIALS and "device_type" not in names and not device_type_default:
        errors.append(
            RowError(
                name,
                header_line,
                "device_type",
                "column missing and no --device-type default given",
            )
        )
    if errors:
        return Manifest(p, spec, empty, names, sha, errors, True)
    if not len(raw):
        errors = [RowError(name, header_line, "-", "no data rows (the file has only a header)")]
        return Manifest(p, spec, empty, names, sha, errors, True)

    frame = pd.DataFrame(index=raw.index)
    for c in spec.columns:
        frame[c] = raw[names.index(c)].str.strip() if c in names else ""
    frame[LINE] = lines
    manifest = Manifest(p, spec, frame, names, sha, row_errors)
    manifest.add_errors(_check_rows(manifest, raw, names, device_type_default, maybe_undecodable))
    return manifest


def _per_value(values: pd.Series, test: Callable[[pd.Series], pd.Series]) -> np.ndarray:
    """test(values) as booleans, evaluated once per distinct value (text columns repeat a lot)."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=False)
    return test(pd.Series(uniques, dtype=object)).to_numpy(dtype=bool)[codes]


def _check_rows(
    m: Manifest,
    raw: pd.DataFrame,
    names: list[str],
    device_type_default: str | None,
    maybe_undecodable: bool = True,
) -> list[RowError]:
    f, name = m.frame, m.name
    errors: list[RowError] = []

    def flag(mask: pd.Series, column: str, reason: str) -> None:
        errors.extend(RowError(name, int(line), column, reason) for line in f.loc[mask, LINE])

    # Undecodable bytes first: such a cell is reported for its encoding, not its content.
    undecodable = pd.Series(False, index=f.index)
    for i, col in enumerate(names if maybe_undecodable else []):
        hit = raw[i].str.contains(_UNDECODABLE, regex=True)
        if hit.any():
            for idx in f.index[hit]:
                bad = next(c for c in raw.at[idx, i] if "\udc80" <= c <= "\udcff")
                errors.append(
                    RowError(
                        name,
                        int(f.at[idx, LINE]),
                        col or f"column {i + 1}",
                        f"not valid UTF-8 ({describe_char(bad)})",
                    )
                )
            undecodable |= hit
            if col in m.spec.columns:
                # Reported above; from here on the frame must encode (serial hash, database,
                # reject file), so each undecodable byte becomes U+FFFD.
                f.loc[hit, col] = f.loc[hit, col].str.replace(_UNDECODABLE, "\ufffd", regex=True)

    serial = f["serial"]
    checked = ~undecodable
    ok = serial.str.fullmatch(GS1_AI82_RE.pattern) & (serial.str.len() <= MAX_SERIAL_LENGTH)
    for idx in f.index[checked & ~ok]:
        errors.append(
            RowError(name, int(f.at[idx, LINE]), "serial", str(serial_problem(serial.at[idx])))
        )

    if m.spec.unique_serial:
        dup = serial.duplicated(keep=False) & (serial != "") & checked
        if dup.any():
            groups = f.loc[dup].groupby("serial", sort=False)[LINE].apply(list)
            for group in groups:
                first = group[0]
                others = ", ".join(str(x) for x in group[1:])
                errors.append(
                    RowError(name, first, "serial", f"same serial again on line {others}")
                )
                errors.extend(
                    RowError(name, line, "serial", f"same serial as line {first}")
                    for line in group[1:]
                )
    if m.spec is SERIALS:
        if device_type_default:
            f.loc[f["device_type"] == "", "device_type"] = device_type_default
        flag(
            checked & (f["device_type"] == ""),
            "device_type",
            "device type missing and no --device-type default given",
        )
    for col in m.spec.required:
        if col != "serial":
            flag(checked & (f[col] == ""), col, "required value is empty")
    for col in m.spec.dates:
        stamp = f[col]
        given = checked & (stamp != "")
        if given.any():
            parsed = pd.to_datetime(stamp.where(given), format="ISO8601", errors="coerce", utc=True)
            flag(given & parsed.isna(), col, "not an ISO 8601 date or date-time")

    for col in m.spec.columns:
        if col == "serial" or col in m.spec.dates:
            continue
        values = f[col]
        flag(
            checked & _per_value(values, lambda u: u.str.len() > MAX_TEXT_LENGTH),
            col,
            f"longer than {MAX_TEXT_LENGTH} characters",
        )
        flag(
            checked & _per_value(values, lambda u: u.str.contains(_CONTROL, regex=True, na=False)),
            col,
            "contains a control character",
        )
    return errors


def write_rejects(path: str | Path, manifests: Sequence[Manifest]) -> int:
    """Write every bad row with its reasons to PATH (atomically); returns the number of rows.

    Serial and component manifests have different columns, so the reject file holds the file and
    line of each bad row (`source_file`, `source_line`), every manifest column, and `reason` (all
    reasons of that row, joined). Undecodable bytes appear as U+FFFD; the reason names each byte.
    """
    columns: list[str] = []
    for m in manifests:
        columns += [c for c in m.spec.columns if c not in columns]
    out_rows: list[list[str]] = []
    for m in manifests:
        reasons: dict[int, list[str]] = {}
        for e in sorted(m.errors):
            reasons.setdefault(e.line, []).append(f"{e.column}: {e.reason}")
        by_line = m.frame.set_index(LINE) if len(m.frame) else None
        for line, why in sorted(reasons.items()):
            values = by_line.loc[line] if by_line is not None and line in by_line.index else None
            out_rows.append(
                [m.name, str(line)]
                + [str(values[c]) if values is not None and c in values else "" for c in columns]
                + ["; ".join(why)]
            )
    with atomic_writer(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        w = csv.writer(text)
        # Not "file"/"line": `line` is a serial manifest column (the production line).
        w.writerow(["source_file", "source_line", *columns, "reason"])
        w.writerows(out_rows)
        text.flush()
        text.detach()
    return len(out_rows)
