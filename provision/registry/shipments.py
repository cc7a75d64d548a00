"""Stored shipments: each import and its rows (serials as keyed hashes and ciphertext only).

An import is one transaction: its record, then its rows in chunks as the file is read, each
row stored unless a row with the same row hash is stored already, so importing a file again
stores nothing. A small import goes through ON CONFLICT DO NOTHING; a big one is a bulk load
(see Shipments.importing).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex, DropIndex

from provision.registry.records import _Record
from provision.registry.schema import shipment_imports, shipments
from provision.registry.store import Store, aware, chunks

log = logging.getLogger("provision.registry")


@dataclass(frozen=True)
class ImportRecord(_Record):
    """One `shipments import`: the file, its source, its rows and how many were new."""

    id: int
    source: str
    file_name: str
    file_sha256: str
    rows: int
    stored: int
    imported_at: datetime
    imported_by: str

    _TIMES = ("imported_at",)


@dataclass(frozen=True)
class ShipmentRecord(_Record):
    """One stored shipment (the serial is the caller's to decrypt, with the keyring)."""

    id: int
    serial_hash: str
    serial_ct: bytes
    shipped_at: datetime
    order_id: str | None
    customer: str | None
    destination: str | None
    carrier: str | None
    source: str
    row_hash: str
    import_id: int
    line: int

    _TIMES = ("shipped_at",)


class Shipments:
    """registry.shipments: the stored shipment feed."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @contextlib.contextmanager
    def importing(
        self, source: str, file_name: str, by: str, now: datetime, expected: int
    ) -> Iterator[ShipmentImport]:
        """One import as one transaction: its record, then rows as they come (add), then
        finish. Leaving the block by an exception stores nothing.

        EXPECTED (rows, an estimate) picks the way: a load at least half the size of what is
        stored, and 100,000 rows or more, is a bulk load (the indexes dropped, the rows
        appended, the repeated ones found by sorting and removed, the indexes built again:
        10,000,000 rows in about a third of the time index upkeep takes); anything smaller
        goes row by row through INSERT ... ON CONFLICT DO NOTHING.
        """
        with self._store.begin() as conn:
            import_id = conn.execute(
                insert(shipment_imports)
                .values(
                    source=source,
                    file_name=file_name,
                    file_sha256="",
                    rows=0,
                    stored=0,
                    imported_at=now,
                    imported_by=by,
                )
                .returning(shipment_imports.c.id)
            ).scalar_one()
            if self._store.is_postgresql:
                # Imports one at a time, and a bulk load's index work out of readers' sight.
                conn.exec_driver_sql("LOCK TABLE shipments IN SHARE ROW EXCLUSIVE MODE")
            top = conn.execute(select(func.max(shipments.c.id))).scalar() or 0
            bulk = expected >= BULK_MIN_ROWS and expected * 2 >= top
            yield ShipmentImport(self._store, conn, import_id, source, top + 1, bulk, expected)

    def imports(self, source: str | None = None) -> list[ImportRecord]:
        q = select(shipment_imports).order_by(shipment_imports.c.id)
        if source is not None:
            q = q.where(shipment_imports.c.source == source)
        with self._store.connect() as conn:
            return [ImportRecord.from_row(r) for r in conn.execute(q)]

    def _filtered(self, q: Any, source: str | None, since: datetime | None) -> Any:
        if source is not None:
            q = q.where(shipments.c.source == source)
        if since is not None:
            q = q.where(shipments.c.shipped_at >= since)
        return q

    def count(self, source: str | None = None, since: datetime | None = None) -> int:
        q = self._filtered(select(func.count()).select_from(shipments), source, since)
        with self._store.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def listed(
        self, source: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[ShipmentRecord]:
        """The newest LIMIT shipments (by shipped_at) from SOURCE, shipped at or after SINCE."""
        q = self._filtered(select(shipments), source, since)
        q = q.order_by(shipments.c.shipped_at.desc(), shipments.c.id.desc()).limit(limit)
        with self._store.connect() as conn:
            return [ShipmentRecord.from_row(r) for r in conn.execute(q)]

    def of_serials(self, serial_hashes: Sequence[str]) -> dict[str, list[ShipmentRecord]]:
        """The stored shipments of each serial hash, in the order they shipped (exports)."""
        out: dict[str, list[ShipmentRecord]] = {}
        store = self._store
        with store.connect() as conn:
            for part in chunks(serial_hashes, store.lookup_chunk):
                q = (
                    select(shipments)
                    .where(store.among(shipments.c.serial_hash, part))
                    .order_by(shipments.c.shipped_at, shipments.c.id)
                )
                for r in conn.execute(q):
                    record = ShipmentRecord.from_row(r)
                    out.setdefault(record.serial_hash, []).append(record)
        return out

    def sources(self) -> dict[str, int]:
        """Shipments stored, by source."""
        q = select(shipments.c.source, func.count()).group_by(shipments.c.source)
        with self._store.connect() as conn:
            return {str(s): int(n) for s, n in conn.execute(q)}

    def newest(self) -> datetime | None:
        with self._store.connect() as conn:
            return aware(conn.execute(select(func.max(shipments.c.shipped_at))).scalar())


BULK_MIN_ROWS = 100_000
_COLUMNS = (
    "serial_hash", "serial_ct", "shipped_at", "order_id", "customer", "destination", "carrier",
    "source", "row_hash", "import_id", "line",
)  # fmt: skip


class ShipmentImport:
    """An import in progress (Shipments.importing): add chunks of rows, then finish."""

    def __init__(
        self,
        store: Store,
        conn: Connection,
        import_id: int,
        source: str,
        base: int,
        bulk: bool,
        expected: int,
    ) -> None:
        self._store, self._conn, self.expected = store, conn, expected
        self.import_id, self._source, self._base, self.bulk = import_id, source, base, bulk
        self._added = 0
        self._prefixes: list[bytes] = []
        self._pg = store.is_postgresql
        self.in_memory = store.in_memory
        if bulk:
            for index in shipments.indexes:
                conn.execute(DropIndex(index))
        elif self._pg:
            conn.exec_driver_sql(
                f"CREATE TEMP TABLE shipments_in ON COMMIT DROP AS "
                f"SELECT {', '.join(_COLUMNS)} FROM shipments WITH NO DATA"
            )

    def add(
        self,
        serial_hash: Sequence[str],
        serial_ct: Sequence[bytes],
        shipped_at: pd.Series,
        fields: Sequence[Sequence[str | None]],
        row_hash: Sequence[str],
        line: Sequence[int],
        prefixes: bytes,
    ) -> None:
        """Rows, column by column: SHIPPED_AT UTC timestamps, FIELDS order_id, customer,
        destination and carrier (None when empty), PREFIXES the first 16 bytes of each row
        hash, joined (how a bulk load finds repeated rows)."""
        n = len(serial_hash)
        if not n:
            return
        stamps = _stamp_texts(shipped_at, self._pg)
        source, import_id = [self._source] * n, [self.import_id] * n
        columns = [serial_hash, serial_ct, stamps, *fields, source, row_hash, import_id, line]
        names: tuple[str, ...] = _COLUMNS
        if self.bulk:
            first = self._base + self._added
            columns.insert(0, range(first, first + n))
            names = ("id", *_COLUMNS)
            self._prefixes.append(prefixes)
        cursor = self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if self._pg:
                table = "shipments" if self.bulk else "shipments_in"
                with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                    for r in zip(*columns, strict=True):
                        copy.write_row(r)
            else:
                # Many rows a statement: the sqlite3 module lets go of the interpreter lock
                # once a statement instead of once a row (this runs beside the file's reader),
                # and SQLite runs one statement instead of hundreds.
                limit = cursor.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
                per = max(1, min(_SQLITE_ROWS, limit // len(names)))
                for lo in range(0, n, per):
                    part = [c[lo : lo + per] for c in columns]
                    statement = _sqlite_insert(names, len(part[0]), not self.bulk)
                    cursor.execute(statement, list(chain.from_iterable(zip(*part, strict=True))))
        finally:
            cursor.close()
        self._added += n

    def _own_rows(self) -> tuple[Any, ...]:
        """This import's rows: above the highest id stored before it (the primary key's
        range: imports take turns, see Shipments.importing), and of this import."""
        return (shipments.c.id >= self._base, shipments.c.import_id == self.import_id)

    def restart(self) -> None:
        """Forget every row added so far (the file is read again from its start)."""
        if self.bulk:
            self._conn.execute(delete(shipments).where(shipments.c.id >= self._base))
        elif self._pg:
            self._conn.exec_driver_sql("TRUNCATE shipments_in")
        else:
            self._conn.execute(delete(shipments).where(*self._own_rows()))
        self._added, self._prefixes = 0, []

    def finish(self, rows: int, file_sha256: str) -> ImportRecord:
        """Store the import's record (ROWS read, the file's SHA-256) with what it stored."""
        conn = self._conn
        if self.bulk:
            t = time.perf_counter()
            repeated = self._repeated()
            stored = self._added - len(repeated)
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                if self._pg:
                    for part in chunks(repeated, 50_000):
                        cursor.execute("DELETE FROM shipments WHERE id = ANY(%s)", (part,))
                else:
                    gone = [(i,) for i in repeated]
                    cursor.executemany("DELETE FROM shipments WHERE id = ?", gone)
            finally:
                cursor.close()
            log.info(
                "shipments: %d rows added, %d repeated, removed in %.1f s",
                self._added,
                len(repeated),
                time.perf_counter() - t,
            )
            if self._store.is_sqlite:
                conn.exec_driver_sql("PRAGMA threads=4")  # index builds sort in parallel
            for index in shipments.indexes:
                t = time.perf_counter()
                conn.execute(CreateIndex(index))
                log.info("shipments: index %s built in %.1f s", index.name, time.perf_counter() - t)
            if self._pg:
                conn.exec_driver_sql(
                    "SELECT setval(pg_get_serial_sequence('shipments', 'id'), "
                    "(SELECT coalesce(max(id), 1) FROM shipments))"
                )
        else:
            if self._pg:
                names = ", ".join(_COLUMNS)
                conn.exec_driver_sql(
                    f"INSERT INTO shipments ({names}) SELECT {names} FROM shipments_in "
                    "ORDER BY line ON CONFLICT (row_hash) DO NOTHING"
                )
            stored = conn.execute(
                select(func.count()).select_from(shipments).where(*self._own_rows())
            ).scalar_one()
        conn.execute(
            update(shipment_imports)
            .where(shipment_imports.c.id == self.import_id)
            .values(stored=stored, rows=rows, file_sha256=file_sha256)
        )
        row = conn.execute(
            select(shipment_imports).where(shipment_imports.c.id == self.import_id)
        ).one()
        return ImportRecord.from_row(row)

    def _repeated(self) -> list[int]:
        """Ids of the rows added whose row hash is stored already, or was added before them.

        The first 16 bytes of the row hashes, stored and added, sorted once (numpy); a row
        whose 128 bits equal the row's before it in that order is a repeat.
        """
        new = np.frombuffer(b"".join(self._prefixes), dtype="<u8").reshape(-1, 2)
        old_ids: list[int] = []
        old = bytearray()
        q = select(shipments.c.id, shipments.c.row_hash).where(shipments.c.id < self._base)
        for rid, rh in self._conn.execute(q):
            old_ids.append(rid)
            old += bytes.fromhex(rh[:32])
        keys = np.concatenate([np.frombuffer(bytes(old), dtype="<u8").reshape(-1, 2), new])
        ids = np.concatenate(
            [
                np.asarray(old_ids, dtype=np.int64),
                np.arange(self._base, self._base + len(new), dtype=np.int64),
            ]
        )
        order = np.lexsort((ids, keys[:, 1], keys[:, 0]))
        k = keys[order]
        again = np.flatnonzero((k[1:, 0] == k[:-1, 0]) & (k[1:, 1] == k[:-1, 1])) + 1
        return sorted(int(i) for i in ids[order][again])


_SQLITE_ROWS = 500  # rows a statement, within the build's limit of variables a statement


@functools.lru_cache(maxsize=8)
def _sqlite_insert(names: Sequence[str], rows: int, skip_stored: bool) -> str:
    """INSERT INTO shipments (NAMES) VALUES (?, ...), ... for ROWS rows; SKIP_STORED: each
    row unless one with its row hash is stored."""
    one = "(" + ", ".join("?" * len(names)) + ")"
    statement = f"INSERT INTO shipments ({', '.join(names)}) VALUES " + ", ".join([one] * rows)
    return statement + (" ON CONFLICT (row_hash) DO NOTHING" if skip_stored else "")


def _stamp_texts(stamps: pd.Series, postgres: bool) -> list[str]:
    """UTC timestamps as the driver takes them: SQLAlchemy's SQLite text form
    (2026-01-05 08:00:00.000000), or ISO 8601 with its offset for COPY."""
    text = np.datetime_as_string(
        stamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]"), unit="us"
    )
    if postgres:
        return [t + "+00:00" for t in text]
    return [t[:10] + " " + t[11:] for t in text]
