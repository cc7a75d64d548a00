"""Trace and recalls: which devices carry which components, and the recalls made from that.

A trace selects devices through their components (lot, supplier, type, the keyed hash of a
component's serial: every condition on the same component row). A recall stores such a query
and the devices it matched when it was made (recall_devices); with `hold`, its pending
devices cannot be activated until they are released or the recall is closed (the condition
itself is provision.registry.events.held, part of the activation's conditional UPDATE).
Every recall event is an action in each affected device's chain, appended in bulk in the
transaction that records it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, func, insert, literal, select, update

from provision.chain import Sealer
from provision.errors import ConflictError, RecallError
from provision.registry.events import append_actions, held
from provision.registry.records import NewAction, _Record
from provision.registry.schema import (
    action_log,
    batches,
    components,
    devices,
    recall_devices,
    recalls,
)
from provision.registry.store import Store, aware
from provision.states import DeviceStatus

_STREAM_ROWS = 2000  # rows fetched at a time while a trace or an export streams


@dataclass(frozen=True)
class ComponentFilter:
    """Which components a trace or recall selects; every given field must match the same
    component row. The serial only as its keyed hash (provision.serials.component_serial_hash)."""

    lot: str | None = None
    supplier: str | None = None
    component_type: str | None = None
    component_serial_hash: str | None = None

    def is_empty(self) -> bool:
        return not any((self.lot, self.supplier, self.component_type, self.component_serial_hash))

    def to_json(self) -> dict[str, str]:
        """The given fields, as a recall stores its query (query_json) and trace prints it."""
        values = {
            "lot": self.lot,
            "supplier": self.supplier,
            "component_type": self.component_type,
            "component_serial_hash": self.component_serial_hash,
        }
        return {k: v for k, v in values.items() if v is not None}

    def _matches(self) -> Any:
        """The condition on a device_components row."""
        conds = []
        for name in ("lot", "supplier", "component_type", "component_serial_hash"):
            value = getattr(self, name)
            if value is not None:
                conds.append(components.c[name] == value)
        if not conds:  # a trace of everything is not a trace; the library asks for a filter
            raise RecallError("give at least one component filter")
        return and_(*conds)

    def _devices(self, limit: int | None = None) -> Any:
        """The device pks that carry a matching component (a subquery); with LIMIT, the
        lowest LIMIT of them."""
        q = select(components.c.device_pk).where(self._matches())
        if limit is not None:
            # Ordered by `device_pk + 0`, not the column: ordered by the column, PostgreSQL
            # walks the device_pk index and filters every component (230 ms at 1M devices);
            # so it takes the lot's (or supplier's) index and sorts its few rows (7 ms).
            q = q.group_by(components.c.device_pk)
            q = q.order_by(components.c.device_pk + 0).limit(limit)
        return q


@dataclass(frozen=True)
class TraceRow:
    """One device a trace found: where it was made, where it is, its newest action's time."""

    device_id: str
    batch: str
    line: str | None
    model: str | None
    status: DeviceStatus
    activated_at: datetime | None
    owner: str | None
    last_action_at: datetime | None


@dataclass(frozen=True)
class RecallRecord(_Record):
    """A recall as stored: its query (JSON text), reason, hold, and who opened and closed it."""

    id: int
    name: str
    reason: str
    query_json: str
    hold: bool
    created_at: datetime
    created_by: str
    closed_at: datetime | None
    closed_by: str | None

    _TIMES = ("created_at", "closed_at")

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class RecallCounts:
    """A recall's devices: by status now, how many are released, how many its hold stops."""

    devices: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    released: int = 0
    held: int = 0


@dataclass(frozen=True)
class RecallMember:
    """A device's row in a recall: released or not, when and by whom."""

    released_at: datetime | None
    released_by: str | None


@dataclass(frozen=True)
class OwnerRow:
    """An activated device of a recall and its owner, for the notification export."""

    device_id: str
    user_id: str | None
    activated_at: datetime | None


