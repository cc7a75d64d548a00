"""CSV manifests, validated in a streaming pass; every bad row reported with its line and column.

A manifest is read twice and never held whole. `read_manifest` validates it block by block
(about 4 MB at a time) and keeps only what the checks across rows need: two 64-bit fingerprints
and the line of every row (24 bytes a row, for duplicate serials and for matching components to
their devices), the errors, and a digest of each block. `Manifest.chunks()` then reads the file
again for registering and yields the good rows, normalised, a chunk at a time; a block whose
digest differs from the first pass stops it (the file changed meanwhile), so only validated rows
are ever registered. Memory therefore stays flat in the size of the manifest.

Blocks are parsed with pandas' C parser when every record is one physical line (the common case,
and ten times faster), else with the csv module (it tracks physical line numbers across quoted
line breaks, which pandas' parser cannot report); the checks themselves are vectorised.

Cost is linear in the input whatever it holds: a header may have at most MAX_COLUMNS columns and
a record at most MAX_RECORD_BYTES bytes, and either limit exceeded is a fatal error on its line,
found before the offending record is parsed whole. The fast reader only notices that a line may
be too long or a header too wide and leaves the file to the csv reader, which names the problem.

A reject file (see write_rejects) read back as a manifest loses the escaping that made it safe
to open in a spreadsheet, so that the rows it lists can be fixed and registered as they were.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from provision.errors import BatchError, ManifestError, RowError, UsageError
from provision.files import atomic_writer
from provision.gs1 import MAX_GS1_SERIAL, SERIAL_TOO_LONG_FOR_GTIN, gtin_problem
from provision.serials import GS1_AI82_RE, MAX_SERIAL_LENGTH, describe_char, serial_problem
from provision.text import BIDI_CONTROLS, CONTROL_CHARS, FORMULA_START

MAX_TEXT_LENGTH = 128
MAX_COLUMNS = 256
"""Columns a header may have. The widest manifest provision reads is a reject file (14) and
other columns are ignored, but thousands are not a manifest, and every column costs a pass."""
MAX_RECORD_BYTES = 1 << 20
"""Bytes one record may have (one line, or the lines a quoted line break joins), not counting its
final line break. A row needs a few hundred; no reader holds more than this of one record."""
LINE = "source_line"  # the physical line a row starts on (csv tracks quoted line breaks)
BLOCK_BYTES = 4 << 20  # the fast reader's block; the csv reader's is BLOCK_ROWS records
BLOCK_ROWS = 50_000
_UNDECODABLE = "[\udc80-\udcff]"
_CONTROL = f"[{CONTROL_CHARS}]"  # C0, DEL and C1 controls
_UNSAFE = f"[{CONTROL_CHARS}{BIDI_CONTROLS}]"  # and bidi embeddings, overrides and isolates
_ESCAPE_START = (*FORMULA_START, "'")  # a reject-file cell starting with one gets a "'" first
_ESCAPED = "'[" + re.escape("".join(_ESCAPE_START)) + "]"  # such a cell, read back
_REJECT_COLUMNS = ("source_file", LINE, "reason")  # the columns a reject file adds
_END = "\x01"  # appended to every line by the fast reader: marks where a record really ends
# Two independent SipHash keys: a row's fingerprint is 128 bits, so two different serials share
# one with a probability of about 2**-128 per pair (n**2 / 2**129 for n rows).
_KEYS = ("provision-serial", "manifest-rowkey2")

BlockSink = Callable[[pd.DataFrame | None], None]
"""Given each block's good rows as read_manifest checks them (None: forget them; see there)."""

RowCheck = Callable[[pd.DataFrame], Iterable[RowError]]
"""A check over the (not yet rejected) rows of a normalised block, run by Manifest.check."""


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
    optional=("device_type", "manufacturer", "model", "manufactured_at", "line", "gtin"),
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
class _Block:
    """Records as parsed: RAW has columns 0..width-1 in header order; ERRORS are ragged rows."""

    raw: pd.DataFrame
    lines: np.ndarray
    digest: bytes
    errors: list[RowError] = field(default_factory=list)
    maybe_undecodable: bool = True


