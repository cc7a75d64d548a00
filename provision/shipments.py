"""Shipments as a stored feed: `shipments import` (idempotent, all or nothing) and `list`.

The ERP sends shipments every day or month. Each file is read once, in one transaction:
each block of rows is validated (the manifest reader: `FILE:LINE: column: reason`) and its good
rows stored, with the serial as the keyed hash (to match devices) and AES-GCM ciphertext (for
the analyst's follow-up), never as plaintext; a bad row leaves the transaction at the end of
the file, so nothing of a bad file is stored. A row's keyed row hash covers the serial and every
other field, so a row sent twice, in one file or in two, is stored once, and importing the same
file again stores nothing (and its summary says so).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from provision.errors import UsageError, worker_deaths
from provision.keys import Keyring
from provision.manifests import LINE, SHIPMENTS, read_manifest, write_rejects
from provision.periods import moment
from provision.registry import Registry, utcnow
from provision.registry.shipments import ImportRecord, ShipmentImport, ShipmentRecord
from provision.serials import decrypt_serial, init_seal_worker, seal_in_worker, seal_shipments
from provision.text import plural

DEFAULT_SOURCE = "erp"
SOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
DELIMITERS = {",": ",", ";": ";", "tab": "\t", "\\t": "\t", "\t": "\t", "|": "|"}
_FIELDS = ("order_id", "customer", "destination", "carrier")


@dataclass(frozen=True)
class ImportSummary:
    """What an import did: rows read, stored (new), already stored, rejected."""

    file: str
    source: str
    import_id: int
    rows: int
    stored: int
    already_stored: int
    rejected: int
    reject_file: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "source": self.source,
            "import_id": self.import_id,
            "rows": self.rows,
            "stored": self.stored,
            "already_stored": self.already_stored,
            "rejected": self.rejected,
            "reject_file": self.reject_file,
        }

    def text(self) -> str:
        if self.rows and not self.stored:
            return (
                f"{self.file}: nothing new: {plural(self.rows, 'row')} stored already "
                f"(source {self.source})"
            )
        line = (
            f"{self.file}: {plural(self.stored, 'shipment')} stored, "
            f"{self.already_stored:,} already stored (source {self.source}, "
            f"import {self.import_id})"
        )
        if self.rejected:
            line += f"; {plural(self.rejected, 'row')} rejected to {self.reject_file}"
        return line


def parse_delimiter(value: str) -> str:
    """',' ';' '|' or tab (`tab` or `\\t`) as the one character it is."""
    found = DELIMITERS.get(value) or DELIMITERS.get(value.lower())
    if found is None:
        raise UsageError(f"--delimiter {value!r}: give ',', ';', '|' or tab")
    return found


def parse_map(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`COLUMN=HEADER` pairs: the file's header cell that holds each column."""
    out: dict[str, str] = {}
    for item in items:
        column, sep, header = item.partition("=")
        if not sep or not column.strip() or not header.strip():
            raise UsageError(f"--map {item!r}: give COLUMN=HEADER, e.g. serial='Serial No'")
        out[column.strip().lower()] = header.strip()
    return out


