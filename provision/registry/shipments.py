"""Stored shipments: each import and its rows (serials as keyed hashes and ciphertext only).

An import is one transaction: its record, then its rows in chunks, each row inserted unless a
row with the same row hash is stored already (ON CONFLICT DO NOTHING), so importing a file
again stores nothing. What an import stored is counted by its id afterwards, the same way on
both databases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from provision.registry.records import _Record
from provision.registry.schema import shipment_imports, shipments
from provision.registry.store import Store, aware


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

    def store_import(
        self,
        source: str,
        file_name: str,
        file_sha256: str,
        rows: int,
        chunks: Iterable[Sequence[dict[str, Any]]],
        by: str,
        now: datetime,
    ) -> ImportRecord:
        """Record an import and store its new rows (each a dict of the shipments columns but
        import_id), all in one transaction."""
        with self._store.begin() as conn:
            import_id = conn.execute(
                insert(shipment_imports)
                .values(
                    source=source,
                    file_name=file_name,
                    file_sha256=file_sha256,
                    rows=rows,
                    stored=0,
                    imported_at=now,
                    imported_by=by,
                )
                .returning(shipment_imports.c.id)
            ).scalar_one()
            statement = self._store.insert_ignoring(shipments).on_conflict_do_nothing(
                index_elements=["row_hash"]
            )
            for chunk in chunks:
                if chunk:
                    conn.execute(statement, [r | {"import_id": import_id} for r in chunk])
            stored = conn.execute(
                select(func.count()).where(shipments.c.import_id == import_id)
            ).scalar_one()
            conn.execute(
                update(shipment_imports)
                .where(shipment_imports.c.id == import_id)
                .values(stored=stored)
            )
            row = conn.execute(
                select(shipment_imports).where(shipment_imports.c.id == import_id)
            ).one()
        return ImportRecord.from_row(row)

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

    def sources(self) -> dict[str, int]:
        """Shipments stored, by source."""
        q = select(shipments.c.source, func.count()).group_by(shipments.c.source)
        with self._store.connect() as conn:
            return {str(s): int(n) for s, n in conn.execute(q)}

    def newest(self) -> datetime | None:
        with self._store.connect() as conn:
            return aware(conn.execute(select(func.max(shipments.c.shipped_at))).scalar())
