"""Lifetime tracking: the tamper-evident logs, their verification and device history.

The rules of the chains and seals are provision.chain's; this module applies them. Each action
entry and each pairing event is an HMAC over its content and the previous one's hash, and the
device row's state is sealed: a direct UPDATE changes content under a hash that no longer
matches, a DELETE breaks a chain or leaves the recorded head pointing past its end, and without
the keyring nobody can forge a consistent replacement. Restoring an older, consistent copy of a
row (a rollback) is caught by signed checkpoints (provision.checkpoint).
"""

from __future__ import annotations

import hmac
import json
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from provision.chain import UNATTACHED, Sealer, canonical_json, genesis_hash, pairing_genesis
from provision.errors import DeviceError, ProvisionError, worker_deaths
from provision.keys import Keyring
from provision.registry import (
    ActionEntry,
    AuditSnapshot,
    ComponentRecord,
    DeviceRecord,
    NewAction,
    PairingEvent,
    Registry,
    utcnow,
)
from provision.serials import serial_hash, serial_variants
from provision.states import DeviceStatus, Reason, SystemAction
from provision.text import plural, text_problem

if TYPE_CHECKING:
    from provision.checkpoint import Checkpoint

ACTION_TYPE_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
MAX_METADATA_BYTES = 8192
RESERVED_ACTIONS = frozenset(SystemAction)
MAX_REASON_LENGTH = 1000
# Below this many devices one process checks them all; above, one process per CPU takes a share.
PARALLEL_FROM = 20_000


def make_sealer(keyring: Keyring) -> Sealer:
    """The keyed hashes of the logs and seals, under keys derived from the keyring's pepper."""
    return Sealer(keyring.pepper)


def find_device(
    registry: Registry, keyring: Keyring | None, device_id: str | None, serial: str | None
) -> DeviceRecord:
    """A device by its id, or by its serial through the keyed hash (support has the box)."""
    if (device_id is None) == (serial is None):
        raise ProvisionError("give either a DEVICE_ID or --serial SERIAL")
    if serial is not None:
        if keyring is None:
            raise ProvisionError("--serial needs the keyring")
        device = registry.devices.by_serial_hash(serial_hash(keyring.pepper, serial.strip()))
        if device is None:
            hint = _serial_hint(registry, keyring, serial.strip())
            raise DeviceError("no device registered with that serial" + hint)
        return device
    assert device_id is not None
    return resolve_device(registry, device_id)


MIN_ID_PREFIX = 6


def resolve_device(registry: Registry, text: str) -> DeviceRecord:
    """The device an id names as support or a label gives it: the 16 hex characters, with or
    without the label's `ID ` in front, any case, or a unique prefix of at least 6."""
    wanted = text.strip()
    if wanted[:3].upper() == "ID ":
        wanted = wanted[3:]
    wanted = "".join(wanted.split()).lower()
    if not re.fullmatch(r"[0-9a-f]{1,16}", wanted):
        raise DeviceError(f"no device with id {text!r}")
    if len(wanted) < 16:
        if len(wanted) < MIN_ID_PREFIX:
            raise DeviceError(
                f"device id {text!r} is too short: give at least {MIN_ID_PREFIX} of its 16 "
                "characters"
            )
        found = registry.devices.ids_starting(wanted, limit=2)
        if len(found) > 1:
            raise DeviceError(
                f"device id {text!r} fits several devices ({', '.join(found)}, ...); "
                "give more of its characters"
            )
        if found:
            wanted = found[0]
    device = registry.devices.get(wanted)
    if device is None:
        raise DeviceError(f"no device with id {text!r}")
    return device


