"""The aggregates behind `provision stats`: counted by the database, grouped by one key.

Each function takes the registry's Store and a grouping (a column of the devices, the batch's
name, or the ISO week or month of registration) and returns plain rows; provision.stats turns
them into figures. Week and month are computed by the database, each in its own dialect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func, literal, select
from sqlalchemy.engine import Connection

from provision.registry.schema import action_log, batches, devices, pairing_events
from provision.registry.store import Store
from provision.states import DeviceStatus, SystemAction


@contextlib.contextmanager
def _reading(store: Store) -> Iterator[Connection]:
    """A connection for one aggregate; on PostgreSQL without JIT (compiling each of these
    queries, run once, costs more than it saves)."""
    with store.connect() as conn:
        if store.is_postgresql:
            conn.exec_driver_sql("SET LOCAL jit = off")
        yield conn


GROUPINGS = ("batch", "model", "type", "line", "manufacturer", "week", "month")
NONE_GROUP = "(none)"


def _key(store: Store, by: str) -> Any:
    """The SQL expression of a device's group."""
    c = devices.c
    if by == "batch":
        return batches.c.name
    if by in ("model", "type", "line", "manufacturer"):
        column = {"model": c.model, "type": c.device_type, "line": c.production_line}.get(
            by, c.manufacturer
        )
        return func.coalesce(column, literal(NONE_GROUP))
    if by not in ("week", "month"):
        raise ValueError(by)
    if store.is_postgresql:
        utc = func.timezone("UTC", c.created_at)
        return func.to_char(utc, 'IYYY-"W"IW' if by == "week" else "YYYY-MM")
    # SQLite keeps UTC text: the month is its first 7 characters; the ISO week is that of the
    # week's Thursday (ISO 8601: a week belongs to the year of its Thursday).
    if by == "month":
        return func.substr(c.created_at, 1, 7)  # "2026-11-30 ...": strftime costs 4 s at 1M
    thursday = func.date(c.created_at, "-3 days", "weekday 4")
    week = (cast(func.strftime("%j", thursday), Integer) - 1) // 7 + 1
    return func.strftime("%Y", thursday) + "-W" + func.printf("%02d", week)


def _devices_from(by: str) -> Any:
    return devices.join(batches, batches.c.id == devices.c.batch_id) if by == "batch" else devices


def _period(since: datetime | None, until: datetime | None) -> list[Any]:
    where = []
    if since is not None:
        where.append(devices.c.created_at >= since)
    if until is not None:
        where.append(devices.c.created_at < until)
    return where


def device_counts(
    store: Store, by: str, since: datetime | None, until: datetime | None
) -> list[tuple[str, int, int, int]]:
    """(group, registered, activated, revoked) of the devices registered in the period."""
    key = _key(store, by).label("g")
    q = (
        select(
            key,
            func.count(),
            func.count(devices.c.activated_at),
            func.sum(case((devices.c.status == DeviceStatus.REVOKED, 1), else_=0)),
        )
        .select_from(_devices_from(by))
        .where(*_period(since, until))
        .group_by(key)
    )
    with _reading(store) as conn:
        return [(str(g), int(n), int(a), int(r or 0)) for g, n, a, r in conn.execute(q)]


def activation_delays(
    store: Store, by: str, since: datetime | None, until: datetime | None
) -> Iterator[tuple[str, float]]:
    """(group, days from registration to activation) of each activated device, streamed; the
    database subtracts (parsing 700,000 pairs of timestamps in Python took 2 s)."""
    key = _key(store, by).label("g")
    c = devices.c
    if store.is_postgresql:
        days = func.extract("epoch", c.activated_at - c.created_at) / 86400.0
    else:
        days = func.julianday(c.activated_at) - func.julianday(c.created_at)
    q = (
        select(key, days)
        .select_from(_devices_from(by))
        .where(c.activated_at.is_not(None), *_period(since, until))
    )
    with _reading(store) as conn:
        result = conn.execution_options(stream_results=True, yield_per=20_000).execute(q)
        for g, d in result:
            yield str(g), float(d)


def scan_counts(
    store: Store, by: str, since: datetime | None, until: datetime | None
) -> list[tuple[str, str, str | None, int]]:
    """(group, result, reason, attempts) of the pairing events of the period's devices."""
    key = _key(store, by).label("g")
    joined = pairing_events.join(devices, devices.c.id == pairing_events.c.device_pk)
    if by == "batch":
        joined = joined.join(batches, batches.c.id == devices.c.batch_id)
    q = (
        select(key, pairing_events.c.result, pairing_events.c.reason, func.count())
        .select_from(joined)
        .where(*_period(since, until))
        .group_by(key, pairing_events.c.result, pairing_events.c.reason)
    )
    with _reading(store) as conn:
        return [(str(g), str(res), rea, int(n)) for g, res, rea, n in conn.execute(q)]