class _RowKeys:
    """Each row's two fingerprints and its line, in row order: 20 bytes a row.

    Three arrays that double when full, so that the duplicate check and the component lookup
    work on whole arrays without concatenating a piece a block; the untouched tail of a
    doubled array takes no memory.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.k0 = np.empty(capacity, dtype=np.uint64)
        self.k1 = np.empty(capacity, dtype=np.uint64)
        self.lines = np.empty(capacity, dtype=np.int32)
        self.n = 0

    def append(self, keys: np.ndarray, lines: np.ndarray) -> None:
        end = self.n + len(lines)
        if end > len(self.lines):
            size = max(end, 2 * len(self.lines))
            for name in ("k0", "k1", "lines"):
                old = getattr(self, name)
                new = np.empty(size, dtype=old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        self.k0[self.n : end] = keys[:, 0]
        self.k1[self.n : end] = keys[:, 1]
        self.lines[self.n : end] = lines
        self.n = end

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.k0[: self.n], self.k1[: self.n], self.lines[: self.n]


class _Irregular(Exception):
    """The fast reader met something only the csv module reads right."""


class _Fatal(Exception):
    def __init__(self, error: RowError) -> None:
        self.error = error


@dataclass
class Manifest:
    """A validated manifest: its header, errors and row fingerprints; rows come from chunks()."""

    path: Path
    spec: ManifestSpec
    header: list[str]
    sha256: str
    errors: list[RowError] = field(default_factory=list)
    fatal: bool = False  # a file-level problem: no row can go through
    rows: int = 0
    device_type_default: str | None = None
    delimiter: str = ","
    column_map: dict[str, str] = field(default_factory=dict)  # header (lower-case) -> column
    _fast: bool = True  # which reader the file needs (the second pass uses the same one)
    _digests: list[bytes] = field(default_factory=list)
    _memory: _Block | None = None  # rows that came from the command line, not a file
    _source: Path | None = None  # the copy read again, when the file was a pipe
    _rowkeys: _RowKeys = field(default_factory=_RowKeys)  # all that is kept of each row
    _sorted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def bad_lines(self) -> set[int]:
        return {e.line for e in self.errors}

    def add_errors(self, errors: Iterable[RowError]) -> None:
        self.errors.extend(errors)

    def raise_if_bad(self) -> None:
        if self.errors:
            raise ManifestError(sorted(self.errors))

    @property
    def good(self) -> int:
        """How many rows chunks() yields."""
        return self.rows - len(self.bad_lines())

    def chunks(self, size: int = BLOCK_ROWS) -> Iterator[pd.DataFrame]:
        """The good rows, normalised (spec columns, stripped, plus LINE), at most SIZE at a time."""
        if size < 1:
            raise ValueError(f"chunk size must be at least 1, not {size}")
        pending: list[pd.DataFrame] = []
        held = 0
        for frame in self._good_frames():
            pending.append(frame)
            held += len(frame)
            while held >= size:
                whole = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
                yield whole.iloc[:size]
                rest = whole.iloc[size:]
                pending, held = [rest], len(rest)
        if held:
            yield pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]

    def good_rows(self) -> pd.DataFrame:
        """Every good row at once: for files small enough to analyse whole (shipments)."""
        parts = list(self._good_frames())
        if not parts:
            return _empty(self.spec)
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def check(self, test: RowCheck) -> None:
        """Run TEST over every row not yet rejected, block by block; add what it reports."""
        found: list[RowError] = []
        for frame in self._good_frames():
            found.extend(test(frame))
        self.add_errors(found)

    def owner_lines(self, serials: pd.Series) -> np.ndarray:
        """The line of this manifest's row with each of SERIALS, or -1 where there is none."""
        keys = _fingerprints(serials)
        out = np.full(len(keys), -1, dtype=np.int64)
        if not self._rowkeys.n or not len(keys):
            return out
        if self._sorted is None:
            k0, k1, lines = self._rowkeys.arrays()
            order = np.lexsort((k1, k0))
            self._sorted = (k0[order], k1[order], lines[order])
        k0, k1, lines = self._sorted
        lo = np.searchsorted(k0, keys[:, 0], side="left")
        hi = np.searchsorted(k0, keys[:, 0], side="right")
        one = np.flatnonzero(hi - lo == 1)  # the usual case: one row has the first fingerprint
        hit = one[k1[lo[one]] == keys[one, 1]]
        out[hit] = lines[lo[hit]]
        for i in np.flatnonzero(hi - lo > 1):  # repeated rows (rejected), or a 64-bit twin
            j = lo[i] + np.searchsorted(k1[lo[i] : hi[i]], keys[i, 1])
            if j < hi[i] and k1[j] == keys[i, 1]:
                out[i] = lines[j]
        return out

    def _good_frames(self) -> Iterator[pd.DataFrame]:
        """The rows not rejected (so far), normalised, a block at a time."""
        bad = self.bad_lines()
        for frame in self._frames():
            yield frame[~frame[LINE].isin(bad)] if bad else frame

    def _frames(self) -> Iterator[pd.DataFrame]:
        """Every row, normalised, a block at a time; each block is checked against pass one."""
        names = self.header
        if self.fatal:  # no row can go through
            return
        if self._memory is not None:
            yield self._normalise(self._memory, names)
            return
        try:
            fh = (self._source or self.path).open("rb")
        except OSError as exc:
            raise BatchError(f"{self.name}: cannot read file again: {exc.strerror}") from None
        with fh:
            blocks = (
                _fast_blocks(fh, None, self.delimiter)
                if self._fast
                else _csv_blocks(fh, self.name, self.delimiter)
            )
            n = 0
            try:
                with contextlib.closing(blocks):  # before the file, however this ends
                    for block, header, _ in blocks:
                        if (
                            n >= len(self._digests)
                            or block.digest != self._digests[n]
                            or (
                                header is not None
                                and _column_names(header, self.column_map) != names
                            )
                        ):
                            raise _Irregular
                        n += 1
                        yield self._normalise(block, names)
            except (_Irregular, _Fatal):
                n = -1
            if n != len(self._digests):
                raise BatchError(
                    f"{self.name} changed after it was validated; stopped before using any row "
                    "that was not validated: run again"
                )

    def _normalise(self, block: _Block, names: list[str]) -> pd.DataFrame:
        frame, _, _ = _normalise(block, names, self.spec, self.device_type_default, self.name)
        return frame