def _serial_hint(registry: Registry, keyring: Keyring, serial: str) -> str:
    """ "; did you mean 'TH200-...'?" when the serial matches a registered one after a change of
    case or white space. Looked up through the keyed hash of each variant, so no plaintext
    serial is ever stored or compared (serials are compared exactly, as GS1 has it)."""
    hashes = {serial_hash(keyring.pepper, v): v for v in serial_variants(serial)}
    found = registry.devices.existing_by_hash(list(hashes))
    matches = sorted(hashes[h] for h in found)
    if not matches:
        return ""
    return f"; did you mean {matches[0]!r}? (serials are compared exactly: case and spaces count)"


def log_action(
    registry: Registry,
    keyring: Keyring,
    device: DeviceRecord,
    action_type: str,
    metadata: dict[str, Any] | None = None,
    *,
    ip: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> ActionEntry:
    """Append one action to the device's chain; returns the stored entry.

    A revoked device's log takes no more actions: the attempt is recorded as action.refused
    (the revoked_device_activity alert reads it) and DeviceError (reason revoked_device) is
    raised. The status is checked again under the device row's lock, so a revocation that
    commits meanwhile is honoured too.
    """
    when = now or utcnow()
    refusal = _refusal(device, action_type, ip, actor, when)
    if device.status == DeviceStatus.REVOKED:
        registry.events.append_action(device.id, device.device_id, refusal, make_sealer(keyring))
        raise _revoked(device)
    if not ACTION_TYPE_RE.fullmatch(action_type):
        raise ProvisionError(
            f"action type {action_type!r}: use 1-64 lower-case letters, digits, '_', '.', ':' "
            "or '-', starting with a letter"
        )
    if action_type in RESERVED_ACTIONS or action_type.startswith("recall."):
        # Only provision writes these (activation, revocation, re-signing, recalls): a device
        # app logging `activated` or `recall.released` would make its history lie.
        raise ProvisionError(f"action type {action_type!r} is reserved for provision itself")
    meta = canonical_json(metadata or {})
    if len(meta.encode()) > MAX_METADATA_BYTES:
        raise ProvisionError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    action = NewAction(action_type, meta, ip, actor, when)
    entry = registry.events.append_action(
        device.id, device.device_id, action, make_sealer(keyring), when_revoked=refusal
    )
    if entry.action_type == SystemAction.ACTION_REFUSED:
        raise _revoked(device)
    return entry


def _refusal(
    device: DeviceRecord, action_type: object, ip: str | None, actor: str | None, when: datetime
) -> NewAction:
    tried = (
        action_type
        if isinstance(action_type, str) and ACTION_TYPE_RE.fullmatch(action_type)
        else None
    )
    meta = canonical_json({"action_type": tried, "reason": Reason.REVOKED_DEVICE.value})
    return NewAction(SystemAction.ACTION_REFUSED, meta, ip, actor or device.user_id, when)


def _revoked(device: DeviceRecord) -> DeviceError:
    return DeviceError(
        f"device {device.device_id} is revoked: its log takes no more actions "
        "(the attempt is recorded as action.refused)",
        reason=Reason.REVOKED_DEVICE,
    )


def record_refused_action(
    registry: Registry,
    keyring: Keyring,
    device: DeviceRecord,
    action_type: object,
    *,
    ip: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> ActionEntry:
    """A revoked device's token tried to log an action: refused, and recorded in the device's
    chain as action.refused (the revoked_device_activity alert reads it)."""
    refusal = _refusal(device, action_type, ip, actor, now or utcnow())
    return registry.events.append_action(device.id, device.device_id, refusal, make_sealer(keyring))


def check_reason(reason: str, why: str = "why the device is revoked") -> str:
    """REASON trimmed, or a ProvisionError saying what is wrong with it."""
    reason = reason.strip()
    if not reason:
        raise ProvisionError(f"--reason must say {why}")
    if len(reason) > MAX_REASON_LENGTH:
        raise ProvisionError(f"--reason is longer than {MAX_REASON_LENGTH} characters")
    if problem := text_problem(reason):
        raise ProvisionError(f"--reason {problem}")
    return reason


def revoke(
    registry: Registry,
    keyring: Keyring,
    device: DeviceRecord,
    reason: str,
    by: str,
    now: datetime | None = None,
    ip: str | None = None,
) -> None:
    reason = check_reason(reason)
    if not registry.events.revoke(
        device.id, device.device_id, by, reason, now or utcnow(), make_sealer(keyring), ip
    ):
        raise DeviceError(f"device {device.device_id} is already revoked")


def unrevoke(
    registry: Registry,
    keyring: Keyring,
    device: DeviceRecord,
    reason: str,
    by: str,
    now: datetime | None = None,
    ip: str | None = None,
) -> str:
    """Undo a revocation (a mistaken one, or a device found again); returns the status the
    device has now: activated if it had been activated, else pending."""
    reason = check_reason(reason, "why the revocation is undone")
    status = registry.events.unrevoke(
        device.id, device.device_id, by, reason, now or utcnow(), make_sealer(keyring), ip
    )
    if status is None:
        raise DeviceError(f"device {device.device_id} is not revoked")
    return status


@dataclass(frozen=True)
class ChainProblem:
    """The first broken entry of one of a device's chains, or its broken seal.

    `chain` is "actions", "pairing" (the device's activation attempts, or, with device_id
    "#unattached", the attempts that named no registered device), "seal" or "checkpoint".
    """

    device_id: str
    seq: int | None
    entry_id: int | None
    problem: str
    chain: str = "actions"

    def __str__(self) -> str:
        noun = "pairing event" if self.chain == "pairing" else "entry"
        where = f" {noun} #{self.seq}" if self.seq is not None else ""
        ident = f" (row id {self.entry_id})" if self.entry_id is not None else ""
        who = "unattached attempts" if self.device_id == UNATTACHED else f"device {self.device_id}"
        return f"{who}{where}{ident}: {self.problem}"

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "chain": self.chain,
            "seq": self.seq,
            "entry_id": self.entry_id,
            "problem": self.problem,
        }


@dataclass
class AuditReport:
    devices: int = 0
    entries: int = 0
    events: int = 0
    problems: list[ChainProblem] = field(default_factory=list)
    checkpoint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, other: AuditReport) -> None:
        self.devices += other.devices
        self.entries += other.entries
        self.events += other.events
        self.problems += other.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "devices_checked": self.devices,
            "entries_checked": self.entries,
            "pairing_events_checked": self.events,
            "checkpoint": self.checkpoint,
            "problems": [p.to_json() for p in self.problems],
        }

    def summary(self) -> str:
        return (
            f"{plural(self.devices, 'device')}, {plural(self.entries, 'entry', 'entries')}, "
            f"{plural(self.events, 'pairing event')} checked"
            + (f" against checkpoint {self.checkpoint}" if self.checkpoint else "")
            + ": "
            + ("all chains and seals intact" if self.ok else f"{len(self.problems)} broken")
        )