class Recalls:
    """registry.recalls: trace devices by component, make, read, release and close recalls."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- trace -------------------------------------------------------------------------------

    def trace(self, wanted: ComponentFilter, limit: int | None = None) -> Iterator[TraceRow]:
        """The devices that carry a matching component, in registration order, streamed (a
        server-side cursor on PostgreSQL): memory stays flat however many there are. With
        LIMIT, only the first LIMIT of them (the console's page), found from the components'
        index first rather than by walking the devices in order."""
        newest = and_(
            # The device's newest action: the unique index (device_pk, seq) finds it.
            action_log.c.device_pk == devices.c.id,
            action_log.c.seq == devices.c.action_count,
        )
        q = (
            select(
                devices.c.device_id,
                batches.c.name,
                devices.c.production_line,
                devices.c.model,
                devices.c.status,
                devices.c.activated_at,
                devices.c.user_id,
                action_log.c.occurred_at,
            )
            .select_from(
                devices.join(batches, batches.c.id == devices.c.batch_id).outerjoin(
                    action_log, newest
                )
            )
            .where(devices.c.id.in_(wanted._devices(limit)))
            .order_by(devices.c.id)
        )
        with self._store.connect() as conn:
            if self._store.is_postgresql and limit is None:
                # A server-side cursor is planned for its first rows (cursor_tuple_fraction
                # 0.1): walking every device in id order and probing its components. A trace
                # reads every row, so plan for all of them: the lot's components first.
                conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
            rows = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS).execute(q)
            for did, batch, line, model, status, activated, user, last in rows:
                yield TraceRow(
                    did,
                    batch,
                    line,
                    model,
                    DeviceStatus(status),
                    aware(activated),
                    user,
                    aware(last),
                )

    def trace_summary(self, wanted: ComponentFilter) -> tuple[dict[str, int], dict[str, int]]:
        """The matching devices counted by status and by batch name."""
        # One pass over the matching devices, counted by batch and status together.
        q = (
            select(devices.c.batch_id, devices.c.status, func.count())
            .where(devices.c.id.in_(wanted._devices()))
            .group_by(devices.c.batch_id, devices.c.status)
        )
        statuses: dict[str, int] = {}
        by_batch: dict[int, int] = {}
        with self._store.connect() as conn:
            for batch_id, status, n in conn.execute(q):
                statuses[str(status)] = statuses.get(str(status), 0) + int(n)
                by_batch[batch_id] = by_batch.get(batch_id, 0) + int(n)
            names = dict(
                conn.execute(
                    select(batches.c.id, batches.c.name).where(batches.c.id.in_(list(by_batch)))
                ).all()
            )
        counted = {str(names[b]): n for b, n in by_batch.items()}
        return dict(sorted(statuses.items())), dict(sorted(counted.items()))

    # -- recalls: reads ----------------------------------------------------------------------

    def get(self, name: str) -> RecallRecord | None:
        with self._store.connect() as conn:
            row = conn.execute(select(recalls).where(recalls.c.name == name)).first()
        return RecallRecord.from_row(row) if row is not None else None

    def all(self) -> list[tuple[RecallRecord, RecallCounts]]:
        """Every recall, oldest first, with its counts."""
        with self._store.connect() as conn:
            found = [
                RecallRecord.from_row(r)
                for r in conn.execute(select(recalls).order_by(recalls.c.id))
            ]
            tallies = _tallies(conn, None)
        return [(r, _counts(r, tallies.get(r.id, {}))) for r in found]

    def counts(self, recall: RecallRecord) -> RecallCounts:
        with self._store.connect() as conn:
            tallies = _tallies(conn, recall.id)
        return _counts(recall, tallies.get(recall.id, {}))

    def member(self, recall_id: int, device_pk: int) -> RecallMember | None:
        """The device's row in the recall, or None when the recall did not match it."""
        q = select(recall_devices.c.released_at, recall_devices.c.released_by).where(
            recall_devices.c.recall_id == recall_id, recall_devices.c.device_pk == device_pk
        )
        with self._store.connect() as conn:
            row = conn.execute(q).first()
        return RecallMember(aware(row[0]), row[1]) if row is not None else None

    def of_device(self, device_pk: int) -> list[tuple[RecallRecord, RecallMember]]:
        """The recalls that matched the device, oldest first, with its row in each."""
        q = (
            select(recalls, recall_devices.c.released_at, recall_devices.c.released_by)
            .join(recall_devices, recall_devices.c.recall_id == recalls.c.id)
            .where(recall_devices.c.device_pk == device_pk)
            .order_by(recalls.c.id)
        )
        with self._store.connect() as conn:
            rows = conn.execute(q).all()
        return [
            (RecallRecord.from_row(r), RecallMember(aware(r.released_at), r.released_by))
            for r in rows
        ]

    def holding(self, device_pk: int) -> str | None:
        """The name of an open recall whose hold stops the device's activation, or None."""
        q = (
            select(recalls.c.name)
            .where(recalls.c.id.in_(held(device_pk)))
            .order_by(recalls.c.id)
            .limit(1)
        )
        with self._store.connect() as conn:
            return conn.execute(q).scalar()

    def owners(self, recall_id: int) -> Iterator[OwnerRow]:
        """The recall's activated devices not released from it, with their owners, streamed."""
        q = (
            select(devices.c.device_id, devices.c.user_id, devices.c.activated_at)
            .select_from(recall_devices.join(devices, devices.c.id == recall_devices.c.device_pk))
            .where(
                recall_devices.c.recall_id == recall_id,
                recall_devices.c.released_at.is_(None),
                devices.c.status == DeviceStatus.ACTIVATED,
            )
            .order_by(devices.c.id)
        )
        with self._store.connect() as conn:
            if self._store.is_postgresql:
                # A server-side cursor is planned for its first rows (cursor_tuple_fraction
                # 0.1): walking every device in id order and probing its components. A trace
                # reads every row, so plan for all of them: the lot's components first.
                conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
            rows = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS).execute(q)
            for did, user, activated in rows:
                yield OwnerRow(did, user, aware(activated))

    # -- recalls: writes ---------------------------------------------------------------------

    def create(
        self,
        name: str,
        reason: str,
        query_json: str,
        hold: bool,
        wanted: ComponentFilter,
        action: NewAction,
        sealer: Sealer,
    ) -> RecallRecord:
        """Record a recall and the devices WANTED matches now, ACTION in each one's chain.

        One transaction: the snapshot of devices, the recall rows and every device's new
        entry and seal commit together or not at all. A device activated before the snapshot
        stays activated (the recall still lists it, for its owner's notification); one whose
        activation comes after finds the hold in its conditional UPDATE.
        """
        store = self._store
        try:
            with store.begin() as conn:
                if conn.execute(select(recalls.c.id).where(recalls.c.name == name)).first():
                    raise RecallError(f"a recall named {name!r} exists already")
                pk = conn.execute(
                    insert(recalls).values(
                        name=name,
                        reason=reason,
                        query_json=query_json,
                        hold=hold,
                        created_at=action.occurred_at,
                        created_by=action.actor or "unknown",
                    )
                ).inserted_primary_key
                assert pk is not None
                recall_id = int(pk[0])
                conn.execute(
                    insert(recall_devices).from_select(
                        ["recall_id", "device_pk"],
                        select(literal(recall_id, Integer), components.c.device_pk)
                        .where(wanted._matches())
                        .distinct(),
                    )
                )
                # In id order: concurrent bulk appends lock device rows in the same order.
                pks = list(
                    conn.execute(
                        select(recall_devices.c.device_pk)
                        .where(recall_devices.c.recall_id == recall_id)
                        .order_by(recall_devices.c.device_pk)
                    ).scalars()
                )
                if not pks:
                    raise RecallError(
                        f"no device carries components matching {query_json}; "
                        "no recall recorded (check the query with `provision trace`)"
                    )
                append_actions(conn, store, [(p, action) for p in pks], sealer)
                row = conn.execute(select(recalls).where(recalls.c.id == recall_id)).one()
        except ConflictError:  # another process recorded the same name meanwhile
            raise RecallError(f"a recall named {name!r} exists already") from None
        return RecallRecord.from_row(row)

    def release(self, recall_id: int, device_pk: int, action: NewAction, sealer: Sealer) -> bool:
        """Release one device from an open recall (its hold no longer applies), ACTION in its
        chain; False when it was not in the recall, was released already, or the recall is
        closed."""
        store = self._store
        with store.begin() as conn:
            changed = conn.execute(
                update(recall_devices)
                .where(
                    recall_devices.c.recall_id == recall_id,
                    recall_devices.c.device_pk == device_pk,
                    recall_devices.c.released_at.is_(None),
                    recall_devices.c.recall_id.in_(
                        select(recalls.c.id).where(recalls.c.closed_at.is_(None))
                    ),
                )
                .values(released_at=action.occurred_at, released_by=action.actor)
            ).rowcount
            if changed:
                append_actions(conn, store, [(device_pk, action)], sealer)
        return bool(changed)

    def close(self, recall_id: int, action: NewAction, sealer: Sealer) -> int | None:
        """Close an open recall (its hold ends), ACTION in every one of its devices' chains;
        how many devices, or None when it was closed already."""
        store = self._store
        with store.begin() as conn:
            changed = conn.execute(
                update(recalls)
                .where(recalls.c.id == recall_id, recalls.c.closed_at.is_(None))
                .values(closed_at=action.occurred_at, closed_by=action.actor or "unknown")
            ).rowcount
            if not changed:
                return None
            pks = list(
                conn.execute(
                    select(recall_devices.c.device_pk)
                    .where(recall_devices.c.recall_id == recall_id)
                    .order_by(recall_devices.c.device_pk)
                ).scalars()
            )
            append_actions(conn, store, [(p, action) for p in pks], sealer)
        return len(pks)


