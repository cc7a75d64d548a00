"""Chain and seal rules: canonical JSON, genesis hashes, entry hashes, chain heads, device seals.

Every hash here is an HMAC under a key derived from the keyring's pepper, so whoever can write
the database but does not hold the keyring cannot make a consistent replacement:

- the action log: each entry's hash covers the entry and the previous entry's hash; the device
  row holds the count and a keyed head over the newest entry;
- pairing events (activation attempts): the same, one chain per device, and one chain for the
  attempts that name no registered device;
- the device row's state (status, user, activation, revocation, both chains' counts and heads)
  is sealed, and the seal is written in the same transaction as each change.

Rewinding a whole row to an earlier sealed state (a rollback) leaves everything consistent;
signed checkpoints kept outside the database catch that (provision.checkpoint).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CHAIN_HEAD = "#chain-head"
"""The action type under which a device's chain head is sealed (never a real action type)."""

UNATTACHED = "#unattached"
"""The pairing chain of attempts that name no registered device (malformed, forged, unknown)."""

_ACTION_DOMAIN = b"provision/action-log/v1\x00"
_PAIRING_DOMAIN = b"provision/pairing-log/v1\x00"
_SEAL_DOMAIN = b"provision/device-seal/v1\x00"
_CHECKPOINT_DOMAIN = b"provision/checkpoint-ed25519/v1\x00"


def _compact_encoder() -> Callable[[list[Any]], str]:
    """The JSON text of a list, compact: what json.dumps(v, separators=(",", ":")) returns.

    json.dumps with separators builds a new encoder on every call, and even a kept encoder's
    encode() goes through Python; `audit verify` hashes ten million bodies, so the C encoder is
    called directly where the interpreter has it.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:
        return json.JSONEncoder(separators=(",", ":")).encode
    encode = c_make_encoder(
        None, None, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return lambda value: "".join(encode(value, 0))


_compact = _compact_encoder()


class _Mac:
    """HMAC-SHA256 under one key: the key's inner and outer state computed once, then copied.

    OpenSSL's HMAC object itself where CPython has it (_hashlib): the hmac module's wrapper
    adds a Python call to each of copy, update and hexdigest.
    """

    def __init__(self, key: bytes) -> None:
        try:
            from _hashlib import hmac_new

            self._base: Any = hmac_new(key, digestmod="sha256")
        except (ImportError, ValueError):
            self._base = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, body: str) -> str:
        h = self._base.copy()
        h.update(body.encode())
        return h.hexdigest()


def canonical_json(value: Any) -> str:
    """The one spelling of action metadata that its chain hash is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def genesis_hash(device_id: str) -> str:
    """The `prev_hash` of a device's first action."""
    return hashlib.sha256(f"provision/action-log/genesis/{device_id}".encode()).hexdigest()


def pairing_genesis(chain: str) -> str:
    """The `prev_hash` of a pairing chain's first event (CHAIN is a device id or UNATTACHED)."""
    return hashlib.sha256(f"provision/pairing-log/genesis/{chain}".encode()).hexdigest()


def stamp(value: datetime | str | None) -> str | None:
    """A timestamp's one spelling in hashes: ISO 8601 UTC with microseconds.

    Naive datetimes are UTC (SQLite hands them back naive). Text is SQLite's own storage form
    (`2026-11-28 10:00:00.123456`, the bulk verifier reads it unparsed) or ISO 8601.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " " and value[19] == ".":
            return f"{value[:10]}T{value[11:]}+00:00"
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class DeviceState:
    """What a device's seal covers: everything a direct UPDATE could change to its advantage."""

    device_id: str
    serial_hash: str
    key_id: int
    expires_at: datetime | str
    status: str
    user_id: str | None
    activated_at: datetime | str | None
    activation_token_hash: str | None
    revoked_at: datetime | str | None
    revoked_by: str | None
    revoked_reason: str | None
    action_count: int
    action_head: str | None
    pairing_count: int
    pairing_head: str | None


SEALED_COLUMNS = tuple(DeviceState.__dataclass_fields__)
"""The devices table's columns a seal covers, in the order the seal lists them."""


class Sealer:
    """The keyed hashes of the action log, the pairing log and the device seal."""

    def __init__(self, pepper: bytes) -> None:
        self._action = _Mac(hmac.new(pepper, _ACTION_DOMAIN, hashlib.sha256).digest())
        self._pairing = _Mac(hmac.new(pepper, _PAIRING_DOMAIN, hashlib.sha256).digest())
        self._seal = _Mac(hmac.new(pepper, _SEAL_DOMAIN, hashlib.sha256).digest())
        self._checkpoint_seed = hmac.new(pepper, _CHECKPOINT_DOMAIN, hashlib.sha256).digest()

    def action(
        self,
        device_id: str,
        seq: int,
        occurred_at: datetime | str,
        action_type: str,
        metadata_json: str,
        ip: str | None,
        actor: str | None,
        prev_hash: str,
    ) -> str:
        """The hash of one action entry."""
        body = _compact(
            [device_id, seq, stamp(occurred_at), action_type, metadata_json, ip, actor, prev_hash]
        )
        return self._action(body)

    def action_head(self, device_id: str, seq: int, occurred_at: datetime | str, entry: str) -> str:
        """The device's sealed action-chain head over its newest entry."""
        return self.action(device_id, seq, occurred_at, CHAIN_HEAD, "", None, None, entry)

    def pairing(
        self,
        chain: str,
        seq: int,
        occurred_at: datetime | str,
        claimed_device_id: str | None,
        ip: str | None,
        user_agent: str | None,
        fingerprint: str | None,
        user_id: str | None,
        result: str,
        reason: str | None,
        prev_hash: str,
    ) -> str:
        """The hash of one pairing event."""
        body = _compact(
            [
                chain,
                seq,
                stamp(occurred_at),
                claimed_device_id,
                ip,
                user_agent,
                fingerprint,
                user_id,
                result,
                reason,
                prev_hash,
            ]
        )
        return self._pairing(body)

    def pairing_head(self, chain: str, seq: int, entry: str) -> str:
        """The sealed head of a pairing chain over its newest event."""
        return self._pairing(_compact([chain, seq, CHAIN_HEAD, entry]))

    def device(self, state: DeviceState) -> str:
        """The seal of a device row's state."""
        return self.device_values(*(getattr(state, c) for c in SEALED_COLUMNS))

    def device_values(self, *values: Any) -> str:
        """The seal of the SEALED_COLUMNS values of a row, in that order (the bulk paths)."""
        (did, sh, key_id, expires, status, user, activated, token, revoked, by, why, *rest) = values
        ac, ah, pc, ph = rest
        body = _compact(
            [
                did,
                sh,
                key_id,
                stamp(expires),
                status,
                user,
                stamp(activated),
                token,
                stamp(revoked),
                by,
                why,
                ac,
                ah,
                pc,
                ph,
            ]
        )
        return self._seal(body)

    @property
    def checkpoint_seed(self) -> bytes:
        """The seed of the Ed25519 key that signs checkpoints (provision.checkpoint)."""
        return self._checkpoint_seed