def import_shipments(
    registry: Registry,
    keyring: Keyring,
    path: str | Path,
    *,
    source: str = DEFAULT_SOURCE,
    column_map: Mapping[str, str] | None = None,
    delimiter: str = ",",
    reject_file: str | Path | None = None,
    by: str = "unknown",
    now: datetime | None = None,
) -> ImportSummary:
    """Validate a shipments file and store its rows (see the module docstring).

    Without REJECT_FILE any bad row means nothing is stored (the file is still checked to its
    end, and every error reported); with it, the bad rows go there and the good ones are
    stored.
    """
    if not SOURCE_RE.fullmatch(source):
        raise UsageError(
            f"--source {source!r}: use 1-64 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    # One pass over the file: each checked block is stored as it is read, in the import's
    # transaction; a bad row found later leaves that transaction, and nothing is stored.
    p = Path(path)
    with registry.shipments.importing(source, str(path), by, now or utcnow(), _expected(p)) as imp:
        with _Sealer(keyring, imp) as sealer:
            manifest = read_manifest(
                path,
                SHIPMENTS,
                delimiter=delimiter,
                column_map=dict(column_map or {}),
                on_block=sealer.feed,
                feed_after_error=reject_file is not None,
            )
        rejected = len(manifest.bad_lines())
        if manifest.fatal or (rejected and reject_file is None):
            manifest.raise_if_bad()  # leaves the transaction: nothing is stored
        if rejected and reject_file is not None:
            write_rejects(reject_file, [manifest])
        record = imp.finish(manifest.good, manifest.sha256)
    return ImportSummary(
        str(path),
        source,
        record.id,
        record.rows,
        record.stored,
        record.rows - record.stored,
        rejected,
        str(reject_file) if rejected and reject_file is not None else None,
    )


POOL_MIN_ROWS = 200_000  # fewer rows are sealed in this process: a pool takes 0.2 s to start
_BYTES_PER_ROW = 48  # a shipments row is rarely shorter: the row estimate errs on the high side


def _expected(path: Path) -> int:
    """About how many rows PATH holds (its size; 0 for a pipe)."""
    try:
        return path.stat().st_size // _BYTES_PER_ROW if path.is_file() else 0
    except OSError:
        return 0


class _Sealer:
    """Each checked block of the file, hashed and encrypted, into the import.

    A big file's blocks are sealed by worker processes (one per core), a few blocks ahead,
    while this process reads and checks the file; a thread of its own stores them, in file
    order, while the next blocks are read (the database works without the interpreter lock).
    """

    def __init__(self, keyring: Keyring, imp: ShipmentImport) -> None:
        self._keys = (keyring.pepper, keyring.data_key)
        self._imp = imp
        self._pool: Any = None
        self._pending: deque[tuple[_Rows, Future[Any]]] = deque()
        self._workers = max(1, min(4, os.cpu_count() or 1))
        self._writer: _Writer | None = None

    def __enter__(self) -> _Sealer:
        if self._imp.bulk or self._imp.expected >= POOL_MIN_ROWS:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["provision.serials"])
            # An executor, not multiprocessing.Pool: a worker killed meanwhile (the OOM killer,
            # kill -9) fails the import, where Pool would wait for its block forever.
            self._pool = ProcessPoolExecutor(
                self._workers, mp_context=ctx, initializer=init_seal_worker, initargs=self._keys
            )
            if not self._imp.in_memory:  # an in-memory SQLite connection is its thread's
                self._writer = _Writer(self._imp)
        return self

    def __exit__(self, *exc: object) -> None:
        failed = exc[0] is not None
        try:
            if not failed:
                failed = True  # until the last blocks are handed over
                self._drain(0)
                failed = False
        finally:
            try:
                if self._writer is not None:
                    # After a failure: what is queued is dropped, and the failure raised stays
                    # the one raised (not a storing error it caused).
                    self._writer.close(raise_error=not failed)
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True, cancel_futures=True)

    def feed(self, frame: pd.DataFrame | None) -> None:
        if frame is None:  # the file is read again from its start
            self._pending.clear()
            if self._writer is not None:
                self._writer.flush()
            self._imp.restart()
            return
        if not len(frame):
            return
        rows = _Rows(frame)
        if self._pool is None:
            self._store(rows, seal_shipments(*self._keys, rows.serials, rows.texts))
            return
        with _worker_deaths():
            job = self._pool.submit(seal_in_worker, (rows.serials, rows.texts))
        self._pending.append((rows, job))
        self._drain(2 * self._workers)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            rows, job = self._pending.popleft()
            with _worker_deaths():
                sealed = job.result()
            self._store(rows, sealed)

    def _store(self, rows: _Rows, sealed: tuple[list[str], list[str], list[bytes], bytes]) -> None:
        hashes, row_hashes, cts, prefixes = sealed
        add = (hashes, cts, rows.stamps, rows.fields, row_hashes, rows.lines, prefixes)
        if self._writer is not None:
            self._writer.put(add)
        else:
            self._imp.add(*add)


def _worker_deaths() -> contextlib.AbstractContextManager[None]:
    return worker_deaths("shipments import", "nothing of this file is stored")