def verify_chains(
    registry: Registry,
    keyring: Keyring,
    device_id: str | None = None,
    *,
    checkpoint: Checkpoint | None = None,
    workers: int | None = None,
) -> AuditReport:
    """Recompute every chain and seal (or one device's); name the first break of each.

    With CHECKPOINT, also report every device whose chains are shorter than the checkpoint
    recorded or do not extend what it recorded (a rollback), and every device it names that is
    gone. A registry of many devices is split between WORKERS processes (default: one a CPU).
    """
    sealer = make_sealer(keyring)
    if device_id is not None:
        # Device ids are lower-case hex; accept them as typed, like `history` does.
        pk = resolve_device(registry, device_id).id
        with registry.audit_snapshot() as snap:
            one = _verify_range(snap, sealer, pk, pk, checkpoint)
        one.checkpoint = checkpoint.name if checkpoint else None
        return one

    with registry.audit_snapshot() as snap:
        bounds = snap.bounds()
    report = AuditReport(checkpoint=checkpoint.name if checkpoint else None)
    found: set[str] = set()
    if bounds is not None:
        lo, hi = bounds
        n = workers or (os.cpu_count() or 1)
        ranges = _split(lo, hi, n if hi - lo + 1 >= PARALLEL_FROM else 1)
        parts: list[_RangeReport]
        if len(ranges) == 1:
            with registry.audit_snapshot() as snap:
                parts = [_verify_range(snap, sealer, lo, hi, checkpoint)]
        else:
            ctx = multiprocessing.get_context("fork")
            global _WORKER_ARGS
            _WORKER_ARGS = (registry.url, sealer, checkpoint)
            try:
                # An executor, not multiprocessing.Pool: a worker killed meanwhile (the OOM
                # killer, kill -9) fails the run, where Pool would wait for its range forever.
                with (
                    worker_deaths("audit verify", "nothing verified; run it again"),
                    ProcessPoolExecutor(len(ranges), mp_context=ctx) as pool,
                ):
                    parts = list(pool.map(_verify_worker, ranges))
            finally:
                _WORKER_ARGS = None
        for part in parts:
            report.add(part)
            found |= part.found
    with registry.audit_snapshot() as snap:
        unattached = _verify_unattached(snap, sealer, checkpoint)
    report.add(unattached)
    if checkpoint is not None:
        report.problems += [
            ChainProblem(
                did,
                None,
                None,
                "the checkpoint records it; the registry has no such device",
                "checkpoint",
            )
            for did in checkpoint.missing(found)
        ]
    return report