def read_manifest(
    path: str | Path,
    spec: ManifestSpec,
    *,
    device_type_default: str | None = None,
    delimiter: str = ",",
    column_map: dict[str, str] | None = None,
    on_block: BlockSink | None = None,
    feed_after_error: bool = True,
) -> Manifest:
    """Validate one manifest in a single streaming pass; problems are collected in `errors`.

    DELIMITER separates the fields (one character: ',' ';' or a tab); COLUMN_MAP names the
    header cell that holds a column, where the file's own names differ (`--map
    serial=Serial No`), compared like every header cell: without case and surrounding spaces.

    ON_BLOCK, for kinds without checks across rows (shipments), is given each block's good
    rows, normalised, as soon as the block is checked, so a caller stores them in the same
    pass instead of reading the file again with chunks(). It is given None when what it was
    given so far must be forgotten: the file needs the slower reader, which starts again.
    Without FEED_AFTER_ERROR it is given nothing more once a row is bad (a caller that stores
    nothing of a bad file stops storing; the rest of the file is still checked).
    """
    if on_block is not None and spec.unique_serial:
        raise ValueError(f"{spec.kind}: rows are checked across the file; use chunks()")
    if len(delimiter) != 1 or delimiter in '\r\n"':
        raise UsageError(f"--delimiter {delimiter!r}: give one character, such as ',' ';' or tab")
    known = set(spec.columns)
    mapping: dict[str, str] = {}
    for column, cell in (column_map or {}).items():
        if column not in known:
            raise UsageError(
                f"--map {column}=...: {spec.kind} have no column {column!r}; "
                f"they have {', '.join(spec.columns)}"
            )
        mapping[cell.strip().lower()] = column
    p = Path(path)
    name = str(p)
    spool: Path | None = None
    try:
        fh = p.open("rb")
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            # A pipe (`<(zcat serials.csv.gz)`) can be read only once: keep a copy to read again.
            fd, tmp = tempfile.mkstemp(prefix="provision-", suffix=".csv")
            spool = Path(tmp)
            with fh, open(fd, "wb") as copy:
                shutil.copyfileobj(fh, copy, BLOCK_BYTES)
            fh = spool.open("rb")
    except OSError as exc:
        if spool is not None:
            spool.unlink(missing_ok=True)
        # The file, not a line of it: one line `Error: FILE: cannot read file: REASON`.
        raise BatchError(f"{name}: cannot read file: {exc.strerror}") from None
    with fh:
        try:
            m = _validate(
                p, spec, fh, True, device_type_default, delimiter, mapping, on_block,
                feed_after_error,
            )  # fmt: skip
        except _Irregular:
            fh.seek(0)
            if on_block is not None:
                on_block(None)
            m = _validate(
                p, spec, fh, False, device_type_default, delimiter, mapping, on_block,
                feed_after_error,
            )  # fmt: skip
    if spool is not None:
        m._source = spool
        weakref.finalize(m, spool.unlink, missing_ok=True)
    return m


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
    """Validate rows that come from the command line rather than a file."""
    block = _rows_block(rows, lines, len(header), str(p), b"")
    m = Manifest(p, spec, [], sha, device_type_default=device_type_default, _memory=block)
    _check_blocks(m, iter([(block, header, header_line)]))
    return m


def _validate(
    p: Path,
    spec: ManifestSpec,
    fh: io.BufferedReader,
    fast: bool,
    device_type_default: str | None,
    delimiter: str = ",",
    column_map: dict[str, str] | None = None,
    on_block: BlockSink | None = None,
    feed_after_error: bool = True,
) -> Manifest:
    sha = hashlib.sha256()
    if not fast:
        sha = hashlib.file_digest(fh, "sha256")
        fh.seek(0)
    m = Manifest(
        p, spec, [], "", device_type_default=device_type_default, delimiter=delimiter,
        column_map=dict(column_map or {}), _fast=fast,
    )  # fmt: skip
    blocks = _fast_blocks(fh, sha, delimiter) if fast else _csv_blocks(fh, m.name, delimiter)
    try:
        with contextlib.closing(blocks):  # a fatal header leaves it unfinished
            _check_blocks(m, blocks, on_block, feed_after_error)
    except _Fatal as exc:
        m.errors, m.fatal = [exc.error], True
    if fast:  # the fast reader hashes as it reads; a fatal header stops it early
        while chunk := fh.read(BLOCK_BYTES):
            sha.update(chunk)
    m.sha256 = sha.hexdigest()
    return m


