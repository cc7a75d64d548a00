"""A device's life after registration: activation attempts (pairing events), the action log,
revocation. Every change writes its chain entry and the device's new seal in one transaction;
append_actions does that for many devices at once (recalls, resign)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection

from provision.chain import (
    SEALED_COLUMNS,
    UNATTACHED,
    Sealer,
    canonical_json,
    genesis_hash,
    pairing_genesis,
)
from provision.errors import DeviceError
from provision.registry.records import ActionEntry, Attempt, DeviceRecord, NewAction, PairingEvent
from provision.registry.schema import (
    action_log,
    audit_chains,
    devices,
    pairing_events,
    recall_devices,
    recalls,
)
from provision.registry.store import Store, aware
from provision.states import DeviceStatus, PairingResult, Reason, SystemAction

# Devices per statement of the bulk paths on PostgreSQL (one array parameter); SQLite binds
# each id, so there a chunk is the store's lookup chunk.
_PG_CHUNK = 5000

# Why an activation that lost the conditional UPDATE lost, by the status that beat it; a
# device still pending lost to a recall's hold.
_ACTIVATE_TRIES = 5
_LOST_REASON = {
    DeviceStatus.ACTIVATED: Reason.ALREADY_ACTIVATED,
    DeviceStatus.REVOKED: Reason.REVOKED_DEVICE,
    DeviceStatus.PENDING: Reason.RECALLED,
}
_COUNT = SEALED_COLUMNS.index("action_count")
_HEAD = SEALED_COLUMNS.index("action_head")


class Events:
    """registry.events: record attempts, activate once, revoke, append and read the logs."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @cached_property
    def _hot(self) -> _HotPath | None:
        """PostgreSQL through psycopg: the activation's two statements on the driver itself,
        compiled at the first activation (not by every command that opens the registry)."""
        store = self._store
        if store.is_postgresql and store.engine.dialect.driver == "psycopg":
            return _HotPath(store.engine.dialect)
        return None

    # -- writes ------------------------------------------------------------------------------

    def record_rejected(
        self, device_pk: int | None, attempt: Attempt, reason: Reason, sealer: Sealer
    ) -> None:
        """Store a rejected attempt: on its device's pairing chain, else on the unattached one."""
        with self._store.begin() as conn:
            device_id = None
            if device_pk is not None:
                device_id = conn.execute(
                    select(devices.c.device_id).where(devices.c.id == device_pk)
                ).scalar_one()
            _append_pairing(
                conn, device_pk, device_id, attempt, PairingResult.REJECTED, reason, sealer
            )
            if device_pk is not None:
                _reseal(conn, device_pk, sealer)

    def device_for_activation(self, device_id: str) -> tuple[DeviceRecord, bool] | None:
        """The device with this id and whether a recall's hold stops its activation, in one
        read; None if there is no such device."""
        if self._hot is not None:
            with self._store.driver_once() as conn:
                return self._hot.read(conn, device_id)
        with self._store.read_once() as conn:
            row = conn.execute(_ACTIVATION_READ, {"device_id": device_id}).first()
        return (DeviceRecord.from_row(row), bool(row.held)) if row is not None else None

    def try_activate(
        self,
        device: DeviceRecord,
        user: str | None,
        token_hash: str,
        attempt: Attempt,
        sealer: Sealer,
    ) -> Reason | None:
        """Pending -> activated with one conditional UPDATE; None if this call won, else the
        reason it lost (activated or revoked meanwhile, or held by a recall).

        DEVICE is the row as read before: the pairing event, the `activated` action, both
        chains' new heads and the new seal are computed from it, and one UPDATE writes them
        all, on condition that the device is still pending, unheld, and its chains where they
        were when read; then the two entries are inserted, in the same transaction. Three
        statements (two more when a chain had entries: the previous entry hashes). If only
        the chains moved (a refused attempt was recorded meanwhile), it reads the row again
        and tries again.
        """
        for _ in range(_ACTIVATE_TRIES):
            if self._store.is_postgresql and device.pairing_count == 0 == device.action_count:
                # A device never scanned (launch day): the UPDATE and both inserts are one
                # statement, its own transaction, one round trip.
                params = _activate_params(device, user, token_hash, attempt, sealer)
                if self._hot is not None:
                    with self._store.driver_once() as raw:
                        if self._hot.activate(raw, params):
                            return None
                else:
                    with self._store.read_once() as conn:
                        if conn.execute(_ACTIVATE_ONE, params).scalar_one():
                            return None
            with self._store.begin() as conn:
                won = _activate_row(conn, device, user, token_hash, attempt, sealer)
                if won:
                    return None
                now = conn.execute(
                    select(
                        devices.c.status,
                        devices.c.pairing_count,
                        devices.c.action_count,
                        held(device.id).exists().label("held"),
                    ).where(devices.c.id == device.id)
                ).one()
                status = DeviceStatus(now.status)
                moved = (now.pairing_count, now.action_count) != (
                    device.pairing_count,
                    device.action_count,
                )
                if status != DeviceStatus.PENDING or now.held or not moved:
                    reason = _LOST_REASON.get(status, Reason.ALREADY_ACTIVATED)
                    _append_pairing(
                        conn,
                        device.id,
                        device.device_id,
                        attempt,
                        PairingResult.REJECTED,
                        reason,
                        sealer,
                    )
                    _reseal(conn, device.id, sealer)
                    return reason
            fresh = self._device(device.id)
            assert fresh is not None
            device = fresh
        raise DeviceError(f"device {device.device_id} kept changing; try the activation again")

    def _device(self, device_pk: int) -> DeviceRecord | None:
        with self._store.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.id == device_pk)).first()
        return DeviceRecord.from_row(row) if row is not None else None

    def revoke(
        self,
        device_pk: int,
        device_id: str,
        by: str,
        reason: str,
        now: datetime,
        sealer: Sealer,
        ip: str | None = None,
    ) -> bool:
        """Mark a device revoked (from any other state); False if it already was."""
        with self._store.begin() as conn:
            changed = conn.execute(
                update(devices)
                .where(devices.c.id == device_pk, devices.c.status != DeviceStatus.REVOKED)
                .values(
                    status=DeviceStatus.REVOKED,
                    revoked_at=now,
                    revoked_by=by,
                    revoked_reason=reason,
                )
            ).rowcount
            if changed:
                action = NewAction(
                    SystemAction.REVOKED, canonical_json({"reason": reason}), ip, by, now
                )
                _append_action(conn, device_pk, device_id, action, sealer)
                _reseal(conn, device_pk, sealer)
        return bool(changed)

    def unrevoke(
        self,
        device_pk: int,
        device_id: str,
        by: str,
        reason: str,
        now: datetime,
        sealer: Sealer,
        ip: str | None = None,
    ) -> str | None:
        """Undo a revocation: the device is activated again if it had been activated, else
        pending; the revocation's columns are cleared and the `unrevoked` action (with the
        revocation it undid) is appended, with the seal, in one transaction. Returns the new
        status, or None if the device was not revoked."""
        with self._store.begin() as conn:
            row = conn.execute(
                select(
                    devices.c.activated_at,
                    devices.c.revoked_at,
                    devices.c.revoked_by,
                    devices.c.revoked_reason,
                ).where(devices.c.id == device_pk, devices.c.status == DeviceStatus.REVOKED)
            ).first()
            if row is None:
                return None
            status = DeviceStatus.ACTIVATED if row.activated_at else DeviceStatus.PENDING
            changed = conn.execute(
                update(devices)
                .where(devices.c.id == device_pk, devices.c.status == DeviceStatus.REVOKED)
                .values(status=status, revoked_at=None, revoked_by=None, revoked_reason=None)
            ).rowcount
            if not changed:
                return None
            undone = aware(row.revoked_at)
            meta = {
                "reason": reason,
                "status": str(status),
                "revoked_at": undone.isoformat() if undone else None,
                "revoked_by": row.revoked_by,
                "revoked_reason": row.revoked_reason,
            }
            action = NewAction(SystemAction.UNREVOKED, canonical_json(meta), ip, by, now)
            _append_action(conn, device_pk, device_id, action, sealer)
            _reseal(conn, device_pk, sealer)
        return str(status)

    def resign(self, batch_id: int, key_id: int, actor: str, now: datetime, sealer: Sealer) -> int:
        """Move the batch's pending devices signed by another key to KEY_ID; returns how many.

        Each device's change is an action in its log (`resigned`, from and to which key), in
        the same transaction as the new key id and seal; a device activated meanwhile is left
        as it is (the UPDATE is conditional on `pending` and on the key it was read with). A
        transaction per chunk of devices, its actions appended in bulk (append_actions).
        """
        store = self._store
        size = _chunk_size(store)
        moved = 0
        while True:
            with store.begin() as conn:
                todo = conn.execute(
                    select(devices.c.id, devices.c.key_id)
                    .where(
                        devices.c.batch_id == batch_id,
                        devices.c.status == DeviceStatus.PENDING,
                        devices.c.key_id != key_id,
                    )
                    .order_by(devices.c.id)
                    .limit(size)
                ).all()
                by_old: dict[int, list[int]] = {}
                for pk, old in todo:
                    by_old.setdefault(old, []).append(pk)
                items: list[tuple[int, NewAction]] = []
                for old, pks in sorted(by_old.items()):
                    changed = conn.execute(
                        update(devices)
                        .where(
                            among_ids(store, devices.c.id, pks),
                            devices.c.status == DeviceStatus.PENDING,
                            devices.c.key_id == old,
                        )
                        .values(key_id=key_id)
                        .returning(devices.c.id)
                    ).scalars()
                    meta = canonical_json({"from_key_id": old, "key_id": key_id})
                    action = NewAction(SystemAction.RESIGNED, meta, None, actor, now)
                    items += [(pk, action) for pk in sorted(changed)]
                moved += append_actions(conn, store, items, sealer)
            if len(todo) < size:
                return moved

    def append_action(
        self,
        device_pk: int,
        device_id: str,
        action: NewAction,
        sealer: Sealer,
        *,
        when_revoked: NewAction | None = None,
    ) -> ActionEntry:
        """Append ACTION to the device's chain; returns the stored entry. With WHEN_REVOKED,
        that is appended instead when the device is revoked (checked under its row lock)."""
        with self._store.begin() as conn:
            entry = _append_action(conn, device_pk, device_id, action, sealer, when_revoked)
            _reseal(conn, device_pk, sealer)
        return entry

    # -- reads -------------------------------------------------------------------------------

    def pairing_events_of(self, device_pk: int, limit: int | None = None) -> list[PairingEvent]:
        """The newest LIMIT attempts (all without a limit), oldest first."""
        q = select(pairing_events).where(pairing_events.c.device_pk == device_pk)
        q = q.order_by(pairing_events.c.seq.desc())
        if limit is not None:
            q = q.limit(limit)
        with self._store.connect() as conn:
            return [PairingEvent.from_row(r) for r in conn.execute(q)][::-1]

    def accepted_pairing_of(self, device_pk: int) -> PairingEvent | None:
        """The attempt that activated the device, if one did."""
        q = select(pairing_events).where(
            pairing_events.c.device_pk == device_pk,
            pairing_events.c.result == PairingResult.ACCEPTED,
        )
        with self._store.connect() as conn:
            row = conn.execute(q.order_by(pairing_events.c.seq).limit(1)).first()
        return PairingEvent.from_row(row) if row is not None else None

    def rejected_pairing_counts(self, device_pk: int) -> dict[str, int]:
        """The device's rejected attempts, counted by reason."""
        q = (
            select(pairing_events.c.reason, func.count())
            .where(
                pairing_events.c.device_pk == device_pk,
                pairing_events.c.result != PairingResult.ACCEPTED,
            )
            .group_by(pairing_events.c.reason)
        )
        with self._store.connect() as conn:
            return {str(reason): int(n) for reason, n in conn.execute(q)}

    def actions_of(self, device_pk: int, limit: int | None = None) -> list[ActionEntry]:
        """The newest LIMIT actions (all without a limit), oldest first."""
        q = select(action_log).where(action_log.c.device_pk == device_pk)
        q = q.order_by(action_log.c.seq.desc())
        if limit is not None:
            q = q.limit(limit)
        with self._store.connect() as conn:
            return [ActionEntry.from_row(r) for r in conn.execute(q)][::-1]

    def count_actions(self, device_pk: int) -> int:
        q = select(func.count()).select_from(action_log).where(action_log.c.device_pk == device_pk)
        with self._store.connect() as conn:
            return int(conn.execute(q).scalar_one())