def unattached_scans(store: Store) -> list[tuple[str, str | None, int]]:
    """(result, reason, attempts) of the attempts that named no registered device."""
    q = (
        select(pairing_events.c.result, pairing_events.c.reason, func.count())
        .where(pairing_events.c.device_pk.is_(None))
        .group_by(pairing_events.c.result, pairing_events.c.reason)
    )
    with _reading(store) as conn:
        return [(str(res), rea, int(n)) for res, rea, n in conn.execute(q)]


def _recent_actions(start: datetime, end: datetime) -> Any:
    """The device actions (not provision's own) from START to END."""
    return and_(
        action_log.c.occurred_at >= start,
        action_log.c.occurred_at < end,
        action_log.c.action_type.not_in([a.value for a in SystemAction]),
    )


def _per_device(inner: Any, by: str) -> Any:
    """INNER (rows keyed by device_pk) joined to their devices, and batches for --by batch."""
    joined = inner.join(devices, devices.c.id == inner.c.device_pk)
    if by == "batch":
        joined = joined.join(batches, batches.c.id == devices.c.batch_id)
    return joined


def action_type_counts(
    store: Store,
    by: str,
    since: datetime | None,
    until: datetime | None,
    start: datetime,
    end: datetime,
) -> list[tuple[str, str, int]]:
    """(group, action type, actions) from START to END, for the period's devices.

    The actions are read from the time index alone (migration 0006). SQLite counts them per
    device and type before they meet the devices table (each meeting is a B-tree probe);
    PostgreSQL hashes the devices once and joins every action to them, which is three times
    faster there than grouping 2.5M actions by device first."""
    a = action_log.c
    key = _key(store, by).label("g")
    if store.is_postgresql:
        joined = action_log.join(devices, devices.c.id == a.device_pk)
        if by == "batch":
            joined = joined.join(batches, batches.c.id == devices.c.batch_id)
        q = (
            select(key, a.action_type, func.count())
            .select_from(joined)
            .where(_recent_actions(start, end), *_period(since, until))
            .group_by(key, a.action_type)
        )
    else:
        inner = (
            select(a.device_pk, a.action_type, func.count().label("n"))
            .where(_recent_actions(start, end))
            .group_by(a.device_pk, a.action_type)
            .subquery()
        )
        q = (
            select(key, inner.c.action_type, func.sum(inner.c.n))
            .select_from(_per_device(inner, by))
            .where(*_period(since, until))
            .group_by(key, inner.c.action_type)
        )
    with _reading(store) as conn:
        return [(str(g), str(t), int(n)) for g, t, n in conn.execute(q)]


def active_devices(
    store: Store,
    by: str,
    since: datetime | None,
    until: datetime | None,
    start: datetime,
    week: datetime,
    end: datetime,
) -> dict[str, tuple[int, int]]:
    """Group -> (devices with an action from START to END, those with one from WEEK on)."""
    a = action_log.c
    inner = (
        select(a.device_pk, func.max(a.occurred_at).label("newest"))
        .where(_recent_actions(start, end))
        .group_by(a.device_pk)
        .subquery()
    )
    key = _key(store, by).label("g")
    q = (
        select(key, func.count(), func.sum(case((inner.c.newest >= week, 1), else_=0)))
        .select_from(_per_device(inner, by))
        .where(*_period(since, until))
        .group_by(key)
    )
    with _reading(store) as conn:
        return {str(g): (int(n), int(w or 0)) for g, n, w in conn.execute(q)}


def status_counts(store: Store) -> dict[str, int]:
    """Devices by status (the index on status answers it)."""
    q = select(devices.c.status, func.count()).group_by(devices.c.status)
    with _reading(store) as conn:
        return {str(s): int(n) for s, n in conn.execute(q)}


def activations_per_day(store: Store, since: datetime) -> list[tuple[str, int]]:
    """(YYYY-MM-DD, activations) of each UTC day since SINCE that has any, oldest first."""
    c = devices.c
    if store.is_postgresql:
        day = func.to_char(func.timezone("UTC", c.activated_at), "YYYY-MM-DD")
    else:
        day = func.substr(c.activated_at, 1, 10)  # UTC text, as the week and month above
    key = day.label("d")
    q = select(key, func.count()).where(c.activated_at >= since).group_by(key).order_by(key)
    with _reading(store) as conn:
        return [(str(d), int(n)) for d, n in conn.execute(q)]
