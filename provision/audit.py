"""Lifetime tracking: the tamper-evident action log, its verification and device history.

Each entry's hash is an HMAC (under a key derived from the keyring pepper) over the entry and
the previous entry's hash. A direct UPDATE changes the content under a hash that no longer
matches; a DELETE breaks the chain or leaves the device's recorded head pointing past the end.
Without the keyring, nobody can forge a consistent replacement chain.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from provision.errors import DeviceError, ProvisionError
from provision.keys import Keyring
from provision.registry import (
    CHAIN_HEAD,
    PENDING,
    Registry,
    Seal,
    canonical_json,
    genesis_hash,
    utcnow,
)
from provision.serials import serial_hash

_AUDIT_DOMAIN = b"provision/action-log/v1\x00"
ACTION_TYPE_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
MAX_METADATA_BYTES = 8192


def audit_key(keyring: Keyring) -> bytes:
    return hmac.new(keyring.pepper, _AUDIT_DOMAIN, hashlib.sha256).digest()


def make_seal(keyring: Keyring) -> Seal:
    key = audit_key(keyring)

    def seal(
        device_id: str,
        seq: int,
        occurred_at: datetime,
        action_type: str,
        metadata_json: str,
        ip: str | None,
        actor: str | None,
        prev_hash: str,
    ) -> str:
        stamp = occurred_at.astimezone(UTC).isoformat(timespec="microseconds")
        body = json.dumps(
            [device_id, seq, stamp, action_type, metadata_json, ip, actor, prev_hash],
            separators=(",", ":"),
        )
        return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()

    return seal


def find_device(
    registry: Registry, keyring: Keyring | None, device_id: str | None, serial: str | None
) -> dict[str, Any]:
    """A device by its id, or by its serial through the keyed hash (support has the box)."""
    if (device_id is None) == (serial is None):
        raise ProvisionError("give either a DEVICE_ID or --serial SERIAL")
    if serial is not None:
        if keyring is None:
            raise ProvisionError("--serial needs the keyring")
        device = registry.device_by_serial_hash(serial_hash(keyring.pepper, serial.strip()))
        if device is None:
            raise DeviceError("no device registered with that serial")
        return device
    assert device_id is not None
    device = registry.device(device_id.strip().lower())
    if device is None:
        raise DeviceError(f"no device with id {device_id!r}")
    return device


def log_action(
    registry: Registry,
    keyring: Keyring,
    device: dict[str, Any],
    action_type: str,
    metadata: dict[str, Any] | None = None,
    *,
    ip: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Append one action to the device's chain; returns the stored entry."""
    if not ACTION_TYPE_RE.fullmatch(action_type):
        raise ProvisionError(
            f"action type {action_type!r}: use 1-64 lower-case letters, digits, '_', '.', ':' "
            "or '-', starting with a letter"
        )
    meta = canonical_json(metadata or {})
    if len(meta.encode()) > MAX_METADATA_BYTES:
        raise ProvisionError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return registry.append_action(
        device["id"],
        device["device_id"],
        action_type,
        meta,
        ip,
        actor,
        now or utcnow(),
        make_seal(keyring),
    )


def revoke(
    registry: Registry,
    keyring: Keyring,
    device: dict[str, Any],
    reason: str,
    by: str,
    now: datetime | None = None,
) -> None:
    if not reason.strip():
        raise ProvisionError("--reason must say why the device is revoked")
    if not registry.revoke_device(
        device["id"], device["device_id"], by, reason.strip(), now or utcnow(), make_seal(keyring)
    ):
        raise DeviceError(f"device {device['device_id']} is already revoked")


@dataclass(frozen=True)
class ChainProblem:
    """The first broken entry of one device's chain."""

    device_id: str
    seq: int | None
    entry_id: int | None
    problem: str

    def __str__(self) -> str:
        where = f" entry #{self.seq}" if self.seq is not None else ""
        ident = f" (row id {self.entry_id})" if self.entry_id is not None else ""
        return f"device {self.device_id}{where}{ident}: {self.problem}"


@dataclass
class AuditReport:
    devices: int
    entries: int
    problems: list[ChainProblem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "devices_checked": self.devices,
            "entries_checked": self.entries,
            "problems": [
                {
                    "device_id": p.device_id,
                    "seq": p.seq,
                    "entry_id": p.entry_id,
                    "problem": p.problem,
                }
                for p in self.problems
            ],
        }