def held(device_pk: Any) -> Any:
    """The recall rows that hold DEVICE_PK (a value or a column): an open recall with --hold
    that matched it, and it not released."""
    return (
        select(recall_devices.c.recall_id)
        .join(recalls, recalls.c.id == recall_devices.c.recall_id)
        .where(
            recall_devices.c.device_pk == device_pk,
            recall_devices.c.released_at.is_(None),
            recalls.c.hold.is_(True),
            recalls.c.closed_at.is_(None),
        )
    )


def among_ids(store: Store, column: Any, ids: Sequence[int]) -> Any:
    """`column IN (ids)` for integer keys: one array parameter on PostgreSQL."""
    if store.is_postgresql:
        # Here, not at the top: the dialect (and asyncio with it) costs 25 ms to import.
        from sqlalchemy import BigInteger, any_
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(None, list(ids), type_=ARRAY(BigInteger)))
    return column.in_(list(ids))


def _chunk_size(store: Store) -> int:
    return store.lookup_chunk if store.is_sqlite else _PG_CHUNK


def append_actions(
    conn: Connection, store: Store, items: Sequence[tuple[int, NewAction]], sealer: Sealer
) -> int:
    """Append one action to each device's chain and seal it again, in CONN's transaction.

    ITEMS are (device pk, action) pairs, one per device. The entries, heads and seals are
    exactly those _append_action and _reseal would write one device at a time, but a chunk of
    devices costs four statements instead of six per device: lock the rows and read their
    sealed state, read the newest entries' hashes, insert the new entries in bulk (COPY on
    PostgreSQL), write the counts, heads and seals. Returns how many actions were appended.
    """
    size = _chunk_size(store)
    for start in range(0, len(items), size):
        _append_chunk(conn, store, items[start : start + size], sealer)
    return len(items)


