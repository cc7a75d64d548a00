"""Activation: verify -> activate exactly once -> token -> pairing event. No HTTP here."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from provision.audit import make_sealer
from provision.errors import ProvisionError
from provision.keys import Keyring
from provision.payload import verify_payload
from provision.registry import REVOKED, Registry, utcnow
from provision.text import BIDI_RE

Reason = Literal[
    "malformed",
    "forged",
    "unknown_key",
    "revoked_key",
    "expired",
    "unknown_device",
    "revoked_device",
    "already_activated",
]

# reason -> (HTTP status, message a customer or a support engineer can act on)
REASONS: dict[str, tuple[int, str]] = {
    "malformed": (400, "This is not a provision activation code."),
    "forged": (403, "This activation code's signature is not valid."),
    "unknown_key": (403, "This activation code was signed with a key we do not know."),
    "revoked_key": (403, "This activation code's signing key has been withdrawn."),
    "expired": (410, "This activation code has expired."),
    "unknown_device": (404, "This device is not registered."),
    "revoked_device": (403, "This device has been revoked and cannot be activated."),
    "already_activated": (409, "This device has already been activated."),
}
TOKEN_BYTES = 32  # 256 bits from `secrets`
USER_RE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")


class ActivationRejected(ProvisionError):
    """An activation attempt was refused; `reason` is one of REASONS."""

    kind = "activation_rejected"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.status = REASONS[reason][0]
        super().__init__(f"{reason}: {REASONS[reason][1]}")

    @property
    def message(self) -> str:
        return REASONS[self.reason][1]

    def json_error(self) -> dict[str, Any]:
        # The API's error shape: the reason code, as the activation service answers.
        return {"reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class Activation:
    device_id: str
    device_type: str
    model: str | None
    activation_token: str
    activated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_type": self.device_type,
            "activation_token": self.activation_token,
            "activated_at": self.activated_at.isoformat(),
        }


def token_hash(token: str) -> str:
    # The token has 256 bits of entropy, so a plain SHA-256 cannot be brute-forced.
    return hashlib.sha256(token.encode()).hexdigest()


def check_user(user: str) -> str:
    user = user.strip()
    if not USER_RE.fullmatch(user) or BIDI_RE.search(user):
        # Bidi overrides count as control characters here: they make a name display as another.
        raise ProvisionError("user: give 1-256 characters, no control characters")
    return user


def _clip(value: str | None, size: int) -> str | None:
    return value[:size] if value else None


def activate(
    registry: Registry,
    keyring: Keyring,
    payload: str,
    user: str,
    ip: str | None = None,
    user_agent: str | None = None,
    fingerprint: str | None = None,
    now: datetime | None = None,
) -> Activation:
    """Activate the device a scanned payload names, exactly once; every attempt is recorded."""
    user = check_user(user)
    now = now or utcnow()
    event: dict[str, Any] = {
        "occurred_at": now,
        "ip": _clip(ip, 64),
        "user_agent": _clip(user_agent, 512),
        "fingerprint": _clip(fingerprint, 128),
        "user_id": user,
    }
    check = verify_payload(payload, keyring, now=now)
    sealer = make_sealer(keyring)

    def reject(reason: str, device: dict[str, Any] | None = None) -> ActivationRejected:
        registry.record_pairing_event(
            event
            | {
                "device_pk": device["id"] if device else None,
                "claimed_device_id": check.device_id,
                "result": "rejected",
                "reason": reason,
            },
            sealer,
        )
        return ActivationRejected(reason)

    if not check.valid:
        assert check.reason is not None
        device = registry.device(check.device_id) if check.device_id else None
        raise reject(check.reason, device)
    assert check.device_id is not None
    device = registry.device(check.device_id)
    if device is None:
        raise reject("unknown_device")
    # The label must carry the payload we issued: a valid signature over a superseded payload
    # (say, signed again after a rotation) is not the device's current label. The payload is
    # not stored; its key id and expiry are, and with a valid tag they fix every byte of it.
    assert check.expires_at is not None
    expiry = int(device["expires_at"].timestamp())  # whole seconds, as the payload holds it
    if check.key_id != device["key_id"] or int(check.expires_at.timestamp()) != expiry:
        raise reject("forged", device)
    if device["status"] == REVOKED:
        raise reject("revoked_device", device)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    lost = registry.try_activate(
        device["id"],
        device["device_id"],
        user,
        token_hash(token),
        now,
        event | {"device_pk": device["id"], "claimed_device_id": device["device_id"]},
        sealer,
    )
    if lost is not None:
        raise ActivationRejected("revoked_device" if lost == REVOKED else "already_activated")
    return Activation(device["device_id"], device["device_type"], device["model"], token, now)


def authenticate(registry: Registry, device_id: str, token: str | None) -> dict[str, Any] | None:
    """The device if `token` is its activation token, else None."""
    if not token:
        return None
    device = registry.device(device_id.strip().lower())
    # A revoked device's token no longer logs actions or reads history.
    if device is None or not device["activation_token_hash"] or device["status"] == REVOKED:
        return None
    if not hmac.compare_digest(device["activation_token_hash"], token_hash(token)):
        return None
    return device
