"""Recalls: a trace query and the devices it matched, kept; optionally a hold on activation.

`create_recall` stores the query (the component serial only as its keyed hash) and the devices
it matches at that moment; with `hold`, its pending devices cannot be activated (reason code
`recalled`) until each is released (`release_device`) or the recall is closed
(`close_recall`). Every one of these events is an action in each affected device's chain
(states.SystemAction.RECALL_*), with the recall's name, reason and hold, by the operator.
`export_owners` lists the owners of its activated devices, for their notification.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from provision.audit import MAX_REASON_LENGTH, make_sealer, resolve_device
from provision.chain import canonical_json
from provision.errors import RecallError
from provision.keys import Keyring
from provision.registry import (
    DeviceRecord,
    NewAction,
    RecallCounts,
    RecallRecord,
    Registry,
    utcnow,
)
from provision.states import SystemAction
from provision.text import text_problem
from provision.trace import TraceQuery, write_csv_rows

# Like batch names: a recall's name may become a file name (an export, a report).
RECALL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
OWNER_COLUMNS = ("device_id", "user", "activated_at")


@dataclass(frozen=True)
class RecallInfo:
    """A recall and its devices' counts, as `recall show` and `recall list` print them."""

    recall: RecallRecord
    counts: RecallCounts

    def to_json(self) -> dict[str, Any]:
        r, c = self.recall, self.counts
        return {
            "name": r.name,
            "reason": r.reason,
            "query": _query(r),
            "hold": r.hold,
            "state": "open" if r.is_open else "closed",
            "created_at": r.created_at.isoformat(),
            "created_by": r.created_by,
            "closed_at": r.closed_at.isoformat() if r.closed_at else None,
            "closed_by": r.closed_by,
            "devices": c.devices,
            "by_status": c.by_status,
            "held": c.held,
            "released": c.released,
        }


def _query(recall: RecallRecord) -> dict[str, Any]:
    value = json.loads(recall.query_json)
    return value if isinstance(value, dict) else {}


def check_name(name: str) -> str:
    if not RECALL_NAME_RE.fullmatch(name):
        raise RecallError(
            f"recall name {name!r} is not usable: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise RecallError("--reason must say why the devices are recalled")
    if len(reason) > MAX_REASON_LENGTH:
        raise RecallError(f"--reason is longer than {MAX_REASON_LENGTH} characters")
    if problem := text_problem(reason):
        raise RecallError(f"--reason {problem}")
    return reason


def get_recall(registry: Registry, name: str) -> RecallRecord:
    recall = registry.recalls.get(check_name(name))
    if recall is None:
        raise RecallError(f"no recall named {name!r} (see `provision recall list`)")
    return recall


def _action(
    recall: str, reason: str, hold: bool, kind: SystemAction, actor: str, now: datetime
) -> NewAction:
    """The action a recall event appends to each affected device's chain."""
    meta = canonical_json({"recall": recall, "reason": reason, "hold": hold})
    return NewAction(kind, meta, None, actor, now)


def create_recall(
    registry: Registry,
    keyring: Keyring,
    name: str,
    query: TraceQuery,
    reason: str,
    *,
    hold: bool,
    actor: str,
    now: datetime | None = None,
) -> RecallInfo:
    """Record a recall of the devices QUERY matches now (see the module docstring)."""
    name = check_name(name)
    reason = check_reason(reason)
    wanted = query.resolve(keyring)
    action = _action(name, reason, hold, SystemAction.RECALL_CREATED, actor, now or utcnow())
    recall = registry.recalls.create(
        name,
        reason,
        canonical_json(wanted.to_json()),
        hold,
        wanted,
        action,
        make_sealer(keyring),
    )
    return RecallInfo(recall, registry.recalls.counts(recall))


def list_recalls(registry: Registry) -> list[RecallInfo]:
    return [RecallInfo(r, c) for r, c in registry.recalls.all()]


def show_recall(registry: Registry, name: str) -> RecallInfo:
    recall = get_recall(registry, name)
    return RecallInfo(recall, registry.recalls.counts(recall))


@dataclass(frozen=True)
class Released:
    """A device released from a recall, and the recall that still holds it, if one does."""

    device: DeviceRecord
    recall: RecallRecord
    still_held_by: str | None


def release_device(
    registry: Registry,
    keyring: Keyring,
    name: str,
    device_text: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> Released:
    """Release one device from an open recall: its hold no longer stops the activation."""
    recall = get_recall(registry, name)
    device = resolve_device(registry, device_text)
    if not recall.is_open:
        raise RecallError(f"recall {recall.name} is closed: it holds no device any more")
    member = registry.recalls.member(recall.id, device.id)
    if member is None:
        raise RecallError(f"device {device.device_id} is not in recall {recall.name}")
    if member.released_at is not None:
        raise RecallError(
            f"device {device.device_id} was released from recall {recall.name} "
            f"at {member.released_at.isoformat()} by {member.released_by}"
        )
    action = _action(
        recall.name,
        recall.reason,
        recall.hold,
        SystemAction.RECALL_RELEASED,
        actor,
        now or utcnow(),
    )
    if not registry.recalls.release(recall.id, device.id, action, make_sealer(keyring)):
        # Released or closed by someone else between the checks and the UPDATE.
        raise RecallError(f"device {device.device_id} is no longer held by recall {recall.name}")
    return Released(device, recall, registry.recalls.holding(device.id))


def close_recall(
    registry: Registry,
    keyring: Keyring,
    name: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> RecallInfo:
    """Close an open recall: its hold ends, and each of its devices' histories says so."""
    recall = get_recall(registry, name)
    if not recall.is_open:
        raise RecallError(f"recall {recall.name} is closed already")
    action = _action(
        recall.name, recall.reason, recall.hold, SystemAction.RECALL_CLOSED, actor, now or utcnow()
    )
    if registry.recalls.close(recall.id, action, make_sealer(keyring)) is None:
        raise RecallError(f"recall {recall.name} is closed already")
    return show_recall(registry, recall.name)


def export_owners(registry: Registry, name: str, fh: TextIO) -> int:
    """Write the owners of the recall's activated devices (not released from it) to FH as
    formula-safe CSV, streamed: device id, user, activated_at. Returns how many."""
    recall = get_recall(registry, name)
    count = 0

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal count
        for owner in registry.recalls.owners(recall.id):
            count += 1
            yield owner.device_id, owner.user_id, owner.activated_at

    write_csv_rows(fh, OWNER_COLUMNS, rows())
    return count