def _append_chunk(
    conn: Connection, store: Store, items: Sequence[tuple[int, NewAction]], sealer: Sealer
) -> None:
    actions = dict(items)
    if len(actions) != len(items):
        raise ValueError("append_actions takes one action per device")
    if not actions:
        return
    pks = sorted(actions)
    sealed = (devices.c.id, *(devices.c[c] for c in SEALED_COLUMNS))
    if store.is_postgresql:
        # FOR UPDATE in id order: concurrent appends queue up (as behind _append_action's
        # counter bump) and never deadlock; the one UPDATE below writes each row once.
        rows = conn.execute(
            select(*sealed)
            .where(among_ids(store, devices.c.id, pks))
            .order_by(devices.c.id)
            .with_for_update()
        )
        states = {row[0]: list(row[1:]) for row in rows}
        for state in states.values():
            state[_COUNT] += 1
        bumped = 0
    else:
        # SQLite: bumping the counters first takes the database's write lock, so nothing
        # changes between this read and the writes below.
        rows = conn.execute(
            update(devices)
            .where(among_ids(store, devices.c.id, pks))
            .values(action_count=devices.c.action_count + 1)
            .returning(*sealed)
        )
        states = {row[0]: list(row[1:]) for row in rows}
        bumped = 1
    if missing := [pk for pk in pks if pk not in states]:
        raise DeviceError(f"no device row {missing[0]}; nothing appended")
    later = [pk for pk, state in states.items() if state[_COUNT] > 1]
    prev_of: dict[int, str] = {}
    if later:
        # Each device's newest entry: (device_pk, seq) is the unique index's key.
        newest = and_(
            action_log.c.device_pk == devices.c.id,
            action_log.c.seq == devices.c.action_count - bumped,
        )
        prev_of = {
            int(pk): str(h)
            for pk, h in conn.execute(
                select(action_log.c.device_pk, action_log.c.entry_hash)
                .select_from(devices.join(action_log, newest))
                .where(among_ids(store, devices.c.id, later))
            )
        }
    entries: list[dict[str, Any]] = []
    heads: list[tuple[int, int, str, str]] = []  # (pk, count, head, seal)
    for pk in pks:
        state = states[pk]
        did, seq = state[0], state[_COUNT]
        prev = genesis_hash(did) if seq == 1 else prev_of.get(pk)
        if prev is None:
            raise DeviceError(
                f"the action log of device {did} is broken at entry #{seq - 1}; "
                "nothing appended (run `provision audit verify`)"
            )
        a = actions[pk]
        now = a.occurred_at.astimezone(UTC)
        entry = sealer.action(did, seq, now, a.action_type, a.metadata_json, a.ip, a.actor, prev)
        entries.append(
            {
                "device_pk": pk,
                "seq": seq,
                "occurred_at": now,
                "action_type": a.action_type,
                "metadata_json": a.metadata_json,
                "ip": a.ip,
                "actor": a.actor,
                "prev_hash": prev,
                "entry_hash": entry,
            }
        )
        # The head is keyed too: rewinding it by hand after deleting entries needs the keyring.
        state[_HEAD] = sealer.action_head(did, seq, now, entry)
        heads.append((pk, seq, state[_HEAD], sealer.device_values(*state)))
    store.insert_rows(conn, action_log, entries)
    if store.is_postgresql:
        # One statement for the chunk (arrays joined as a table) that writes each row once:
        # a counter bump and an executemany of heads and seals took 0.6 s for 10,000 devices,
        # this 0.3 s (each new row version updates every index of devices either way).
        ids, counts, new_heads, seals = (list(col) for col in zip(*heads, strict=True))
        conn.execute(
            text(
                "UPDATE devices SET action_count = v.count, action_head = v.head, seal = v.seal "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:counts AS integer[]), "
                "CAST(:heads AS varchar[]), CAST(:seals AS varchar[])) AS v(id, count, head, seal) "
                "WHERE devices.id = v.id"
            ),
            {"ids": ids, "counts": counts, "heads": new_heads, "seals": seals},
        )
    else:
        conn.execute(
            update(devices)
            .where(devices.c.id == bindparam("b_pk"))
            .values(action_head=bindparam("b_head"), seal=bindparam("b_seal")),
            [{"b_pk": pk, "b_head": h, "b_seal": seal} for pk, _, h, seal in heads],
        )


