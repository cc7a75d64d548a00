"""Alert state and the reads behind the alert rules (provision.alerts decides; this reads).

Two kinds of read serve each rule: a full pass that lets the database find the candidate
subjects (a window function spots any run of N events within W seconds, so only the subjects
that have one are fetched), and a subject read that fetches one subject's whole history
through an index (the incremental run recomputes only the subjects its new events touch).
The marks say where the last run stopped: the newest pairing event, action and audit run
it read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection

from provision.registry.events import among_ids
from provision.registry.records import _Record
from provision.registry.schema import (
    action_log,
    alert_marks,
    alerts,
    audit_runs,
    batches,
    devices,
    pairing_events,
)
from provision.registry.store import Store, aware, chunks
from provision.states import AlertStatus, DeviceStatus, PairingResult, Reason, SystemAction

MARKS = ("pairing_events", "actions", "audit_runs", "dormant_day")


@dataclass(frozen=True)
class Finding:
    """What a rule found about one subject in this run (before it meets the stored alert);
    `evidence` maps a kind of row (pairing_events, actions, audit_runs, devices) to the newest
    ids that show it."""

    id: str
    rule: str
    severity: str
    subject_kind: str
    subject: str
    first_seen: datetime
    last_seen: datetime
    count: int
    evidence: dict[str, list[Any]]


@dataclass(frozen=True)
class AlertRecord(Finding, _Record):
    """One stored alert: a finding, with its state (open or acknowledged, by whom, notified)."""

    status: str
    acked_by: str | None
    acked_at: datetime | None
    ack_note: str | None
    notified_at: datetime | None
    updated_at: datetime

    _TIMES = ("first_seen", "last_seen", "acked_at", "notified_at", "updated_at")

    @classmethod
    def from_row(cls, row: Any) -> AlertRecord:
        m = dict(row._mapping)
        m["evidence"] = json.loads(m.pop("evidence_json"))
        for name in cls._TIMES:
            m[name] = aware(m[name])
        return cls(**{k: m[k] for k in cls.columns()})


@dataclass(frozen=True)
class Saved:
    """The outcome of saving findings: the alerts raised for the first time, those opened
    again by new evidence after an acknowledgement, and those that only grew."""

    raised: list[str]
    reopened: list[str]
    grown: list[str]


@dataclass(frozen=True)
class NewRows:
    """What arrived after the marks: pairing events, actions, audit runs (and the newest ids)."""

    pairings: Sequence[Sequence[Any]]  # id, device_pk, ip, user (lower), result, reason
    actions: Sequence[Sequence[Any]]  # id, device_pk, action_type
    audit_runs: list[tuple[Any, ...]]  # id, ran_at, ok, problems_json
    top: dict[str, int]


EVIDENCE_KEPT = 50  # newest ids an alert keeps, per kind


def _figures(f: Finding, old: AlertRecord | None, now: datetime) -> dict[str, Any]:
    """The columns a finding sets: with a stored alert, its span and count only grow, and its
    evidence is merged kind by kind (the newest kept), so a pass over less history loses
    nothing; a state's (a dormant batch's devices) is replaced."""
    evidence = dict(f.evidence)
    if old is not None:
        for kind, ids in old.evidence.items():
            if kind == "devices":
                evidence.setdefault(kind, ids)
            else:
                evidence[kind] = sorted(set(ids) | set(evidence.get(kind, [])))[-EVIDENCE_KEPT:]
    return {
        "severity": f.severity,
        "first_seen": min(f.first_seen, old.first_seen) if old else f.first_seen,
        "last_seen": max(f.last_seen, old.last_seen) if old else f.last_seen,
        "count": max(f.count, old.count) if old else f.count,
        "evidence_json": json.dumps(evidence, sort_keys=True),
        "updated_at": now,
    }


def new_evidence(old: AlertRecord, finding: Finding) -> bool:
    """Whether FINDING shows what the stored alert had not seen: an event newer than its
    newest (ids grow with time), a chain break it did not name (not merely another audit run
    finding the same one), or, for a state (a dormant batch's devices), a higher count."""
    for kind, ids in finding.evidence.items():
        seen = old.evidence.get(kind, [])
        if kind == "problems":
            if set(ids) - set(seen):
                return True
        elif kind == "devices":
            if finding.count > old.count:
                return True
        elif kind == "audit_runs":
            continue  # another run finding the same break: only a new break is new
        elif ids and (not seen or max(ids) > max(seen)):
            return True
    return False


class Alerts:
    """registry.alerts: the stored alerts, the run marks, the audit runs, the rule reads."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _chunks(self, items: Iterable[Any]) -> Iterator[list[Any]]:
        """ITEMS a statement's worth at a time (the store's lookup chunk)."""
        return chunks(items, self._store.lookup_chunk)

    # -- state ---------------------------------------------------------------------------------

    def marks(self) -> dict[str, int]:
        with self._store.connect() as conn:
            return {
                n: int(v) for n, v in conn.execute(select(alert_marks.c.name, alert_marks.c.value))
            }

    def top_ids(self) -> dict[str, int]:
        """The newest pairing event, action and audit run ids (0 when none)."""
        with self._store.connect() as conn:
            return {
                "pairing_events": conn.execute(select(func.max(pairing_events.c.id))).scalar() or 0,
                "actions": conn.execute(select(func.max(action_log.c.id))).scalar() or 0,
                "audit_runs": conn.execute(select(func.max(audit_runs.c.id))).scalar() or 0,
            }

    def get(self, ids: Iterable[str]) -> dict[str, AlertRecord]:
        wanted = sorted(set(ids))
        found: dict[str, AlertRecord] = {}
        with self._store.connect() as conn:
            for part in self._chunks(wanted):
                q = select(alerts).where(self._store.among(alerts.c.id, part))
                for row in conn.execute(q):
                    found[row.id] = AlertRecord.from_row(row)
        return found

    def by_prefix(self, prefix: str) -> list[AlertRecord]:
        """Alerts whose id starts with PREFIX (lower-case hex), at most two (to tell it unique)."""
        q = select(alerts).where(alerts.c.id.startswith(prefix, autoescape=True)).limit(2)
        with self._store.connect() as conn:
            return [AlertRecord.from_row(r) for r in conn.execute(q)]

    def listed(
        self,
        *,
        status: str | None = None,
        since: datetime | None = None,
        severities: Sequence[str] | None = None,
    ) -> list[AlertRecord]:
        """Stored alerts, most severe and newest first."""
        q = select(alerts)
        if status is not None:
            q = q.where(alerts.c.status == status)
        if since is not None:
            q = q.where(alerts.c.last_seen >= since)
        if severities is not None:
            q = q.where(alerts.c.severity.in_(list(severities)))
        q = q.order_by(alerts.c.last_seen.desc(), alerts.c.id)
        with self._store.connect() as conn:
            return [AlertRecord.from_row(r) for r in conn.execute(q)]

    def about(self, subjects: Sequence[tuple[str, str]]) -> list[AlertRecord]:
        """The alerts about any of SUBJECTS ((subject_kind, subject) pairs), newest first."""
        if not subjects:
            return []
        wanted = [and_(alerts.c.subject_kind == k, alerts.c.subject == s) for k, s in subjects]
        q = select(alerts).where(or_(*wanted)).order_by(alerts.c.last_seen.desc(), alerts.c.id)
        with self._store.connect() as conn:
            return [AlertRecord.from_row(r) for r in conn.execute(q)]

    def save(self, findings: Sequence[Finding], marks: dict[str, int], now: datetime) -> Saved:
        """Store FINDINGS and move the MARKS, in one transaction.

        A finding for a new id is a new open alert. One that counts more than the stored alert
        takes the finding's figures. Only new evidence (new_evidence) opens an acknowledged
        alert again, to be notified again: a pass over more history (`--full` after a
        `--since` run) counts more without reopening. A finding that counts no more changes
        nothing. A run saving the same new alert at the same moment (overlapping cron runs)
        is no error: the second finds it stored.
        """
        raised: list[str] = []
        reopened: list[str] = []
        grown: list[str] = []
        stored = self.get(f.id for f in findings)
        with self._store.begin() as conn:
            for f in findings:
                old = stored.get(f.id)
                if old is None:
                    row: dict[str, Any] = {"id": f.id, "rule": f.rule, "subject": f.subject}
                    row |= {"subject_kind": f.subject_kind, "status": AlertStatus.OPEN}
                    row |= _figures(f, None, now)
                    if self._insert_new(conn, row):
                        raised.append(f.id)
                        continue
                    old = self._reread(conn, f.id)
                # Optimistic: the UPDATE holds only if the row is as read (updated_at); another
                # run or an `ack` meanwhile makes it read again and decide again.
                for _ in range(5):
                    fresh = new_evidence(old, f)
                    same = f.count == old.count and f.evidence == old.evidence
                    if not fresh and (f.count < old.count or same):
                        break  # a pass over less history: it knows less than is stored
                    values = _figures(f, old, now)
                    reopen = fresh and old.status == AlertStatus.ACKNOWLEDGED
                    if reopen:
                        values |= {"status": AlertStatus.OPEN, "notified_at": None}
                    done = conn.execute(
                        update(alerts)
                        .where(alerts.c.id == f.id, alerts.c.updated_at == old.updated_at)
                        .values(**values)
                    )
                    if done.rowcount:
                        (reopened if reopen else grown).append(f.id)
                        break
                    old = self._reread(conn, f.id)
            self._set_marks(conn, marks, now)
        return Saved(raised, reopened, grown)

    def _reread(self, conn: Connection, alert_id: str) -> AlertRecord:
        found = conn.execute(select(alerts).where(alerts.c.id == alert_id)).first()
        assert found is not None
        return AlertRecord.from_row(found)

    def _insert_new(self, conn: Connection, row: dict[str, Any]) -> bool:
        """INSERT ... ON CONFLICT DO NOTHING; False when the id is stored already."""
        # RETURNING says whether a row went in: psycopg reports no rowcount for this INSERT.
        statement = self._store.insert_ignoring(alerts).values(**row)
        statement = statement.on_conflict_do_nothing().returning(alerts.c.id)
        return conn.execute(statement).first() is not None

    def claim_delivery(self, alert_id: str, now: datetime) -> bool:
        """Mark the alert as being delivered, unless another run has (or has delivered it)."""
        with self._store.begin() as conn:
            done = conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id, alerts.c.notified_at.is_(None))
                .values(notified_at=now)
            )
        return bool(done.rowcount)

    def release_delivery(self, alert_id: str) -> None:
        """The delivery failed: the next run tries again."""
        with self._store.begin() as conn:
            conn.execute(update(alerts).where(alerts.c.id == alert_id).values(notified_at=None))

    def _set_marks(self, conn: Connection, marks: dict[str, int], now: datetime) -> None:
        for name, value in marks.items():
            done = conn.execute(
                update(alert_marks)
                .where(alert_marks.c.name == name)
                .values(value=value, updated_at=now)
            )
            if not done.rowcount:
                conn.execute(insert(alert_marks).values(name=name, value=value, updated_at=now))

    def acknowledge(self, alert_id: str, by: str, note: str, now: datetime) -> AlertRecord | None:
        with self._store.begin() as conn:
            done = conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id)
                .values(
                    status=AlertStatus.ACKNOWLEDGED,
                    acked_by=by,
                    acked_at=now,
                    ack_note=note,
                    updated_at=now,
                )
            )
        if not done.rowcount:
            return None
        return self.get([alert_id])[alert_id]

    # -- audit runs ------------------------------------------------------------------------------

    def record_audit_run(
        self,
        ok: bool,
        devices_checked: int,
        entries: int,
        events: int,
        problems: dict[str, Any],
        now: datetime,
    ) -> int:
        with self._store.begin() as conn:
            result = conn.execute(
                insert(audit_runs).values(
                    ran_at=now,
                    ok=ok,
                    devices=devices_checked,
                    entries=entries,
                    events=events,
                    problems_json=json.dumps(problems, sort_keys=True),
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def audit_runs(self, after: int = 0, since: datetime | None = None) -> list[tuple[Any, ...]]:
        """(id, ran_at, ok, problems) of the runs after id AFTER that found something broken."""
        q = select(
            audit_runs.c.id, audit_runs.c.ran_at, audit_runs.c.ok, audit_runs.c.problems_json
        )
        q = q.where(audit_runs.c.id > after, audit_runs.c.ok.is_(False))
        if since is not None:
            q = q.where(audit_runs.c.ran_at >= since)
        with self._store.connect() as conn:
            return [
                (i, aware(at), ok, json.loads(p))
                for i, at, ok, p in conn.execute(q.order_by(audit_runs.c.id))
            ]

    # -- what came after the marks ---------------------------------------------------------------

    def new_rows(self, marks: dict[str, int], overlap_from: datetime | None = None) -> NewRows:
        """The rows after the marks (and, from OVERLAP_FROM on, those a transaction committed
        late, below its mark), up to the newest ids now."""
        pe, al = pairing_events.c, action_log.c
        top = self.top_ids()

        def after(table: Any, mark: str) -> Any:
            cond = table.c.id > marks.get(mark, 0)
            if overlap_from is not None:
                cond = cond | (table.c.occurred_at >= overlap_from)
            return and_(cond, table.c.id <= top[mark])

        with self._store.connect() as conn:
            pairings = list(
                conn.execute(
                    select(
                        pe.id, pe.device_pk, pe.ip, func.lower(pe.user_id), pe.result, pe.reason
                    ).where(after(pairing_events, "pairing_events"))
                )
            )
            actions = list(
                conn.execute(
                    select(al.id, al.device_pk, al.action_type).where(after(action_log, "actions"))
                )
            )
        runs = [r for r in self.audit_runs(marks.get("audit_runs", 0)) if r[0] <= top["audit_runs"]]
        return NewRows(pairings, actions, runs, top)

    # -- rule reads: candidates in a full pass ----------------------------------------------------

    def _seconds(self, later: str, earlier: str) -> str:
        if self._store.is_postgresql:
            return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"
        return f"(julianday({later}) - julianday({earlier})) * 86400.0"

    def burst_ips(
        self, result: str | None, reasons: Sequence[str] | None, n: int, window: float,
        since: datetime | None,
    ) -> list[str]:  # fmt: skip
        """Addresses with at least N attempts (of RESULT, or with one of REASONS) within WINDOW
        seconds of each other: a window function over their times, in the database."""
        where, params = self._attempt_filter(result, reasons, since)
        sql = (
            "SELECT DISTINCT ip FROM (SELECT ip, occurred_at AS t, "
            f"LAG(occurred_at, {int(n) - 1}) OVER (PARTITION BY ip ORDER BY occurred_at) AS back "
            f"FROM device_pairing_events WHERE ip IS NOT NULL AND {where}) w "
            # julianday() differences carry float error: the bound is loosened by a millisecond
            # and provision.alerts checks each candidate's windows exactly.
            f"WHERE back IS NOT NULL AND {self._seconds('t', 'back')} <= :window + 0.001"
        )
        with self._store.connect() as conn:
            return [r[0] for r in conn.execute(text(sql), {**params, "window": window})]

    def burst_users(self, n: int, window: float, since: datetime | None) -> list[str]:
        """Users (lower-cased) who activated at least N devices within WINDOW seconds."""
        span = self._seconds("t", "back")
        cond = "AND activated_at >= :since" if since is not None else ""
        sql = (
            "SELECT DISTINCT u FROM (SELECT lower(user_id) AS u, activated_at AS t, "
            f"LAG(activated_at, {int(n) - 1}) OVER (PARTITION BY lower(user_id) "
            "ORDER BY activated_at) AS back FROM devices "
            f"WHERE user_id IS NOT NULL AND activated_at IS NOT NULL {cond}) w "
            f"WHERE back IS NOT NULL AND {span} <= :window + 0.001"
        )
        params: dict[str, Any] = {"window": window}
        if since is not None:
            params["since"] = self._bind_time(since)
        with self._store.connect() as conn:
            return [r[0] for r in conn.execute(text(sql), params)]

    def _bind_time(self, value: datetime) -> Any:
        # Text SQL binds no column type: SQLite compares the stored text form.
        if self._store.is_sqlite:
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return value

    def _attempt_filter(
        self, result: str | None, reasons: Sequence[str] | None, since: datetime | None
    ) -> tuple[str, dict[str, Any]]:
        parts, params = [], {}  # type: ignore[var-annotated]
        if result is not None:
            parts.append("result = :result")
            params["result"] = result
        if reasons:
            marks = ", ".join(f":r{i}" for i in range(len(reasons)))
            parts.append(f"reason IN ({marks})")
            params |= {f"r{i}": r for i, r in enumerate(reasons)}
        if since is not None:
            parts.append("occurred_at >= :since")
            params["since"] = self._bind_time(since)
        return " AND ".join(parts) or "1 = 1", params

    def cloned_candidates(self, n: int, since: datetime | None) -> list[int]:
        """Devices scanned again after activation from at least N addresses or fingerprints."""
        pe = pairing_events.c
        q = (
            select(pe.device_pk)
            .where(pe.device_pk.is_not(None), pe.reason == Reason.ALREADY_ACTIVATED)
            .group_by(pe.device_pk)
            .having(
                (func.count(func.distinct(pe.ip)) >= n)
                | (func.count(func.distinct(pe.fingerprint)) >= n)
            )
        )
        if since is not None:
            q = q.where(pe.occurred_at >= since)
        with self._store.connect() as conn:
            return [int(r[0]) for r in conn.execute(q)]

    def revoked_pks(self) -> list[int]:
        q = select(devices.c.id).where(devices.c.status == DeviceStatus.REVOKED)
        with self._store.connect() as conn:
            return [int(r[0]) for r in conn.execute(q)]

    def early_activations(self, pks: Sequence[int] | None = None) -> list[tuple[Any, ...]]:
        """(pk, device_id, created_at, manufactured_at, activated_at) of activated devices
        that may have been activated before they were registered or made: activated before
        created_at, or made on or after the day before their activation (the caller decides
        exactly: a manufacture time may carry any UTC offset)."""
        d = devices.c
        if self._store.is_postgresql:
            day = func.to_char(
                func.timezone("UTC", d.activated_at) - text("interval '1 day'"), "YYYY-MM-DD"
            )
        else:
            day = func.date(d.activated_at, "-1 day")
        q = select(d.id, d.device_id, d.created_at, d.manufactured_at, d.activated_at).where(
            d.activated_at.is_not(None),
            (d.activated_at < d.created_at)
            | (d.manufactured_at.is_not(None) & (func.substr(d.manufactured_at, 1, 10) >= day)),
        )
        rows: list[tuple[Any, ...]] = []
        with self._store.connect() as conn:
            if pks is None:
                return [tuple(r) for r in conn.execute(q)]
            for part in self._chunks(pks):
                rows += [
                    tuple(r) for r in conn.execute(q.where(among_ids(self._store, d.id, part)))
                ]
        return rows

    def dormant_batches(self, idle_since: datetime) -> list[tuple[str, int, int, list[str]]]:
        """(batch, activated devices, those with no action since IDLE_SINCE, a few of their
        ids) for each batch with activated devices. A device's newest action is the entry
        its sealed count points at: one index probe a device, not a scan of the log."""
        d, a = devices.c, action_log.c
        newest = (
            select(a.occurred_at)
            .where(a.device_pk == d.id, a.seq == d.action_count)
            .scalar_subquery()
        )
        dormant = (newest.is_(None)) | (newest < idle_since)
        q = (
            select(batches.c.name, d.device_id, dormant.label("dormant"))
            .select_from(devices.join(batches, batches.c.id == d.batch_id))
            .where(d.status == DeviceStatus.ACTIVATED)
        )
        out: dict[str, list[Any]] = {}
        with self._store.connect() as conn:
            for name, did, idle in conn.execute(q):
                entry = out.setdefault(name, [0, 0, []])
                entry[0] += 1
                if idle:
                    entry[1] += 1
                    if len(entry[2]) < 20:
                        entry[2].append(did)
        return [(name, n, k, ids) for name, (n, k, ids) in sorted(out.items())]

    # -- rule reads: one subject's history -------------------------------------------------------

    def attempts_from(
        self, ips: Sequence[str], result: str | None, reasons: Sequence[str] | None,
        since: datetime | None,
    ) -> list[tuple[Any, ...]]:  # fmt: skip
        """(id, ip, occurred_at, device_pk) of the attempts from IPS, by address and time."""
        pe = pairing_events.c
        rows: list[tuple[Any, ...]] = []
        with self._store.connect() as conn:
            for part in self._chunks(ips):
                q = select(pe.id, pe.ip, pe.occurred_at, pe.device_pk).where(
                    self._store.among(pe.ip, part)
                )
                if result is not None:
                    q = q.where(pe.result == result)
                if reasons:
                    q = q.where(pe.reason.in_(list(reasons)))
                if since is not None:
                    q = q.where(pe.occurred_at >= since)
                rows += [tuple(r) for r in conn.execute(q)]
        return sorted(
            ((i, ip, aware(t), pk) for i, ip, t, pk in rows), key=lambda r: (r[1], r[2], r[0])
        )

    def activations_by(self, users: Sequence[str], since: datetime | None) -> list[tuple[Any, ...]]:
        """(pairing event id, user lower-cased, activated_at, device pk) of the devices the
        USERS activated (through the index on lower(user_id))."""
        d, pe = devices.c, pairing_events.c
        rows: list[tuple[Any, ...]] = []
        with self._store.connect() as conn:
            for part in self._chunks(users):
                q = (
                    select(pe.id, func.lower(d.user_id), d.activated_at, d.id)
                    .select_from(
                        devices.join(
                            pairing_events,
                            and_(pe.device_pk == d.id, pe.result == PairingResult.ACCEPTED),
                        )
                    )
                    .where(self._store.among(func.lower(d.user_id), part))
                    .where(d.activated_at.is_not(None))
                )
                if since is not None:
                    q = q.where(d.activated_at >= since)
                rows += [tuple(r) for r in conn.execute(q)]
        return sorted(
            ((i, u, aware(t), pk) for i, u, t, pk in rows), key=lambda r: (r[1], r[2], r[0])
        )

    def scans_after_activation(
        self, pks: Sequence[int], since: datetime | None
    ) -> list[tuple[Any, ...]]:
        """(id, device_pk, device_id, occurred_at, ip, fingerprint) of the already_activated
        attempts on the devices PKS."""
        pe, d = pairing_events.c, devices.c
        rows: list[tuple[Any, ...]] = []
        with self._store.connect() as conn:
            for part in self._chunks(pks):
                q = (
                    select(pe.id, pe.device_pk, d.device_id, pe.occurred_at, pe.ip, pe.fingerprint)
                    .select_from(pairing_events.join(devices, devices.c.id == pe.device_pk))
                    .where(among_ids(self._store, pe.device_pk, part))
                    .where(pe.reason == Reason.ALREADY_ACTIVATED)
                )
                if since is not None:
                    q = q.where(pe.occurred_at >= since)
                rows += [tuple(r) for r in conn.execute(q)]
        return sorted(
            ((i, pk, did, aware(t), ip, fp) for i, pk, did, t, ip, fp in rows),
            key=lambda r: (r[1], r[3], r[0]),
        )

    def revoked_activity(
        self, pks: Sequence[int], since: datetime | None
    ) -> list[tuple[str, str, int, datetime]]:
        """(device_id, kind, id, occurred_at): the attempts to activate the devices PKS while
        revoked (pairing events, reason revoked_device) and the actions refused because they
        were (action.refused)."""
        pe, al, d = pairing_events.c, action_log.c, devices.c
        out: list[tuple[str, str, int, datetime]] = []
        with self._store.connect() as conn:
            for part in self._chunks(pks):
                q1 = (
                    select(d.device_id, pe.id, pe.occurred_at)
                    .select_from(pairing_events.join(devices, d.id == pe.device_pk))
                    .where(among_ids(self._store, pe.device_pk, part))
                    .where(pe.reason == Reason.REVOKED_DEVICE)
                )
                q2 = (
                    select(d.device_id, al.id, al.occurred_at)
                    .select_from(action_log.join(devices, d.id == al.device_pk))
                    .where(among_ids(self._store, al.device_pk, part))
                    .where(al.action_type == SystemAction.ACTION_REFUSED)
                )
                if since is not None:
                    q1 = q1.where(pe.occurred_at >= since)
                    q2 = q2.where(al.occurred_at >= since)
                out += [(did, "pairing_events", i, aware(t)) for did, i, t in conn.execute(q1)]  # type: ignore[misc]
                out += [(did, "actions", i, aware(t)) for did, i, t in conn.execute(q2)]  # type: ignore[misc]
        return sorted(out, key=lambda r: (r[0], r[3], r[2]))

    def accepted_ids(self, pks: Sequence[int]) -> dict[int, int]:
        """The accepted pairing event of each device of PKS that has one."""
        pe = pairing_events.c
        found: dict[int, int] = {}
        with self._store.connect() as conn:
            for part in self._chunks(pks):
                q = select(pe.device_pk, pe.id).where(
                    among_ids(self._store, pe.device_pk, part), pe.result == PairingResult.ACCEPTED
                )
                found |= {int(pk): int(i) for pk, i in conn.execute(q)}
        return found
