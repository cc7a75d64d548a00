"""Signed checkpoints of the registry's chains, kept outside the database to catch rollbacks.

A seal proves a device row is a state provision wrote, not that it is the newest one: restoring
an older copy of a row and its log (a backup, a snapshot) leaves every chain consistent. Like
Certificate Transparency's signed tree heads, a checkpoint records every device's chain counts
and heads at one moment, signed; later, `audit verify --checkpoint FILE` reports any chain that
is shorter than recorded or does not extend what was recorded.

The file is text: a JSON header line, then one line per device, sorted by device id:

    DEVICE_ID ACTION_COUNT ACTION_HEAD PAIRING_COUNT PAIRING_HEAD

where each head is the first 16 hex characters of the chain's sealed head ("-" for an empty
chain). The header holds the totals, the time, the SHA-256 of the device lines, and an Ed25519
signature over all of it with a key derived from the keyring, so it is verified with the same
keyring (its public key is in the header, to check the file anywhere).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provision.chain import UNATTACHED, Sealer, canonical_json
from provision.errors import CheckpointError
from provision.files import atomic_writer
from provision.keys import Keyring
from provision.registry import Registry

FORMAT = "provision-checkpoint/1"
HEAD_CHARS = 16


@dataclass(frozen=True)
class CheckpointInfo:
    """What `audit checkpoint` wrote."""

    path: str
    created_at: str
    devices: int
    actions: int
    pairing_events: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.path,
            "created_at": self.created_at,
            "devices": self.devices,
            "actions": self.actions,
            "pairing_events": self.pairing_events,
            "sha256": self.digest,
        }


def _signing_key(keyring: Keyring) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(Sealer(keyring.pepper).checkpoint_seed)


def public_key(keyring: Keyring) -> str:
    """The checkpoint-signing public key of this keyring (base64 of the raw 32 bytes)."""
    raw = _signing_key(keyring).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _short(head: str | None) -> str:
    return head[:HEAD_CHARS] if head else "-"


def write_checkpoint(
    registry: Registry, keyring: Keyring, path: str | Path, now: datetime | None = None
) -> CheckpointInfo:
    """Record every device's chain counts and heads, signed, in PATH (written atomically)."""
    created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0).isoformat()
    body = io.BytesIO()
    digest = hashlib.sha256()
    devices = actions = events = 0
    with registry.audit_snapshot() as snap:
        for device_id, ac, ah, pc, ph in snap.heads():
            line = f"{device_id} {ac} {_short(ah)} {pc} {_short(ph)}\n".encode()
            digest.update(line)
            body.write(line)
            devices += 1
            actions += int(ac)
            events += int(pc)
        chain = snap.chain(UNATTACHED) or (0, None)
    header: dict[str, Any] = {
        "format": FORMAT,
        "created_at": created,
        "registry": registry.safe_url,
        "devices": devices,
        "actions": actions,
        "pairing_events": events + chain[0],
        "unattached": [chain[0], _short(chain[1])],
        "sha256": digest.hexdigest(),
        "public_key": public_key(keyring),
    }
    signature = _signing_key(keyring).sign(canonical_json(header).encode())
    header["signature"] = base64.b64encode(signature).decode("ascii")
    with atomic_writer(path) as fh:
        fh.write((json.dumps(header) + "\n").encode())
        fh.write(body.getbuffer())
    return CheckpointInfo(str(path), created, devices, actions, events + chain[0], header["sha256"])


@dataclass
class Checkpoint:
    """A verified checkpoint, held as sorted arrays (32 bytes a device)."""

    name: str
    created_at: str
    unattached: tuple[int, str]
    ids: np.ndarray  # device ids as unsigned 64-bit integers, sorted
    action_counts: np.ndarray
    action_heads: np.ndarray  # each head's first 16 hex characters as an integer (0: none)
    pairing_counts: np.ndarray
    pairing_heads: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)

    def expect(self, device_id: str) -> tuple[int, str, int, str] | None:
        """(action count, action head, pairing count, pairing head) recorded for the device."""
        key = np.uint64(int(device_id, 16))
        i = int(np.searchsorted(self.ids, key))
        if i == len(self.ids) or self.ids[i] != key:
            return None
        return (
            int(self.action_counts[i]),
            _head_text(self.action_heads[i]),
            int(self.pairing_counts[i]),
            _head_text(self.pairing_heads[i]),
        )

    def device_ids(self) -> Iterator[str]:
        return (f"{int(i):016x}" for i in self.ids)

    def missing(self, found: set[str]) -> list[str]:
        """The devices the checkpoint names that are not in FOUND (gone from the registry)."""
        return [did for did in self.device_ids() if did not in found]


def _head_value(text: str) -> int:
    return 0 if text == "-" else int(text, 16)


def _head_text(value: Any) -> str:
    return "-" if int(value) == 0 else f"{int(value):0{HEAD_CHARS}x}"


def load_checkpoint(path: str | Path, keyring: Keyring) -> Checkpoint:
    """Read a checkpoint and check its signature (this keyring's) and its digest."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read checkpoint: {exc.strerror}") from None
    first, _, body = raw.partition(b"\n")
    try:
        header = json.loads(first)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        signature = base64.b64decode(header.pop("signature"), validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{p}:1: not a provision checkpoint ({exc})") from None
    mine = public_key(keyring)
    if header.get("public_key") != mine:
        raise CheckpointError(f"{p}: signed with another keyring's key, not this one's")
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(mine)).verify(
            signature, canonical_json(header).encode()
        )
    except InvalidSignature:
        raise CheckpointError(f"{p}: the signature does not match (the file was altered)") from None
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise CheckpointError(f"{p}: the device lines do not match the signed digest (altered)")
    ids: list[int] = []
    acounts: list[int] = []
    aheads: list[int] = []
    pcounts: list[int] = []
    pheads: list[int] = []
    for number, line in enumerate(body.decode("ascii").splitlines(), start=2):
        try:
            did, ac, ah, pc, ph = line.split(" ")
            ids.append(int(did, 16))
            acounts.append(int(ac))
            aheads.append(_head_value(ah))
            pcounts.append(int(pc))
            pheads.append(_head_value(ph))
        except ValueError:
            raise CheckpointError(f"{p}:{number}: not a device line") from None
    order = np.argsort(np.asarray(ids, dtype=np.uint64), kind="stable")
    unattached = header.get("unattached") or [0, "-"]
    return Checkpoint(
        name=str(p),
        created_at=str(header.get("created_at")),
        unattached=(int(unattached[0]), str(unattached[1])),
        ids=np.asarray(ids, dtype=np.uint64)[order],
        action_counts=np.asarray(acounts, dtype=np.int64)[order],
        action_heads=np.asarray(aheads, dtype=np.uint64)[order],
        pairing_counts=np.asarray(pcounts, dtype=np.int64)[order],
        pairing_heads=np.asarray(pheads, dtype=np.uint64)[order],
        header=header,
    )