def _append_action(
    conn: Connection,
    device_pk: int,
    device_id: str,
    action: NewAction,
    sealer: Sealer,
    when_revoked: NewAction | None = None,
) -> ActionEntry:
    """Append ACTION to the device's chain in CONN's transaction, head updated (not the seal);
    WHEN_REVOKED instead, if given and the device is revoked under the row lock."""
    # Bumping the counter first takes the device row's write lock (PostgreSQL) or the database
    # write lock (SQLite): concurrent appends to one device queue up here.
    seq, status = conn.execute(
        update(devices)
        .where(devices.c.id == device_pk)
        .values(action_count=devices.c.action_count + 1)
        .returning(devices.c.action_count, devices.c.status)
    ).one()
    if when_revoked is not None and status == DeviceStatus.REVOKED:
        action = when_revoked
    entry, head = _insert_action(conn, device_pk, device_id, seq, action, sealer)
    conn.execute(update(devices).where(devices.c.id == device_pk).values(action_head=head))
    return entry


def _insert_action(
    conn: Connection, device_pk: int, device_id: str, seq: int, action: NewAction, sealer: Sealer
) -> tuple[ActionEntry, str]:
    """Entry SEQ of the device's action chain (its counter bumped already), and the chain's
    new head, for the caller to store."""
    what = f"action log of device {device_id}"
    prev = _previous(conn, action_log, device_pk, seq, genesis_hash(device_id), what)
    row = _action_row(device_pk, device_id, seq, prev, action, sealer)
    pk = conn.execute(insert(action_log).values(**row)).inserted_primary_key
    assert pk is not None
    # The head is keyed too: deleting the newest entries and rewinding the head by hand needs
    # the keyring, not just database access.
    head = sealer.action_head(device_id, seq, row["occurred_at"], row["entry_hash"])
    return ActionEntry(id=int(pk[0]), **row), head


