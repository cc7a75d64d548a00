"""Devices and their components: bulk registration, look-ups, label rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from provision.registry.batches import batch_in
from provision.registry.records import (
    ComponentRecord,
    DeviceFilter,
    DeviceRecord,
    LabelRow,
    NewBatch,
)
from provision.registry.schema import components, devices
from provision.registry.store import Store, chunks
from provision.states import DeviceStatus


class Devices:
    """registry.devices: register devices in chunks, find them, list a batch's labels."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, device_id: str) -> DeviceRecord | None:
        """The device with this id (16 lower-case hex characters), or None."""
        with self._store.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
        return DeviceRecord.from_row(row) if row is not None else None

    def by_token_hash(self, token_hash: str) -> DeviceRecord | None:
        """The device whose activation token has this hash, or None."""
        with self._store.connect() as conn:
            row = conn.execute(
                select(devices).where(devices.c.activation_token_hash == token_hash)
            ).first()
        return DeviceRecord.from_row(row) if row is not None else None

    def by_serial_hash(self, serial_hash: str) -> DeviceRecord | None:
        with self._store.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.serial_hash == serial_hash)).first()
        return DeviceRecord.from_row(row) if row is not None else None

    def ids_starting(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to LIMIT device ids that start with PREFIX (lower-case hex), in id order.

        A range on the unique index (`>= prefix` and `< prefix` + 1), not a LIKE: that one
        neither PostgreSQL nor SQLite can run on the index without a special operator class.
        """
        with self._store.connect() as conn:
            return list(conn.execute(id_prefix_query(prefix, limit)).scalars())

    def pending_by_batch(self, key_id: int) -> dict[str, int]:
        """Pending devices whose payloads KEY_ID signed, counted by batch name."""
        from provision.registry.schema import batches
        from provision.states import DeviceStatus

        q = (
            select(batches.c.name, func.count())
            .select_from(devices.join(batches, batches.c.id == devices.c.batch_id))
            .where(devices.c.key_id == key_id, devices.c.status == DeviceStatus.PENDING)
            .group_by(batches.c.name)
            .order_by(batches.c.name)
        )
        with self._store.connect() as conn:
            return {str(name): int(n) for name, n in conn.execute(q)}

    def page(
        self, flt: DeviceFilter, batch_id: int | None, after: int | None, limit: int
    ) -> list[DeviceRecord]:
        """Up to LIMIT devices FLT selects (its batch as BATCH_ID), in id order, after the
        device row AFTER: keyset pagination, so page 1,000 costs what page 1 does. Each filter
        has an index ending in id (schema.py), so the order needs no sort."""
        q = page_query(flt, batch_id, after, limit)
        with self._store.connect() as conn:
            return [DeviceRecord.from_row(r) for r in conn.execute(q)]

    def by_user(self, user: str, limit: int = 100) -> list[DeviceRecord]:
        """Devices linked to USER, compared case-insensitively (the lower(user_id) index)."""
        with self._store.connect() as conn:
            return [DeviceRecord.from_row(r) for r in conn.execute(by_user_query(user, limit))]

    def by_component_serial(self, serial_hash: str, limit: int = 100) -> list[DeviceRecord]:
        """Devices carrying a component whose serial has this keyed hash."""
        q = by_component_serial_query(serial_hash, limit)
        with self._store.connect() as conn:
            return [DeviceRecord.from_row(r) for r in conn.execute(q)]

    def pk_of(self, device_id: str) -> int | None:
        with self._store.connect() as conn:
            return conn.execute(
                select(devices.c.id).where(devices.c.device_id == device_id)
            ).scalar()

    def existing_by_hash(self, hashes: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        """For the hashes already registered: serial hash -> (device pk, batch id, batch name)."""
        from provision.registry.schema import batches

        store = self._store
        found: dict[str, tuple[int, int, str]] = {}
        with store.connect() as conn:
            store.by_index(conn)
            for chunk in chunks(hashes, store.lookup_chunk):
                q = (
                    select(devices.c.serial_hash, devices.c.id, devices.c.batch_id, batches.c.name)
                    .join(batches, batches.c.id == devices.c.batch_id)
                    .where(store.among(devices.c.serial_hash, chunk))
                )
                for h, pk, bid, bname in conn.execute(q):
                    found[h] = (pk, bid, bname)
        return found

    def insert(
        self,
        rows: list[dict[str, Any]],
        component_rows: list[dict[str, Any]],
        batch: int | NewBatch,
    ) -> int:
        """Insert one chunk of devices and their components in a single transaction.

        BATCH is the batch's id, or a NewBatch whose row this transaction creates; every row
        gets its id. Component rows carry `serial_hash`; it is resolved to the device's primary
        key here. Returns the batch id. A row that another process stored meanwhile (or a
        device id two serials share) raises ConflictError and nothing of the chunk is written.
        """
        store = self._store
        with store.begin() as conn:
            store.bulk_pragmas(conn)
            batch_id = batch_in(conn, batch)
            if rows:
                for r in rows:
                    r["batch_id"] = batch_id
                store.insert_rows(conn, devices, rows)
            if component_rows:
                store.by_index(conn)
                owners = list({r["serial_hash"] for r in component_rows})
                pks = {
                    h: pk
                    for h, pk in conn.execute(
                        select(devices.c.serial_hash, devices.c.id).where(
                            store.among(devices.c.serial_hash, owners)
                        )
                    )
                }
                conn.execute(
                    insert(components),
                    [
                        {k: v for k, v in r.items() if k != "serial_hash"}
                        | {"device_pk": pks[r["serial_hash"]], "batch_id": batch_id}
                        for r in component_rows
                    ],
                )
        return batch_id

    def existing_component_hashes(self, hashes: Sequence[str]) -> set[str]:
        store = self._store
        found: set[str] = set()
        with store.connect() as conn:
            store.by_index(conn)
            for chunk in chunks(hashes, store.lookup_chunk):
                q = select(components.c.row_hash).where(store.among(components.c.row_hash, chunk))
                found.update(conn.execute(q).scalars())
        return found

    def count(self, batch_id: int | None = None) -> int:
        q = select(func.count()).select_from(devices)
        if batch_id is not None:
            q = q.where(devices.c.batch_id == batch_id)
        with self._store.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def without_gtin(self, batch_id: int) -> int:
        """How many of the batch's devices have no GTIN."""
        q = select(func.count()).where(devices.c.batch_id == batch_id, devices.c.gtin.is_(None))
        with self._store.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def count_components(self, batch_id: int | None = None) -> int:
        q = select(func.count()).select_from(components)
        if batch_id is not None:
            q = q.where(components.c.batch_id == batch_id)
        with self._store.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def components_of_many(self, device_pks: Sequence[int]) -> dict[int, list[ComponentRecord]]:
        """The components of each of DEVICE_PKS (in id order), for exports."""
        from provision.registry.events import among_ids

        out: dict[int, list[ComponentRecord]] = {}
        with self._store.connect() as conn:
            for part in chunks(device_pks, self._store.lookup_chunk):
                q = (
                    select(components)
                    .where(among_ids(self._store, components.c.device_pk, part))
                    .order_by(components.c.id)
                )
                for r in conn.execute(q):
                    record = ComponentRecord.from_row(r)
                    out.setdefault(record.device_pk, []).append(record)
        return out

    def components_of(self, device_pk: int) -> list[ComponentRecord]:
        q = select(components).where(components.c.device_pk == device_pk).order_by(components.c.id)
        with self._store.connect() as conn:
            return [ComponentRecord.from_row(r) for r in conn.execute(q)]

    def labels(self, batch_id: int, chunk: int = 5000) -> Iterator[list[LabelRow]]:
        """The batch's devices in label order, a chunk at a time (keyset pagination)."""
        cols = [devices.c[name] for name in LabelRow.columns()]
        last = (-1, -1)
        with self._store.connect() as conn:
            while True:
                q = (
                    select(*cols)
                    .where(devices.c.batch_id == batch_id)
                    .where(
                        (devices.c.batch_seq > last[0])
                        | ((devices.c.batch_seq == last[0]) & (devices.c.id > last[1]))
                    )
                    .order_by(devices.c.batch_seq, devices.c.id)
                    .limit(chunk)
                )
                rows = [LabelRow.from_row(r) for r in conn.execute(q)]
                if not rows:
                    return
                yield rows
                last = (rows[-1].batch_seq, rows[-1].id)


# The statements of the look-ups, apart so that tests can ask each database for its plan.


def page_query(flt: DeviceFilter, batch_id: int | None, after: int | None, limit: int) -> Any:
    by_time = flt.activated_since is not None or flt.activated_until is not None
    key: Any = devices.c.id
    if by_time and batch_id is None and flt.status is None and flt.user is None:
        # `id + 0`, which no index serves: SQLite would otherwise walk every device in id
        # order (or range) rather than sort the ones activated in the period, which the
        # activated_at index finds directly.
        key = devices.c.id + 0
    q = select(devices).where(*_conditions(flt, batch_id))
    if after is not None:
        q = q.where(key > after)
    return q.order_by(key).limit(limit)


def by_user_query(user: str, limit: int) -> Any:
    q = select(devices).where(func.lower(devices.c.user_id) == user.lower())
    return q.order_by(devices.c.id).limit(limit)


def by_component_serial_query(serial_hash: str, limit: int) -> Any:
    owners = (
        select(components.c.device_pk)
        .where(components.c.component_serial_hash == serial_hash)
        .limit(limit)
        .scalar_subquery()
    )
    return select(devices).where(devices.c.id.in_(owners)).order_by(devices.c.id)


def id_prefix_query(prefix: str, limit: int) -> Any:
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else ""
    q = select(devices.c.device_id).where(devices.c.device_id >= prefix)
    if upper:
        q = q.where(devices.c.device_id < upper)
    return q.order_by(devices.c.device_id).limit(limit)


def _conditions(flt: DeviceFilter, batch_id: int | None) -> list[Any]:
    c = devices.c
    where: list[Any] = []
    if batch_id is not None:
        where.append(c.batch_id == batch_id)
    if flt.status is not None:
        where.append(c.status == DeviceStatus(flt.status))
    if flt.device_type is not None:
        where.append(c.device_type == flt.device_type)
    if flt.model is not None:
        where.append(c.model == flt.model)
    if flt.line is not None:
        where.append(c.production_line == flt.line)
    if flt.user is not None:
        where.append(func.lower(c.user_id) == flt.user.lower())
    if flt.activated_since is not None:
        where.append(c.activated_at >= _moment(flt.activated_since))
    if flt.activated_until is not None:
        until = flt.activated_until
        end = _moment(until) + (timedelta(0) if isinstance(until, datetime) else timedelta(days=1))
        where.append(c.activated_at < end)
    return where


def _moment(value: date | datetime) -> datetime:
    """A datetime in UTC; a date is its first moment."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time.min, UTC)