class _Writer:
    """A thread that stores blocks into the import, in the order they are put; the first
    error it meets is raised in the putting thread (at the next put, flush or close)."""

    def __init__(self, imp: ShipmentImport) -> None:
        self._imp = imp
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="shipments-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None and not self._stop:
                    self._imp.add(*item)
            except BaseException as exc:
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: tuple[Any, ...]) -> None:
        self._raise()
        self._queue.put(item)

    def flush(self) -> None:
        """Wait until every block put is stored."""
        self._queue.join()
        self._raise()

    def close(self, raise_error: bool = True) -> None:
        """Store what is queued and end the thread; without RAISE_ERROR (the import failed
        already), drop what is queued instead."""
        self._stop = not raise_error
        self._queue.put(None)
        self._thread.join()
        if raise_error:
            self._raise()


class _Rows:
    """A block's rows as the import needs them: serials, timestamps, the other fields, and
    the text each row's hash covers besides its serial (as shipment_row_hash joins it)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.serials: list[str] = frame["serial"].tolist()
        self.stamps = pd.to_datetime(frame["shipped_at"], format="ISO8601", utc=True)
        self.lines: list[int] = frame[LINE].astype("int64").tolist()
        values = [frame[f].to_numpy(dtype=object) for f in _FIELDS]
        self.fields = [[v or None for v in column] for column in values]
        iso = _isoformat(self.stamps)
        sep = "\x1f"
        self.texts = [sep + sep.join(parts) for parts in zip(iso, *values, strict=True)]


def _isoformat(stamps: pd.Series) -> list[str]:
    """Timestamp.isoformat() of each UTC timestamp (2026-01-07T08:00:00+00:00; a fraction of a
    second only where there is one), vectorised for the usual whole seconds."""
    ns = stamps.dt.tz_localize(None).to_numpy("datetime64[ns]")
    whole = np.datetime_as_string(ns.astype("datetime64[s]"), unit="s")
    fraction = (ns - ns.astype("datetime64[s]")).astype(np.int64) != 0
    out = [t + "+00:00" for t in whole]
    for i in np.flatnonzero(fraction):
        out[i] = stamps.iat[i].isoformat()
    return out


@dataclass(frozen=True)
class ShipmentList:
    """Stored shipments matching a filter: how many, the newest of them, the imports."""

    count: int
    shipments: list[dict[str, Any]]
    imports: list[ImportRecord]
    by_source: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_source": self.by_source,
            "shipments": self.shipments,
            "imports": [
                {
                    "id": i.id,
                    "source": i.source,
                    "file": i.file_name,
                    "sha256": i.file_sha256,
                    "rows": i.rows,
                    "stored": i.stored,
                    "imported_at": i.imported_at.isoformat(),
                    "imported_by": i.imported_by,
                }
                for i in self.imports
            ],
        }


def list_shipments(
    registry: Registry,
    keyring: Keyring | None,
    *,
    source: str | None = None,
    since: date | datetime | None = None,
    limit: int = 100,
) -> ShipmentList:
    """The stored shipments from SOURCE shipped since SINCE: their count and the newest LIMIT
    (serials decrypted with the keyring, when given)."""
    start = moment(since)
    found = registry.shipments.listed(source, start, limit)
    return ShipmentList(
        registry.shipments.count(source, start),
        [_shipment_json(s, keyring) for s in found],
        registry.shipments.imports(source),
        registry.shipments.sources() if source is None else {},
    )


def _shipment_json(s: ShipmentRecord, keyring: Keyring | None) -> dict[str, Any]:
    serial = None
    if keyring is not None:
        serial = decrypt_serial(keyring.data_key, f"shipment:{s.row_hash}", s.serial_ct)
    return {
        "shipped_at": s.shipped_at.isoformat(),
        "serial": serial,
        "order_id": s.order_id,
        "customer": s.customer,
        "destination": s.destination,
        "carrier": s.carrier,
        "source": s.source,
        "import_id": s.import_id,
        "line": s.line,
    }


__all__ = [
    "ImportSummary",
    "ShipmentList",
    "import_shipments",
    "list_shipments",
    "parse_delimiter",
    "parse_map",
]