def _append_pairing(
    conn: Connection,
    device_pk: int | None,
    device_id: str | None,
    attempt: Attempt,
    result: PairingResult,
    reason: Reason | None,
    sealer: Sealer,
) -> None:
    """Append an attempt to its device's pairing chain (or the unattached one), head updated."""
    # Bumping the chain's counter first takes its row's write lock: appends queue up here.
    if device_pk is not None:
        assert device_id is not None
        counter, head_of = devices.c.pairing_count, devices.c.pairing_head
        owner = devices.c.id == device_pk
    else:
        counter, head_of = audit_chains.c.count, audit_chains.c.head
        owner = audit_chains.c.name == UNATTACHED
    table = counter.table
    seq = conn.execute(
        update(table).where(owner).values({counter: counter + 1}).returning(counter)
    ).scalar_one()
    head = _insert_pairing(conn, device_pk, device_id, seq, attempt, result, reason, sealer)
    conn.execute(update(table).where(owner).values({head_of: head}))


def _insert_pairing(
    conn: Connection,
    device_pk: int | None,
    device_id: str | None,
    seq: int,
    attempt: Attempt,
    result: PairingResult,
    reason: Reason | None,
    sealer: Sealer,
) -> str:
    """Event SEQ of the pairing chain (its counter bumped already); returns the new head."""
    chain = device_id if device_pk is not None else UNATTACHED
    assert chain is not None
    what = f"pairing log of {'device ' + chain if device_pk is not None else 'unknown devices'}"
    prev = _previous(conn, pairing_events, device_pk, seq, pairing_genesis(chain), what)
    row = _pairing_row(device_pk, chain, seq, prev, attempt, result, reason, sealer)
    conn.execute(insert(pairing_events).values(**row))
    return sealer.pairing_head(chain, seq, row["entry_hash"])