def _check_blocks(
    m: Manifest,
    blocks: Iterator[tuple[_Block, list[str] | None, int]],
    on_block: BlockSink | None = None,
    feed_after_error: bool = True,
) -> None:
    """The first pass: header checks, row checks per block, then the checks across rows."""
    name, spec = m.name, m.spec
    excluded: list[np.ndarray] = []  # row indexes the duplicate check leaves out (few)
    header_line = 1
    for block, header, at in blocks:
        if header is not None:
            if len(header) > MAX_COLUMNS:
                m.errors, m.fatal = [_too_wide(name, at, len(header))], True
                return
            m.header, header_line = _column_names(header, m.column_map), at
            if problems := _delimiter_problem(m, header, header_line) or _header_problems(
                m, header_line
            ):
                m.errors, m.fatal = problems, True
                return
        frame, checked, errors = _normalise(block, m.header, spec, m.device_type_default, name)
        found = [*block.errors, *errors, *_row_problems(frame, checked, spec, name)]
        m.errors.extend(found)
        if on_block is not None and (feed_after_error or not m.errors):
            bad = {e.line for e in found}
            on_block(frame[~frame[LINE].isin(bad)] if bad else frame)
        if spec.unique_serial:  # what the duplicate check and owner_lines look rows up by
            k = _fingerprints(frame["serial"])
            m._rowkeys.append(k, frame[LINE].to_numpy())
            excluded.append(np.flatnonzero(~checked | (frame["serial"] == "").to_numpy()) + m.rows)
        m._digests.append(block.digest)
        m.rows += len(frame)
    if not m.header:  # no bytes, only blank lines, only a BOM or only separators
        raise _Fatal(RowError(name, 1, "-", "file is empty"))
    if not m.rows:
        m.errors = [RowError(name, header_line, "-", "no data rows (the file has only a header)")]
        m.fatal = True
        return
    if spec.unique_serial:
        m.errors.extend(_duplicates(m, np.concatenate(excluded)))


def _column_names(header: list[str], column_map: dict[str, str] | None = None) -> list[str]:
    """Header cells as column names: case and surrounding spaces do not matter; a cell that
    --map names becomes its column."""
    names = [h.strip().lower() for h in header]
    if column_map:
        names = [column_map.get(n, n) for n in names]
    return names


_DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _delimiter_problem(m: Manifest, header: list[str], line: int) -> list[RowError]:
    """A header that is one cell holding another common delimiter: the file is separated by
    that one, so every row would fail; one error naming it instead."""
    if len(header) != 1:
        return []
    for found, name in _DELIMITER_NAMES.items():
        if found != m.delimiter and found in header[0]:
            given = "tab" if found == "\t" else repr(found)
            return [
                RowError(
                    m.name,
                    line,
                    "-",
                    f"the header is one field holding {given}: this file is separated by "
                    f"{name}, not {_DELIMITER_NAMES.get(m.delimiter, repr(m.delimiter))}; "
                    f"give --delimiter {given}",
                )
            ]
    return []


def _too_wide(name: str, line: int, columns: int) -> RowError:
    return RowError(name, line, "-", f"header has {columns} columns, more than {MAX_COLUMNS}")


def _header_problems(m: Manifest, header_line: int) -> list[RowError]:
    """Repeated and missing columns: one pass over the header."""
    name, spec, names = m.name, m.spec, m.header
    errors: list[RowError] = []
    seen: set[str] = set()
    for h in names:
        if h and h in seen:
            errors.append(RowError(name, header_line, h, "column appears twice in the header"))
        seen.add(h)
    for c in spec.required:
        if c not in seen:
            errors.append(RowError(name, header_line, c, "required column missing from the header"))
    if spec is SERIALS and "device_type" not in seen and not m.device_type_default:
        errors.append(
            RowError(
                name,
                header_line,
                "device_type",
                "column missing and no --device-type default given",
            )
        )
    return errors


