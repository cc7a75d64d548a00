"""Staff accounts, failed logins and the staff audit log (provision.staff decides; this stores)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from provision.registry.records import _Record
from provision.registry.schema import staff, staff_audit, staff_login_failures
from provision.registry.store import Store, aware


@dataclass(frozen=True)
class StaffRecord(_Record):
    """One staff account; the password and token only as hashes."""

    id: int
    name: str
    role: str
    password_hash: str
    password_changed_at: datetime
    token_hash: str | None
    token_created_at: datetime | None
    disabled_at: datetime | None
    last_login_at: datetime | None
    sessions_ended_at: datetime | None
    created_at: datetime
    created_by: str

    _TIMES = (
        "password_changed_at",
        "token_created_at",
        "disabled_at",
        "last_login_at",
        "sessions_ended_at",
        "created_at",
    )

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True)
class StaffEvent(_Record):
    """One line of the staff audit log."""

    id: int
    occurred_at: datetime
    staff: str
    action: str
    subject: str | None
    ip: str | None
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> StaffEvent:
        m = row._mapping
        return cls(
            m["id"],
            aware(m["occurred_at"]),  # type: ignore[arg-type]
            m["staff"],
            m["action"],
            m["subject"],
            m["ip"],
            json.loads(m["detail_json"]),
        )


class Staff:
    """`registry.staff`: accounts, failed logins, the audit log."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- accounts --------------------------------------------------------------------------------

    def get(self, name: str) -> StaffRecord | None:
        with self._store.connect() as conn:
            row = conn.execute(select(staff).where(staff.c.name == name)).first()
        return StaffRecord.from_row(row) if row else None

    def by_id(self, pk: int) -> StaffRecord | None:
        with self._store.connect() as conn:
            row = conn.execute(select(staff).where(staff.c.id == pk)).first()
        return StaffRecord.from_row(row) if row else None

    def by_token_hash(self, token_hash: str) -> StaffRecord | None:
        with self._store.connect() as conn:
            row = conn.execute(select(staff).where(staff.c.token_hash == token_hash)).first()
        return StaffRecord.from_row(row) if row else None

    def all(self) -> list[StaffRecord]:
        with self._store.connect() as conn:
            rows = conn.execute(select(staff).order_by(staff.c.name)).all()
        return [StaffRecord.from_row(r) for r in rows]

    def add(
        self,
        name: str,
        role: str,
        password_hash: str,
        by: str,
        now: datetime,
        event: Mapping[str, Any],
    ) -> StaffRecord:
        """A new account (ConflictError if the name is taken), recorded in the audit log."""
        with self._store.begin() as conn:
            conn.execute(
                insert(staff).values(
                    name=name,
                    role=role,
                    password_hash=password_hash,
                    password_changed_at=now,
                    created_at=now,
                    created_by=by,
                )
            )
            _record(conn, now, event)
        found = self.get(name)
        assert found is not None
        return found

    def change(self, name: str, now: datetime, event: Mapping[str, Any], **values: Any) -> bool:
        """Set VALUES on the account NAME and record EVENT, in one transaction; False if there
        is no such account."""
        with self._store.begin() as conn:
            done = conn.execute(update(staff).where(staff.c.name == name).values(**values))
            if done.rowcount:
                _record(conn, now, event)
        return bool(done.rowcount)

    # -- failed logins ---------------------------------------------------------------------------

    def login_attempt(self, username: str, ip: str, now: datetime, forget_before: datetime) -> int:
        """Count a login as failed until it is known to be right (forget_attempt); those
        before FORGET_BEFORE, which lock nothing any more, are dropped (the audit log keeps
        every failure). Returns the attempt's id."""
        f = staff_login_failures
        with self._store.begin() as conn:
            conn.execute(delete(f).where(f.c.occurred_at < forget_before))
            pk = conn.execute(
                insert(f).values(occurred_at=now, username=username, ip=ip)
            ).inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def forget_attempt(self, attempt: int) -> None:
        with self._store.begin() as conn:
            conn.execute(delete(staff_login_failures).where(staff_login_failures.c.id == attempt))

    def failures_since(self, username: str, ip: str, since: datetime) -> tuple[int, int]:
        """Failed logins since SINCE: of the account name (only those after its last good
        login), and from the address (all of them)."""
        f = staff_login_failures
        with self._store.connect() as conn:
            last = aware(
                conn.execute(select(staff.c.last_login_at).where(staff.c.name == username)).scalar()
            )
            by_name = select(func.count()).where(f.c.username == username, f.c.occurred_at >= since)
            if last is not None:
                by_name = by_name.where(f.c.occurred_at > last)
            names = conn.execute(by_name).scalar_one()
            ips = conn.execute(
                select(func.count()).where(f.c.ip == ip, f.c.occurred_at >= since)
            ).scalar_one()
        return int(names), int(ips)

    def logged_in(self, username: str, now: datetime, event: Mapping[str, Any]) -> None:
        """A good login: the account's failures before it no longer count against it (they
        still count against the address they came from)."""
        with self._store.begin() as conn:
            conn.execute(update(staff).where(staff.c.name == username).values(last_login_at=now))
            _record(conn, now, event)

    # -- the audit log ---------------------------------------------------------------------------

    def record(self, now: datetime, event: Mapping[str, Any]) -> None:
        with self._store.begin() as conn:
            _record(conn, now, event)

    def events(
        self,
        *,
        staff_name: str | None = None,
        subject: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[StaffEvent]:
        """The newest audit lines first (keyset paging: BEFORE is the last id seen)."""
        a = staff_audit
        q = select(a).order_by(a.c.id.desc()).limit(limit)
        if staff_name is not None:
            q = q.where(a.c.staff == staff_name)
        if subject is not None:
            q = q.where(a.c.subject == subject)
        if before is not None:
            q = q.where(a.c.id < before)
        with self._store.connect() as conn:
            rows = conn.execute(q).all()
        return [StaffEvent.from_row(r) for r in rows]


def _record(conn: Any, now: datetime, event: Mapping[str, Any]) -> None:
    conn.execute(
        insert(staff_audit).values(
            occurred_at=now,
            staff=event["staff"],
            action=event["action"],
            subject=event.get("subject"),
            ip=event.get("ip"),
            detail_json=json.dumps(event.get("detail") or {}, sort_keys=True),
        )
    )