def _activate_row(
    conn: Connection,
    device: DeviceRecord,
    user: str | None,
    token_hash: str,
    attempt: Attempt,
    sealer: Sealer,
) -> bool:
    """The winning path of try_activate: True if this UPDATE activated DEVICE (see there)."""
    pk, did = device.id, device.device_id
    pprev = _previous(
        conn,
        pairing_events,
        pk,
        device.pairing_count + 1,
        pairing_genesis(did),
        f"pairing log of device {did}",
    )
    aprev = _previous(
        conn,
        action_log,
        pk,
        device.action_count + 1,
        genesis_hash(did),
        f"action log of device {did}",
    )
    params, pairing, entry = _activate_values(
        device, user, token_hash, attempt, sealer, pprev, aprev
    )
    if not conn.execute(_ACTIVATE, params).rowcount:
        return False
    conn.execute(_INSERT_PAIRING, pairing)
    conn.execute(_INSERT_ACTION, entry)
    return True


def _activate_params(
    device: DeviceRecord,
    user: str | None,
    token_hash: str,
    attempt: Attempt,
    sealer: Sealer,
) -> dict[str, Any]:
    """_ACTIVATE_ONE's values, for a device whose two chains are empty."""
    assert device.pairing_count == 0 == device.action_count
    did = device.device_id
    params, pairing, entry = _activate_values(
        device, user, token_hash, attempt, sealer, pairing_genesis(did), genesis_hash(did)
    )
    return (
        params | {f"p_{k}": v for k, v in pairing.items()} | {f"a_{k}": v for k, v in entry.items()}
    )


