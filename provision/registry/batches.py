"""Batches: a name, the digests of its manifests, its devices' signing keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select, true, update
from sqlalchemy.engine import Connection

from provision.registry.records import BatchRecord, NewBatch
from provision.registry.schema import batches, devices
from provision.registry.store import Store, aware, utcnow


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

    def names_by_id(self) -> dict[int, str]:
        with self._store.connect() as conn:
            return {int(i): str(n) for i, n in conn.execute(select(batches.c.id, batches.c.name))}

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

    def overview(self, name: str | None = None) -> list[BatchRecord]:
        """Every batch (or the one named), oldest first, with its device counts by status and
        the keys its payloads are signed with."""
        from provision.states import DeviceStatus

        q = select(batches).order_by(batches.c.id)
        if name is not None:
            q = q.where(batches.c.name == name)
        with self._store.connect() as conn:
            rows = conn.execute(q).all()
            ids = [r.id for r in rows]
            counts: dict[int, dict[str, int]] = {i: {} for i in ids}
            keys: dict[int, set[int]] = {i: set() for i in ids}
            if ids:
                only = devices.c.batch_id == ids[0] if name is not None else true()
                for bid, status, key_id, n in conn.execute(
                    select(devices.c.batch_id, devices.c.status, devices.c.key_id, func.count())
                    .where(only)
                    .group_by(devices.c.batch_id, devices.c.status, devices.c.key_id)
                ):
                    by_status = counts[bid]
                    by_status[status] = by_status.get(status, 0) + int(n)
                    keys[bid].add(int(key_id))
        out = []
        for r in rows:
            status_counts = {s.value: counts[r.id].get(s.value, 0) for s in DeviceStatus}
            out.append(
                BatchRecord(
                    id=r.id,
                    name=r.name,
                    created_at=aware(r.created_at),  # type: ignore[arg-type]
                    updated_at=aware(r.updated_at),  # type: ignore[arg-type]
                    manifest_sha256=r.manifest_sha256,
                    components_sha256=r.components_sha256,
                    rejected_rows=r.rejected_rows,
                    label_revision=r.label_revision,
                    labels_rendered_at=aware(r.labels_rendered_at),
                    devices=sum(status_counts.values()),
                    by_status=status_counts,
                    key_ids=tuple(sorted(keys[r.id])),
                )
            )
        return out

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