def _duplicates(m: Manifest, excluded: np.ndarray) -> list[RowError]:
    """Rows whose serial appeared before: each group named by its first line.

    A sorted copy of the first fingerprints gives the few values that occur twice (8 bytes a
    row while it runs); only rows with one of them are compared on both fingerprints. EXCLUDED
    rows (empty or undecodable serials, already reported) take no part.
    """
    all0, all1, all_lines = m._rowkeys.arrays()
    k0 = np.sort(all0)
    twice = np.unique(k0[1:][k0[1:] == k0[:-1]])
    del k0
    if not len(twice):
        return []
    found: list[tuple[int, int, int, int]] = []  # (k0, k1, line, row index)
    for i in np.flatnonzero(np.isin(all0, twice)):
        found.append((int(all0[i]), int(all1[i]), int(all_lines[i]), int(i)))
    skip = set(excluded.tolist())
    groups: dict[tuple[int, int], list[int]] = {}
    for a, b, line, row in found:
        if row not in skip:
            groups.setdefault((a, b), []).append(line)
    errors: list[RowError] = []
    for group in groups.values():
        if len(group) < 2:
            continue
        first, *later = sorted(group)
        others = ", ".join(str(x) for x in later)
        errors.append(RowError(m.name, first, "serial", f"same serial again on line {others}"))
        errors.extend(RowError(m.name, x, "serial", f"same serial as line {first}") for x in later)
    return errors


def _fingerprints(values: pd.Series) -> np.ndarray:
    """Two 64-bit SipHash fingerprints of each value, as an (n, 2) uint64 array."""
    arr = values.to_numpy(dtype=object)
    return np.stack(
        [pd.util.hash_array(arr, hash_key=k, categorize=False) for k in _KEYS], axis=1
    ).astype(np.uint64, copy=False)


def _empty(spec: ManifestSpec) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in (*spec.columns, LINE)})


# -- readers: (block, header or None, header line) ------------------------------------------------


def _fast_blocks(
    fh: BinaryIO, sha: hashlib._Hash | None = None, delimiter: str = ","
) -> Generator[tuple[_Block, list[str] | None, int]]:
    """Blocks of whole lines through pandas' C parser; raises _Irregular where it cannot."""
    carry = b""
    first = True
    line0 = 0
    width = -1
    while True:
        data = fh.read(BLOCK_BYTES)
        if sha is not None:
            sha.update(data)
        eof = not data
        data = carry + data
        if eof:
            if not data:
                break
            body, carry = data if data.endswith(b"\n") else data + b"\n", b""
        else:
            cut = data.rfind(b"\n", len(carry)) + 1  # the carry holds no line break
            body, carry = data[:cut], data[cut:]
            if len(carry) > MAX_RECORD_BYTES:
                raise _Irregular  # a line too long, found before it is read whole
            if not cut:
                continue
        if _may_hold_a_long_line(body):
            raise _Irregular
        if first:
            body = body.removeprefix(codecs.BOM_UTF8)
        first = False
        # Until the header, pandas takes the width from the body's first line (a later, wider
        # line fails the parse): one that may be wider than MAX_COLUMNS (quoted commas aside) is
        # left to the csv reader, which counts a header's fields before reading on.
        if width < 0 and body.count(delimiter.encode(), 0, body.find(b"\n")) >= MAX_COLUMNS:
            raise _Irregular
        raw, keep = _parse_lines(body, None if width < 0 else width, delimiter)
        header: list[str] | None = None
        at = 0
        if width < 0 and len(keep):
            width = raw.shape[1]
            header, at = [str(v) for v in raw.iloc[0]], int(keep[0]) + 1 + line0
            raw, keep = raw.iloc[1:].reset_index(drop=True), keep[1:]
        elif len(keep) and raw.shape[1] != width:
            raise _Irregular
        if header is not None or len(keep):  # blank lines alone make no block
            digest = hashlib.blake2b(body, digest_size=16)
            # The first line's number too: blank lines added before a block shift its rows.
            digest.update(line0.to_bytes(8, "little"))
            block = _Block(raw, keep + 1 + line0, digest.digest(), maybe_undecodable=False)
            yield block, header, at
        line0 += body.count(b"\n")
        if eof:
            break
    if width < 0:
        raise _Irregular  # no record at all: the csv reader names the problem


def _may_hold_a_long_line(body: bytes) -> bool:
    """Whether a line of BODY may be longer than MAX_RECORD_BYTES; True whenever one is.

    A line that long holds a whole window of half as many bytes starting at a multiple of that
    half, so a line break in every such window rules it out: a few searches a block, each ending
    at the window's first line break.
    """
    half = MAX_RECORD_BYTES // 2
    return any(body.find(b"\n", i, i + half) < 0 for i in range(0, len(body), half))