def _activate_values(
    device: DeviceRecord,
    user: str | None,
    token_hash: str,
    attempt: Attempt,
    sealer: Sealer,
    pprev: str,
    aprev: str,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The conditional UPDATE's values, the pairing event and the `activated` action: each
    chain's next entry links to PPREV and APREV, and the new seal covers the state they make."""
    did, pk, now = device.device_id, device.id, attempt.occurred_at.astimezone(UTC)
    pseq, aseq = device.pairing_count + 1, device.action_count + 1
    pairing = _pairing_row(pk, did, pseq, pprev, attempt, PairingResult.ACCEPTED, None, sealer)
    action = NewAction(
        SystemAction.ACTIVATED, canonical_json({"user": user}), attempt.ip, user, now
    )
    entry = _action_row(pk, did, aseq, aprev, action, sealer)
    state = {c: getattr(device, c) for c in SEALED_COLUMNS} | {
        "status": DeviceStatus.ACTIVATED,
        "activated_at": now,
        "user_id": user,
        "activation_token_hash": token_hash,
        "pairing_count": pseq,
        "pairing_head": sealer.pairing_head(did, pseq, pairing["entry_hash"]),
        "action_count": aseq,
        "action_head": sealer.action_head(did, aseq, now, entry["entry_hash"]),
    }
    params = {
        "pk": pk,
        "old_pairing_count": device.pairing_count,
        "old_action_count": device.action_count,
        "new_activated_at": now,
        "new_user_id": user,
        "new_token_hash": token_hash,
        "new_pairing_count": pseq,
        "new_pairing_head": state["pairing_head"],
        "new_action_count": aseq,
        "new_action_head": state["action_head"],
        "new_seal": sealer.device_values(*(state[c] for c in SEALED_COLUMNS)),
    }
    return params, pairing, entry


# The activation path's statements, built once: a request binds its values and runs them, and
# spends nothing on building a statement or its cache key (a third of its time before).
_ACTIVATION_READ = select(devices, held(devices.c.id).exists().label("held")).where(
    devices.c.device_id == bindparam("device_id")
)
_ACTIVATE = (
    update(devices)
    .where(
        devices.c.id == bindparam("pk"),
        devices.c.status == DeviceStatus.PENDING,
        devices.c.pairing_count == bindparam("old_pairing_count"),
        devices.c.action_count == bindparam("old_action_count"),
        # In the UPDATE itself, not only checked before: a hold committed between the read
        # and this statement still stops the activation.
        ~held(bindparam("pk")).exists(),
    )
    .values(
        status=DeviceStatus.ACTIVATED,
        activated_at=bindparam("new_activated_at"),
        user_id=bindparam("new_user_id"),
        activation_token_hash=bindparam("new_token_hash"),
        pairing_count=bindparam("new_pairing_count"),
        pairing_head=bindparam("new_pairing_head"),
        action_count=bindparam("new_action_count"),
        action_head=bindparam("new_action_head"),
        seal=bindparam("new_seal"),
    )
)
_INSERT_PAIRING = insert(pairing_events)
_INSERT_ACTION = insert(action_log)


def _one_statement() -> Any:
    """_ACTIVATE with both inserts as data-modifying CTEs (PostgreSQL): they insert only if
    the UPDATE won, and the statement counts its winners (0 or 1)."""
    won = _ACTIVATE.returning(devices.c.id).cte("won")

    def entries(table: Any, prefix: str) -> Any:
        names = [c.name for c in table.c if c.name not in ("id", "device_pk")]
        values = [bindparam(f"{prefix}{n}", type_=table.c[n].type) for n in names]
        return insert(table).from_select(["device_pk", *names], select(won.c.id, *values))

    pairing = entries(pairing_events, "p_").cte("pairing")
    action = entries(action_log, "a_").cte("action")
    return select(func.count()).select_from(won).add_cte(pairing, action)


_ACTIVATE_ONE = _one_statement()


class _HotPath:
    """The activation's read and its one statement as psycopg runs them (PostgreSQL).

    Compiled once to the driver's SQL; psycopg prepares each on every connection of the pool
    (prepare=True) and the server plans it once. The read's row is taken by position. This
    skips SQLAlchemy's execution context, result set-up and row objects, which cost a request
    more than the two statements do in the database."""

    def __init__(self, dialect: Any) -> None:
        read = _ACTIVATION_READ.compile(dialect=dialect)
        self._read_sql = read.string
        self._read_names = [c.name for c in _ACTIVATION_READ.selected_columns]
        one = _ACTIVATE_ONE.compile(dialect=dialect)
        self._one_sql = one.string
        # The statement's own constants (the statuses), under the names its SQL binds.
        bound = {b.key for b in one.binds.values() if b.required}
        every = one.construct_params(dict.fromkeys(bound))
        self._one_constants = {k: v for k, v in every.items() if k not in bound}

    def read(self, conn: Any, device_id: str) -> tuple[DeviceRecord, bool] | None:
        row = conn.execute(self._read_sql, {"device_id": device_id}, prepare=True).fetchone()
        if row is None:
            return None
        mapping = dict(zip(self._read_names, row, strict=True))
        return DeviceRecord.from_mapping(mapping), bool(mapping["held"])

    def activate(self, conn: Any, params: dict[str, Any]) -> bool:
        values = self._one_constants | params
        return bool(conn.execute(self._one_sql, values, prepare=True).fetchone()[0])


def _previous(
    conn: Connection, table: Any, device_pk: int | None, seq: int, genesis: str, what: str
) -> str:
    """The hash an entry SEQ of a device's chain links to: genesis for the first, else the
    entry before it (a missing one is a broken chain: nothing is written)."""
    if seq == 1:
        return genesis
    same_chain = (
        table.c.device_pk.is_(None) if device_pk is None else table.c.device_pk == device_pk
    )
    prev = conn.execute(
        select(table.c.entry_hash).where(same_chain, table.c.seq == seq - 1)
    ).scalar()
    if prev is None:
        actions = table is action_log
        raise DeviceError(
            f"the {what} is broken at {'entry' if actions else 'event'} #{seq - 1}; "
            f"nothing {'appended' if actions else 'recorded'} (run `provision audit verify`)"
        )
    return str(prev)


def _pairing_row(
    device_pk: int | None,
    chain: str,
    seq: int,
    prev: str,
    attempt: Attempt,
    result: PairingResult,
    reason: Reason | None,
    sealer: Sealer,
) -> dict[str, Any]:
    occurred = attempt.occurred_at.astimezone(UTC)
    entry = sealer.pairing(
        chain,
        seq,
        occurred,
        attempt.claimed_device_id,
        attempt.ip,
        attempt.user_agent,
        attempt.fingerprint,
        attempt.user_id,
        result,
        reason,
        prev,
    )
    return {
        "device_pk": device_pk,
        "seq": seq,
        "occurred_at": occurred,
        "claimed_device_id": attempt.claimed_device_id,
        "ip": attempt.ip,
        "user_agent": attempt.user_agent,
        "fingerprint": attempt.fingerprint,
        "user_id": attempt.user_id,
        "result": result,
        "reason": reason,
        "prev_hash": prev,
        "entry_hash": entry,
    }


def _action_row(
    device_pk: int, device_id: str, seq: int, prev: str, action: NewAction, sealer: Sealer
) -> dict[str, Any]:
    now = action.occurred_at.astimezone(UTC)
    entry_hash = sealer.action(
        device_id, seq, now, action.action_type, action.metadata_json, action.ip, action.actor, prev
    )
    return {
        "device_pk": device_pk,
        "seq": seq,
        "occurred_at": now,
        "action_type": action.action_type,
        "metadata_json": action.metadata_json,
        "ip": action.ip,
        "actor": action.actor,
        "prev_hash": prev,
        "entry_hash": entry_hash,
    }


def _reseal(conn: Connection, device_pk: int, sealer: Sealer) -> None:
    """Seal the device row's state as this transaction leaves it."""
    state = conn.execute(
        select(*(devices.c[c] for c in SEALED_COLUMNS)).where(devices.c.id == device_pk)
    ).one()
    conn.execute(
        update(devices).where(devices.c.id == device_pk).values(seal=sealer.device_values(*state))
    )