# (recall id -> status -> (devices, released))
_Tallies = dict[int, dict[str, tuple[int, int]]]


def _tallies(conn: Any, recall_id: int | None) -> _Tallies:
    q = (
        select(
            recall_devices.c.recall_id,
            devices.c.status,
            func.count(),
            func.count(recall_devices.c.released_at),
        )
        .select_from(recall_devices.join(devices, devices.c.id == recall_devices.c.device_pk))
        .group_by(recall_devices.c.recall_id, devices.c.status)
    )
    if recall_id is not None:
        q = q.where(recall_devices.c.recall_id == recall_id)
    if conn.dialect.name == "postgresql":
        # PostgreSQL merges with the whole devices index (157 ms for a recall of 10,000 at
        # 1M devices); a look-up per member is what a recall's size calls for (17 ms).
        conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
    out: _Tallies = {}
    for rid, status, n, released in conn.execute(q):
        out.setdefault(int(rid), {})[str(status)] = (int(n), int(released))
    return out


def _counts(recall: RecallRecord, tally: dict[str, tuple[int, int]]) -> RecallCounts:
    pending, pending_released = tally.get(DeviceStatus.PENDING, (0, 0))
    return RecallCounts(
        devices=sum(n for n, _ in tally.values()),
        by_status={s: n for s, (n, _) in sorted(tally.items())},
        released=sum(r for _, r in tally.values()),
        held=pending - pending_released if recall.hold and recall.is_open else 0,
    )