def _parse_lines(
    body: bytes, width: int | None = None, delimiter: str = ","
) -> tuple[pd.DataFrame, np.ndarray]:
    """The non-blank records of BODY (whole lines) and their 0-based line indexes.

    WIDTH, once the header gave it, is every record's number of fields: a blank line that
    happens to open a block then does not set the width the parser expects.
    Only when each record is exactly one physical line, so that a record's line is its index:
    valid UTF-8, no NUL, no lone CR, no quoted line break. pandas pads a short row with empty
    fields, so an end marker is appended to every line first: a row whose marker is not in the
    last column has the wrong number of fields. Anything irregular raises _Irregular.
    """
    if not body.strip():
        return pd.DataFrame(), np.empty(0, dtype=np.int64)
    if b"\x00" in body or _END.encode() in body:
        raise _Irregular
    if b"\r" in body:
        if body.count(b"\r") != body.count(b"\r\n"):
            raise _Irregular
        body = body.replace(b"\r\n", b"\n")
    n_lines = body.count(b"\n")
    marked = body.replace(b"\n", delimiter.encode() + _END.encode() + b"\n")
    try:
        with warnings.catch_warnings():
            # With names given, a first row longer than them is cut and warned about.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(
                io.BytesIO(marked),
                header=None,
                names=None if width is None else range(width + 1),
                index_col=False,
                sep=delimiter,
                dtype=object,
                na_filter=False,
                skip_blank_lines=False,
                encoding="utf-8",
                encoding_errors="strict",
            )
    # pandas' ParserError and EmptyDataError are ValueErrors
    except (ValueError, UnicodeError, pd.errors.ParserWarning):
        raise _Irregular from None
    del marked
    if len(raw) != n_lines:  # a quoted line break joined lines into one record
        raise _Irregular
    width = raw.shape[1] - 1
    # Blank rows (only whitespace and separators) are skipped, as the csv reader does; only rows
    # whose first field is empty or starts with whitespace can be blank.
    first = raw[0].to_numpy(dtype=object).astype("U1")
    maybe_blank = np.flatnonzero((first == "") | (first == _END) | np.char.isspace(first))
    blank = np.zeros(len(raw), dtype=bool)
    if len(maybe_blank):
        cells = raw.iloc[maybe_blank]
        blank[maybe_blank] = cells.apply(lambda c: c.str.strip().isin(["", _END])).all(axis=1)
    keep = np.flatnonzero(~blank)
    if len(keep) and not (raw[width].to_numpy()[keep] == _END).all():
        raise _Irregular
    rows = raw.iloc[keep, :width].reset_index(drop=True)
    rows.columns = pd.RangeIndex(width)
    return rows, keep


def _csv_blocks(
    fh: BinaryIO, name: str, delimiter: str = ","
) -> Generator[tuple[_Block, list[str] | None, int]]:
    """Blocks of BLOCK_ROWS records through the csv module; a syntax error raises _Fatal.

    So does a record longer than MAX_RECORD_BYTES, as soon as that much of it is read, and a
    header wider than MAX_COLUMNS; a row wider than the header is cut to its width once counted.
    """
    # surrogateescape keeps undecodable bytes as lone surrogates, so each one can be located
    # by line and column after parsing instead of failing the whole file at the first one.
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    digest = hashlib.blake2b(digest_size=16)
    read = 0  # physical lines read
    size = 0  # bytes read of the record that starts on line prev + 1

    def lines() -> Iterator[str]:
        nonlocal read, size
        # A line is read at most one character past the limit: never held whole when too long.
        while line := text.readline(MAX_RECORD_BYTES + 1):
            raw = line.encode("utf-8", "surrogateescape")
            digest.update(raw)
            read += 1
            size += len(raw)
            if size > MAX_RECORD_BYTES and size - _line_break_bytes(raw) > MAX_RECORD_BYTES:
                raise _Fatal(_too_long(name, prev + 1, read))
            yield line

    reader = csv.reader(lines(), strict=False, delimiter=delimiter)
    header: list[str] | None = None
    width = 0
    given = False
    header_line = 1
    rows: list[list[str]] = []
    at: list[int] = []
    cut: dict[int, int] = {}  # index in ROWS -> fields, of the rows cut to the header's width
    prev = 0
    try:
        for row in reader:
            start = prev + 1
            prev, size = reader.line_num, 0
            if not row or all(not v.strip() for v in row):
                continue
            if header is None:
                if len(row) > MAX_COLUMNS:
                    raise _Fatal(_too_wide(name, start, len(row)))
                header, header_line, width = row, start, len(row)
                continue
            if len(row) > width:
                cut[len(rows)] = len(row)
                row = row[:width]
            rows.append(row)
            at.append(start)
            if len(rows) == BLOCK_ROWS:
                yield (
                    _rows_block(rows, at, width, name, digest.digest(), cut),
                    None if given else header,
                    header_line,
                )
                given, rows, at, cut = True, [], [], {}
                digest = hashlib.blake2b(digest_size=16)
    except csv.Error as exc:
        raise _Fatal(RowError(name, prev + 1, "-", f"CSV syntax error: {exc}")) from None
    finally:
        text.detach()
    if header is not None and (rows or not given):
        yield (
            _rows_block(rows, at, width, name, digest.digest(), cut),
            None if given else header,
            header_line,
        )