def verify_chains(
    registry: Registry, keyring: Keyring, device_id: str | None = None
) -> AuditReport:
    """Recompute every chain; name the first broken entry of each device."""
    seal = make_seal(keyring)
    report = AuditReport(0, 0, [])
    found_any = False
    # Device ids are lower-case hex; accept them as typed, like `history` does.
    wanted = device_id.strip().lower() if device_id is not None else None
    for head, entries in registry.iter_chains(wanted):
        found_any = True
        report.devices += 1
        report.entries += len(entries)
        problem = _check_chain(head, entries, seal)
        if problem:
            report.problems.append(problem)
    if device_id is not None and not found_any:
        raise DeviceError(f"no device with id {device_id!r}")
    return report


def _check_chain(
    head: dict[str, Any], entries: list[dict[str, Any]], seal: Seal
) -> ChainProblem | None:
    did = head["device_id"]
    prev = genesis_hash(did)
    for expected_seq, e in enumerate(entries, start=1):
        if e["seq"] != expected_seq:
            return ChainProblem(
                did, expected_seq, None, f"entry missing (deleted?): the log jumps to #{e['seq']}"
            )
        if e["prev_hash"] != prev:
            return ChainProblem(
                did,
                e["seq"],
                e["id"],
                "link to the previous entry is broken (entry deleted or replaced)",
            )
        recomputed = seal(
            did,
            e["seq"],
            e["occurred_at"],
            e["action_type"],
            e["metadata_json"],
            e["ip"],
            e["actor"],
            e["prev_hash"],
        )
        if not hmac.compare_digest(recomputed, e["entry_hash"]):
            return ChainProblem(did, e["seq"], e["id"], "content changed after it was written")
        prev = e["entry_hash"]
    if head["action_count"] != len(entries):
        return ChainProblem(
            did,
            len(entries) + 1 if head["action_count"] > len(entries) else None,
            None,
            f"the device records {head['action_count']} entries, the log holds {len(entries)} "
            "(newest entries deleted or head altered)",
        )
    if not entries:
        if head["status"] != PENDING:
            return ChainProblem(
                did, 1, None, f"the device is {head['status']} but its action log is empty"
            )
        return None
    last = entries[-1]
    expected = seal(did, last["seq"], last["occurred_at"], CHAIN_HEAD, "", None, None, prev)
    if not hmac.compare_digest(expected, head["action_head"] or ""):
        return ChainProblem(
            did,
            last["seq"] + 1,
            None,
            "the device's sealed chain head does not match the newest entry "
            "(newest entries deleted and the head rewound)",
        )
    return None


def device_history(
    registry: Registry, device: dict[str, Any], limit: int | None = None
) -> dict[str, Any]:
    """Everything known about a device, oldest first: factory, components, pairing, actions."""
    pk = device["id"]
    comps = registry.device_components(pk)
    events = registry.pairing_events_of(pk, limit)
    actions = registry.actions_of(pk, limit)
    return {
        "device": {
            "device_id": device["device_id"],
            "device_type": device["device_type"],
            "manufacturer": device["manufacturer"],
            "model": device["model"],
            "manufactured_at": device["manufactured_at"],
            "line": device["production_line"],
            "batch": registry.batch_name(device["batch_id"]),
            "key_id": device["key_id"],
            "status": device["status"],
            "registered_at": _iso(device["created_at"]),
            "expires_at": _iso(device["expires_at"]),
            "activated_at": _iso(device["activated_at"]),
            "user": device["user_id"],
            "revoked_at": _iso(device["revoked_at"]),
            "revoked_by": device["revoked_by"],
            "revoked_reason": device["revoked_reason"],
            "actions_total": device["action_count"],
        },
        "components": [
            {
                "component_type": c["component_type"],
                "component_spec": c["component_spec"],
                "supplier": c["supplier"],
                "lot": c["lot"],
                "has_component_serial": c["component_serial_ct"] is not None,
            }
            for c in comps
        ],
        "pairing_events": [
            {
                "occurred_at": _iso(e["occurred_at"]),
                "result": e["result"],
                "reason": e["reason"],
                "user": e["user_id"],
                "ip": e["ip"],
                "user_agent": e["user_agent"],
                "fingerprint": e["fingerprint"],
            }
            for e in events
        ],
        "actions": [
            {
                "id": a["id"],
                "seq": a["seq"],
                "occurred_at": _iso(a["occurred_at"]),
                "action_type": a["action_type"],
                "metadata": json.loads(a["metadata_json"]),
                "ip": a["ip"],
                "actor": a["actor"],
            }
            for a in actions
        ],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