def verify_devices(registry: Registry, keyring: Keyring, pks: Sequence[int]) -> AuditReport:
    """Verify the chains and seals of the devices with row ids PKS (those an alerts run saw
    new rows for), each through its index, in one snapshot."""
    sealer = make_sealer(keyring)
    report = AuditReport()
    with registry.audit_snapshot() as snap:
        for pk in sorted(set(pks)):
            report.add(_verify_range(snap, sealer, pk, pk, None))
    return report


_WORKER_ARGS: tuple[str, Sealer, Checkpoint | None] | None = None


def _verify_worker(bounds: tuple[int, int]) -> _RangeReport:
    """One process's share of verify_chains (forked: it inherits the sealer and checkpoint)."""
    assert _WORKER_ARGS is not None
    url, sealer, checkpoint = _WORKER_ARGS
    registry = Registry(url, migrate=False)
    try:
        with registry.audit_snapshot() as snap:
            return _verify_range(snap, sealer, bounds[0], bounds[1], checkpoint)
    finally:
        registry.close()


def _split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, -(-(hi - lo + 1) // parts))
    return [(a, min(hi, a + step - 1)) for a in range(lo, hi + 1, step)]


@dataclass
class _RangeReport(AuditReport):
    found: set[str] = field(default_factory=set)


def _verify_range(
    snap: AuditSnapshot, sealer: Sealer, lo: int, hi: int, checkpoint: Checkpoint | None
) -> _RangeReport:
    """Check devices LO..HI: their seals, action chains and pairing chains, in one merge pass."""
    report = _RangeReport()
    problems = report.problems
    actions = snap.actions(lo, hi)
    pairings = snap.pairings(lo, hi)
    a = next(actions, None)
    p = next(pairings, None)
    compare = hmac.compare_digest
    for dev in snap.devices(lo, hi):
        pk, seal, did = dev[0], dev[1], dev[2]
        status, action_count, action_head, pairing_count, pairing_head = (
            dev[6],
            dev[13],
            dev[14],
            dev[15],
            dev[16],
        )
        report.devices += 1
        while a is not None and a[0] < pk:  # entries of a device row that is gone
            problems.append(ChainProblem(f"row {a[0]}", a[1], a[2], "entry of a deleted device"))
            a = _skip(actions, a[0])
        while p is not None and p[0] < pk:
            problems.append(
                ChainProblem(f"row {p[0]}", p[1], p[2], "event of a deleted device", "pairing")
            )
            p = _skip(pairings, p[0])
        if not compare(sealer.device_values(*dev[2:]), seal or ""):
            problems.append(
                ChainProblem(
                    did,
                    None,
                    None,
                    "the device row's seal does not match its state (status, user, activation, "
                    "revocation or chain heads changed directly in the database)",
                    "seal",
                )
            )
        expect = checkpoint.expect(did) if checkpoint is not None else None
        if expect is not None:
            report.found.add(did)

        # -- its actions
        prev = genesis_hash(did)
        n = 0
        last: tuple[Any, ...] | None = None
        broken = False
        cp_seq = expect[0] if expect else 0
        cp_ok = cp_seq == 0
        while a is not None and a[0] == pk:
            n += 1
            if not broken:
                _, seq, eid, at, action_type, meta, ip, actor, prev_hash, entry = a
                problem = None
                if seq != n:
                    problems.append(
                        ChainProblem(
                            did, n, None, f"entry missing (deleted?): the log jumps to #{seq}"
                        )
                    )
                    broken = True
                elif prev_hash != prev:
                    problem = "link to the previous entry is broken (entry deleted or replaced)"
                elif not compare(
                    sealer.action(did, seq, at, action_type, meta, ip, actor, prev_hash), entry
                ):
                    problem = "content changed after it was written"
                if problem is not None:
                    problems.append(ChainProblem(did, seq, eid, problem))
                    broken = True
                elif not broken:
                    prev = entry
                    last = a
                    if seq == cp_seq and expect is not None:
                        cp_ok = sealer.action_head(did, seq, at, entry)[:16] == expect[1]
            a = next(actions, None)
        report.entries += n
        if not broken:
            if action_count != n:
                problems.append(
                    ChainProblem(
                        did,
                        n + 1 if action_count > n else None,
                        None,
                        f"the device records {action_count} entries, the log holds {n} "
                        "(newest entries deleted or head altered)",
                    )
                )
            elif n == 0:
                if status != DeviceStatus.PENDING:
                    problems.append(
                        ChainProblem(
                            did, 1, None, f"the device is {status} but its action log is empty"
                        )
                    )
            else:
                assert last is not None
                head = sealer.action_head(did, last[1], last[3], prev)
                if not compare(head, action_head or ""):
                    problems.append(
                        ChainProblem(
                            did,
                            last[1] + 1,
                            None,
                            "the device's sealed chain head does not match the newest entry "
                            "(newest entries deleted and the head rewound)",
                        )
                    )

        # -- its activation attempts
        prev = pairing_genesis(did)
        m = 0
        broken_p = False
        last_p: tuple[Any, ...] | None = None
        cp_pseq = expect[2] if expect else 0
        cp_pok = cp_pseq == 0
        while p is not None and p[0] == pk:
            m += 1
            if not broken_p:
                if _pairing_problem(sealer, did, m, p, prev, problems):
                    broken_p = True
                else:
                    prev = p[12]
                    last_p = p
                    if p[1] == cp_pseq and expect is not None:
                        cp_pok = sealer.pairing_head(did, p[1], prev)[:16] == expect[3]
            p = next(pairings, None)
        report.events += m
        if not broken_p:
            _pairing_end(sealer, did, m, pairing_count, pairing_head, last_p, prev, problems)

        # -- against the checkpoint
        if expect is not None:
            _against_checkpoint(did, expect, n, m, cp_ok, cp_pok, problems)
    while a is not None:
        problems.append(ChainProblem(f"row {a[0]}", a[1], a[2], "entry of a deleted device"))
        a = _skip(actions, a[0])
    while p is not None:
        problems.append(
            ChainProblem(f"row {p[0]}", p[1], p[2], "event of a deleted device", "pairing")
        )
        p = _skip(pairings, p[0])
    return report


def _skip(rows: Iterator[tuple[Any, ...]], pk: int) -> tuple[Any, ...] | None:
    """The first row after those of device row PK."""
    for row in rows:
        if row[0] != pk:
            return row
    return None


def _pairing_problem(
    sealer: Sealer,
    chain: str,
    expected: int,
    e: tuple[Any, ...],
    prev: str,
    problems: list[ChainProblem],
) -> bool:
    """Check one pairing event (AUDIT_PAIRING_COLUMNS order); True when it is broken."""
    _, seq, eid, at, claimed, ip, ua, fp, user, result, reason, prev_hash, entry = e
    if seq != expected:
        problems.append(
            ChainProblem(
                chain,
                expected,
                None,
                f"event missing (deleted?): the log jumps to #{seq}",
                "pairing",
            )
        )
        return True
    problem = None
    if prev_hash != prev:
        problem = "link to the previous event is broken (event deleted or replaced)"
    elif not hmac.compare_digest(
        sealer.pairing(chain, seq, at, claimed, ip, ua, fp, user, result, reason, prev_hash),
        entry,
    ):
        problem = "content changed after it was written"
    if problem is not None:
        problems.append(ChainProblem(chain, seq, eid, problem, "pairing"))
        return True
    return False


def _pairing_end(
    sealer: Sealer,
    chain: str,
    n: int,
    count: int,
    head: str | None,
    last: tuple[Any, ...] | None,
    prev: str,
    problems: list[ChainProblem],
) -> None:
    """The recorded count and sealed head of a pairing chain against its events."""
    if count != n:
        problems.append(
            ChainProblem(
                chain,
                n + 1 if count > n else None,
                None,
                f"{count} pairing events recorded, the log holds {n} "
                "(newest events deleted or head altered)",
                "pairing",
            )
        )
    elif last is not None and not hmac.compare_digest(
        sealer.pairing_head(chain, last[1], prev), head or ""
    ):
        problems.append(
            ChainProblem(
                chain,
                last[1] + 1,
                None,
                "the sealed head does not match the newest event "
                "(newest events deleted and the head rewound)",
                "pairing",
            )
        )


def _against_checkpoint(
    did: str,
    expect: tuple[int, str, int, str],
    actions: int,
    events: int,
    actions_extend: bool,
    events_extend: bool,
    problems: list[ChainProblem],
) -> None:
    for what, now, then, extends in (
        ("action log", actions, expect[0], actions_extend),
        ("pairing log", events, expect[2], events_extend),
    ):
        if now < then:
            problems.append(
                ChainProblem(
                    did,
                    now + 1,
                    None,
                    f"the {what} holds {now} entries, the checkpoint recorded {then} "
                    "(rolled back?)",
                    "checkpoint",
                )
            )
        elif not extends:
            problems.append(
                ChainProblem(
                    did,
                    then,
                    None,
                    f"the {what} does not extend what the checkpoint recorded "
                    f"(entry #{then} differs)",
                    "checkpoint",
                )
            )


def _verify_unattached(
    snap: AuditSnapshot, sealer: Sealer, checkpoint: Checkpoint | None
) -> AuditReport:
    """The chain of attempts that named no registered device."""
    report = AuditReport()
    head = snap.chain(UNATTACHED)
    if head is None:
        report.problems.append(
            ChainProblem(UNATTACHED, None, None, "the chain's head row is missing", "pairing")
        )
        return report
    count, recorded = head
    prev = pairing_genesis(UNATTACHED)
    n = 0
    broken = False
    last: tuple[Any, ...] | None = None
    cp = checkpoint.unattached if checkpoint is not None else None
    cp_ok = cp is None or cp[0] == 0
    for e in snap.unattached():
        n += 1
        if broken:
            continue
        if _pairing_problem(sealer, UNATTACHED, n, e, prev, report.problems):
            broken = True
            continue
        prev = e[12]
        last = e
        if cp is not None and e[1] == cp[0]:
            cp_ok = sealer.pairing_head(UNATTACHED, e[1], prev)[:16] == cp[1]
    report.events = n
    if not broken:
        _pairing_end(sealer, UNATTACHED, n, count, recorded, last, prev, report.problems)
    if cp is not None:
        if n < cp[0]:
            report.problems.append(
                ChainProblem(
                    UNATTACHED,
                    n + 1,
                    None,
                    f"the log holds {n} events, the checkpoint recorded {cp[0]} (rolled back?)",
                    "checkpoint",
                )
            )
        elif not cp_ok:
            report.problems.append(
                ChainProblem(
                    UNATTACHED,
                    cp[0],
                    None,
                    "the log does not extend what the checkpoint recorded",
                    "checkpoint",
                )
            )
    return report


def device_history(
    registry: Registry, device: DeviceRecord, limit: int | None = None
) -> dict[str, Any]:
    """Everything known about a device, oldest first: factory, components, pairing, actions.

    The operator's view: every activation attempt, with who made it and from where.
    """
    events = registry.events.pairing_events_of(device.id, limit)
    return _history(registry, device, events, limit)


def owner_history(
    registry: Registry, device: DeviceRecord, limit: int | None = None
) -> dict[str, Any]:
    """The device's history as its owner (its activation token) may read it.

    The device's own actions and its own successful activation; everybody else's attempts only
    as counts by reason, never with a user, address, user agent or fingerprint: whoever won the
    activation with a photographed label must not learn the real customer's e-mail.
    """
    own = registry.events.accepted_pairing_of(device.id)
    history = _history(registry, device, [own] if own else [], limit)
    others = registry.events.rejected_pairing_counts(device.id)
    history["other_attempts"] = {
        "total": sum(others.values()),
        "by_reason": dict(sorted(others.items())),
    }
    return history


def _history(
    registry: Registry, device: DeviceRecord, events: list[PairingEvent], limit: int | None
) -> dict[str, Any]:
    """The history as JSON: the one place a record's columns become the JSON keys."""
    comps = registry.devices.components_of(device.id)
    actions = registry.events.actions_of(device.id, limit)
    return {
        "device": device_json(registry, device),
        "components": [component_json(c) for c in comps],
        "pairing_events": [
            {
                "occurred_at": _iso(e.occurred_at),
                "result": e.result,
                "reason": e.reason,
                "user": e.user_id,
                "ip": e.ip,
                "user_agent": e.user_agent,
                "fingerprint": e.fingerprint,
            }
            for e in events
        ],
        "actions": [
            {
                "id": a.id,
                "seq": a.seq,
                "occurred_at": _iso(a.occurred_at),
                "action_type": a.action_type,
                "metadata": json.loads(a.metadata_json),
                "ip": a.ip,
                "actor": a.actor,
            }
            for a in actions
        ],
    }


def device_json(registry: Registry, device: DeviceRecord) -> dict[str, Any]:
    """A device as `history --json` and the API show it."""
    return {
        "device_id": device.device_id,
        "device_type": device.device_type,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "manufactured_at": device.manufactured_at,
        "line": device.production_line,
        "batch": registry.batches.name_of(device.batch_id),
        "key_id": device.key_id,
        "status": device.status,
        "registered_at": _iso(device.created_at),
        "expires_at": _iso(device.expires_at),
        "activated_at": _iso(device.activated_at),
        "user": device.user_id,
        "revoked_at": _iso(device.revoked_at),
        "revoked_by": device.revoked_by,
        "revoked_reason": device.revoked_reason,
        "actions_total": device.action_count,
        "pairing_events_total": device.pairing_count,
    }


def component_json(c: ComponentRecord) -> dict[str, Any]:
    return {
        "component_type": c.component_type,
        "component_spec": c.component_spec,
        "supplier": c.supplier,
        "lot": c.lot,
        "has_component_serial": c.component_serial_ct is not None,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