def _line_break_bytes(line: bytes) -> int:
    return 2 if line.endswith(b"\r\n") else int(line[-1:] in (b"\n", b"\r"))


def _too_long(name: str, first: int, last: int) -> RowError:
    what = "line" if first == last else f"record on lines {first}-{last}"
    return RowError(name, first, "-", f"{what} longer than the limit of {MAX_RECORD_BYTES} bytes")


def _rows_block(
    rows: list[list[str]],
    lines: list[int],
    width: int,
    name: str,
    digest: bytes,
    cut: dict[int, int] | None = None,
) -> _Block:
    """Parsed rows as a block; a row with the wrong number of fields is padded or cut, and named.

    CUT gives the real number of fields of the rows already cut to WIDTH by the reader.
    """
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    for i, n in (cut or {}).items():
        lengths[i] = n
    ragged = np.flatnonzero(lengths != width)
    errors = [
        RowError(name, lines[i], "-", f"row has {lengths[i]} fields, the header has {width}")
        for i in ragged
    ]
    if len(ragged):
        rows = [r[:width] + [""] * (width - len(r)) if len(r) != width else r for r in rows]
    raw = pd.DataFrame(rows, columns=pd.RangeIndex(width), dtype=object)
    return _Block(raw, np.asarray(lines, dtype=np.int64), digest, errors)


# -- normalising and checking a block -------------------------------------------------------------


def _normalise(
    block: _Block,
    names: list[str],
    spec: ManifestSpec,
    device_type_default: str | None,
    name: str,
) -> tuple[pd.DataFrame, np.ndarray, list[RowError]]:
    """(frame of spec columns + LINE, rows whose bytes decode, undecodable-byte errors)."""
    raw = block.raw
    frame = pd.DataFrame(index=raw.index)
    escaped = all(c in names for c in _REJECT_COLUMNS)  # a reject file, read back
    for c in spec.columns:
        if c in names:
            values = _stripped(raw[names.index(c)])
            frame[c] = _unescape(values) if escaped else values
        else:
            frame[c] = ""
    frame[LINE] = block.lines
    errors: list[RowError] = []
    undecodable = np.zeros(len(frame), dtype=bool)
    for i, col in enumerate(names if block.maybe_undecodable and len(raw) else []):
        hit = raw[i].str.contains(_UNDECODABLE, regex=True).to_numpy(dtype=bool)
        if not hit.any():
            continue
        # An undecodable cell is reported for its encoding, not its content.
        for idx in np.flatnonzero(hit):
            bad = next(c for c in raw.iat[idx, i] if "\udc80" <= c <= "\udcff")
            column = col or f"column {i + 1}"
            errors.append(
                RowError(
                    name, int(block.lines[idx]), column, f"not valid UTF-8 ({describe_char(bad)})"
                )
            )
        undecodable |= hit
        if col in spec.columns:
            # Reported above; from here on the frame must encode (serial hash, database,
            # reject file), so each undecodable byte becomes U+FFFD.
            frame.loc[hit, col] = frame.loc[hit, col].str.replace(
                _UNDECODABLE, "\ufffd", regex=True
            )
    if spec is SERIALS and device_type_default:
        frame.loc[frame["device_type"] == "", "device_type"] = device_type_default
    return frame, ~undecodable, errors


def _stripped(cells: pd.Series) -> pd.Series:
    """CELLS (text, never missing) without surrounding whitespace: str.strip mapped over the
    array, several times faster than pandas' .str.strip() (1,000,000 cells: 0.08 s, not 0.4 s)."""
    values = cells.to_numpy(dtype=object)
    return pd.Series(list(map(str.strip, values)), index=cells.index, dtype=object)


def _unescape(values: pd.Series) -> pd.Series:
    """A reject file's cells as they were before write_rejects escaped them."""
    hit = values.str.match(_ESCAPED).to_numpy(dtype=bool)
    return values.where(~hit, values.str.slice(1)) if hit.any() else values


