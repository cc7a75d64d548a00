"""Activation: verify -> activate exactly once -> token -> pairing event. No HTTP here."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from provision.audit import make_sealer
from provision.errors import ProvisionError
from provision.keys import Keyring
from provision.payload import verify_payload
from provision.registry import Attempt, DeviceRecord, Registry, utcnow
from provision.states import DeviceStatus, Reason
from provision.text import BIDI_RE

# reason -> the message a customer or a support engineer can act on (the web service maps each
# reason to its HTTP status: provision.web.activation.REASON_STATUS)
REASONS: dict[Reason, str] = {
    Reason.MALFORMED: "This is not a provision activation code.",
    Reason.FORGED: "This activation code's signature is not valid.",
    Reason.UNKNOWN_KEY: "This activation code was signed with a key we do not know.",
    Reason.REVOKED_KEY: "This activation code's signing key has been withdrawn.",
    Reason.EXPIRED: "This activation code has expired.",
    Reason.UNKNOWN_DEVICE: "This device is not registered.",
    Reason.REVOKED_DEVICE: "This device has been revoked and cannot be activated.",
    Reason.ALREADY_ACTIVATED: "This device has already been activated.",
    Reason.RECALLED: (
        "This device is held by a product recall and cannot be activated yet. "
        "Please contact the seller."
    ),
}
TOKEN_BYTES = 32  # 256 bits from `secrets`
USER_RE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")


class ActivationRejected(ProvisionError):
    """An activation attempt was refused; `reason` says why."""

    kind = "activation_rejected"

    def __init__(self, reason: Reason | str) -> None:
        self.reason = Reason(reason)
        super().__init__(f"{self.reason}: {REASONS[self.reason]}")

    @property
    def message(self) -> str:
        return REASONS[self.reason]

    def json_error(self) -> dict[str, Any]:
        # The API's error shape: the reason code, as the activation service answers.
        return {"reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class Activation:
    """A device activated, and its activation token (shown once; never in its repr)."""

    device_id: str
    device_type: str
    model: str | None
    activation_token: str = field(repr=False)
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


def check_user(user: str | None) -> str | None:
    """The user to link, checked; None links no one (the original app's `activate PAYLOAD`)."""
    if user is None:
        return None
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
    user: str | None,
    ip: str | None = None,
    user_agent: str | None = None,
    fingerprint: str | None = None,
    now: datetime | None = None,
) -> Activation:
    """Activate the device a scanned payload names, exactly once; every attempt is recorded."""
    user = check_user(user)
    now = now or utcnow()
    check = verify_payload(payload, keyring, now=now)
    sealer = make_sealer(keyring)
    attempt = Attempt(
        occurred_at=now,
        claimed_device_id=check.device_id,
        ip=_clip(ip, 64),
        user_agent=_clip(user_agent, 512),
        fingerprint=_clip(fingerprint, 128),
        user_id=user,
    )

    def reject(reason: Reason, device: DeviceRecord | None = None) -> ActivationRejected:
        registry.events.record_rejected(device.id if device else None, attempt, reason, sealer)
        return ActivationRejected(reason)

    if not check.valid:
        assert check.reason is not None
        device = registry.devices.get(check.device_id) if check.device_id else None
        raise reject(check.reason, device)
    assert check.device_id is not None and check.expires_at is not None
    found = registry.events.device_for_activation(check.device_id)  # and its hold, in one read
    if found is None:
        raise reject(Reason.UNKNOWN_DEVICE)
    device, held = found
    # The label must carry the payload we issued: a valid signature over a superseded payload
    # (say, signed again after a rotation) is not the device's current label. The payload is
    # not stored; its key id and expiry are, and with a valid tag they fix every byte of it.
    expiry = int(device.expires_at.timestamp())  # whole seconds, as the payload holds it
    if check.key_id != device.key_id or int(check.expires_at.timestamp()) != expiry:
        raise reject(Reason.FORGED, device)
    if check.gtin is not None and check.gtin != device.gtin:
        raise reject(Reason.FORGED, device)  # signed for another GTIN: not this device's label
    if device.status == DeviceStatus.REVOKED:
        raise reject(Reason.REVOKED_DEVICE, device)
    if device.status == DeviceStatus.PENDING and held:
        raise reject(Reason.RECALLED, device)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    # The UPDATE checks status and hold again: a scan racing another scan, a revocation or a
    # new recall loses here (and its pairing event says why) however the check above went.
    lost = registry.events.try_activate(device, user, token_hash(token), attempt, sealer)
    if lost is not None:
        raise ActivationRejected(lost)
    return Activation(device.device_id, device.device_type, device.model, token, now)


def recalled(registry: Registry, device: DeviceRecord) -> bool:
    """True when an open recall with a hold stops the device's activation."""
    return registry.recalls.holding(device.id) is not None


def device_of_token(registry: Registry, token: str | None) -> DeviceRecord | None:
    """The device whose activation token this is, unless revoked (the device client's
    `GET /api/v1/device`); None for any other token."""
    if not token:
        return None
    device = registry.devices.by_token_hash(token_hash(token))
    if device is None or device.status == DeviceStatus.REVOKED:
        return None
    return device


def authenticate(
    registry: Registry, device_id: str, token: str | None, *, revoked: bool = False
) -> DeviceRecord | None:
    """The device if `token` is its activation token, else None.

    A revoked device's token no longer logs actions or reads history: None, unless REVOKED
    (the caller records the refused attempt)."""
    if not token:
        return None
    device = registry.devices.get(device_id.strip().lower())
    if device is None or not device.activation_token_hash:
        return None
    if device.status == DeviceStatus.REVOKED and not revoked:
        return None
    if not hmac.compare_digest(device.activation_token_hash, token_hash(token)):
        return None
    return device
