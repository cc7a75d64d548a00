"""Batches: a name, the digests of its manifests, its devices' signing keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from provision.registry.records import NewBatch
from provision.registry.schema import batches, devices
from provision.registry.store import Store, utcnow


class Batches:
    """registry.batches: look batches up; a batch row is created with its first chunk."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def id_of(self, name: str) -> int | None:
        with self._store.connect() as conn:
            return conn.execute(select(batches.c.id).where(batches.c.name == name)).scalar()

    def name_of(self, batch_id: int) -> str | None:
        with self._store.connect() as conn:
            return conn.execute(select(batches.c.name).where(batches.c.id == batch_id)).scalar()

    def names(self) -> list[str]:
        with self._store.connect() as conn:
            return list(conn.execute(select(batches.c.name).order_by(batches.c.id)).scalars())

    def labels_published(self, batch_id: int, revision: int, at: datetime) -> None:
        """Record the label revision a render published."""
        with self._store.begin() as conn:
            conn.execute(
                update(batches)
                .where(batches.c.id == batch_id)
                .values(label_revision=revision, labels_rendered_at=at)
            )

    def key_ids(self, batch_id: int) -> set[int]:
        """The signing keys of the batch's payloads."""
        q = select(devices.c.key_id).where(devices.c.batch_id == batch_id).distinct()
        with self._store.connect() as conn:
            return {int(k) for k in conn.execute(q).scalars()}

    def pending_by_key(self, batch_id: int) -> dict[int, int]:
        """The batch's pending devices, counted by the key that signed their payloads."""
        from provision.states import DeviceStatus

        q = (
            select(devices.c.key_id, func.count())
            .where(devices.c.batch_id == batch_id, devices.c.status == DeviceStatus.PENDING)
            .group_by(devices.c.key_id)
        )
        with self._store.connect() as conn:
            return {int(k): int(n) for k, n in conn.execute(q)}

    def max_seq(self, batch_id: int) -> int:
        q = select(func.max(devices.c.batch_seq)).where(devices.c.batch_id == batch_id)
        with self._store.connect() as conn:
            return int(conn.execute(q).scalar() or 0)


def batch_in(conn: Connection, batch: int | NewBatch) -> int:
    """The batch's id, its row created (or its manifest digests updated) in this transaction.

    Creating it with the first chunk, not before, means a run that fails or registers nothing
    leaves no batch row behind.
    """
    if isinstance(batch, int):
        return batch
    now = utcnow()
    row = conn.execute(select(batches.c.id).where(batches.c.name == batch.name)).first()
    if row is not None:
        conn.execute(
            update(batches)
            .where(batches.c.id == row.id)
            .values(
                manifest_sha256=batch.manifest_sha256,
                components_sha256=batch.components_sha256,
                rejected_rows=batch.rejected_rows,
                updated_at=now,
            )
        )
        return int(row.id)
    result = conn.execute(
        insert(batches).values(
            name=batch.name,
            manifest_sha256=batch.manifest_sha256,
            components_sha256=batch.components_sha256,
            rejected_rows=batch.rejected_rows,
            created_at=now,
            updated_at=now,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])