def _text_problems(values: pd.Series) -> Iterator[tuple[np.ndarray, str]]:
    """(rows, reason) of each problem of a text column, evaluated once per distinct value."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=False)
    u = pd.Series(uniques, dtype=object)
    long = (u.str.len() > MAX_TEXT_LENGTH).to_numpy(dtype=bool)
    yield long[codes], f"longer than {MAX_TEXT_LENGTH} characters"
    unsafe = u.str.contains(_UNSAFE, regex=True, na=False).to_numpy(dtype=bool)
    if not unsafe.any():
        return
    control = unsafe.copy()
    control[unsafe] = u[unsafe].str.contains(_CONTROL, regex=True, na=False).to_numpy(dtype=bool)
    yield control[codes], "contains a control character"
    yield (unsafe & ~control)[codes], "contains a bidirectional control character"


def _row_problems(
    f: pd.DataFrame, checked: np.ndarray, spec: ManifestSpec, name: str
) -> list[RowError]:
    """Every check of a row on its own (duplicates across rows are _duplicates')."""
    errors: list[RowError] = []
    lines = f[LINE].to_numpy()

    def flag(mask: np.ndarray, column: str, reason: str) -> None:
        errors.extend(RowError(name, int(line), column, reason) for line in lines[mask])

    serial = f["serial"]
    whole = GS1_AI82_RE.fullmatch
    ok = np.fromiter(
        (len(v) <= MAX_SERIAL_LENGTH and whole(v) is not None for v in serial.to_numpy()),
        dtype=bool,
        count=len(serial),
    )
    for i in np.flatnonzero(checked & ~ok):
        errors.append(RowError(name, int(lines[i]), "serial", str(serial_problem(serial.iat[i]))))
    if spec is SERIALS:
        flag(
            checked & (f["device_type"] == "").to_numpy(),
            "device_type",
            "device type missing and no --device-type default given",
        )
        gtins = f["gtin"].to_numpy(dtype=object)
        for i in np.flatnonzero(checked & (gtins != "")):
            if problem := gtin_problem(gtins[i]):
                errors.append(RowError(name, int(lines[i]), "gtin", problem))
            elif len(serial.iat[i]) > MAX_GS1_SERIAL:
                errors.append(RowError(name, int(lines[i]), "serial", SERIAL_TOO_LONG_FOR_GTIN))
    for col in spec.required:
        if col != "serial":
            flag(checked & (f[col] == "").to_numpy(), col, "required value is empty")
    for col in spec.dates:
        stamp = f[col]
        given = checked & (stamp != "").to_numpy()
        if given.any():
            parsed = pd.to_datetime(stamp.where(given), format="ISO8601", errors="coerce", utc=True)
            flag(given & parsed.isna().to_numpy(), col, "not an ISO 8601 date or date-time")
    for col in spec.columns:
        if col == "serial" or col in spec.dates:
            continue
        for rows, reason in _text_problems(f[col]):
            flag(checked & rows, col, reason)
    return errors


def _escape(cell: str) -> str:
    """CELL safe in a spreadsheet and unambiguous to read back (see write_rejects)."""
    return "'" + cell if cell.startswith(_ESCAPE_START) else cell


def write_rejects(path: str | Path, manifests: Sequence[Manifest]) -> int:
    """Write every bad row with its reasons to PATH (atomically); returns the number of rows.

    Serial and component manifests have different columns, so the reject file holds the file and
    line of each bad row (`source_file`, `source_line`), every manifest column, and `reason` (all
    reasons of that row, joined). Undecodable bytes appear as U+FFFD; the reason names each byte.
    The rows' values are read from the files again, block by block.

    The file is safe to open in a spreadsheet, and reads back as a manifest once its rows are
    fixed, with every value as it was. Every cell that starts with a formula character (= + - @,
    tab or CR: OWASP CSV injection) or with an apostrophe is written with one more apostrophe in
    front: `=SUM(1)` as `'=SUM(1)`, `-5` as `'-5`, `'=x` as `''=x`, `'abc` as `''abc`. So in a
    reject file a cell starts with an apostrophe only when escaped, and one apostrophe followed
    by one of those characters is removed from each cell when it is read back. A manifest is read
    as a reject file when it has the three columns this function adds (`source_file`,
    `source_line` and `reason`, which are otherwise ignored); any other manifest keeps its cells
    exactly, since a serial may start with `'`, `=`, `+` or `-` (all in GS1 AI 82). Someone
    fixing a reject file by hand escapes a new value that starts with one of them the same way.
    """
    columns: list[str] = []
    for m in manifests:
        columns += [c for c in m.spec.columns if c not in columns]
    out_rows: list[list[str]] = []
    for m in manifests:
        reasons: dict[int, list[str]] = {}
        for e in sorted(m.errors):
            reasons.setdefault(e.line, []).append(f"{e.column}: {e.reason}")
        values: dict[int, dict[str, str]] = {}
        if reasons and not m.fatal:
            for frame in m._frames():
                hit = frame[frame[LINE].isin(reasons.keys())]
                for rec in hit.to_dict("records"):
                    values[int(rec[LINE])] = rec
        for line, why in sorted(reasons.items()):
            row = values.get(line, {})
            cells = [m.name, str(line)] + [str(row.get(c, "")) for c in columns] + ["; ".join(why)]
            out_rows.append([_escape(c) for c in cells])
    with atomic_writer(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        w = csv.writer(text)
        # Not "file"/"line": `line` is a serial manifest column (the production line).
        w.writerow(["source_file", "source_line", *columns, "reason"])
        w.writerows(out_rows)
        text.flush()
        text.detach()
    return len(out_rows)
