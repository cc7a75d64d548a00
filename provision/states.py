"""Every state and reason code as a StrEnum: the one spelling of each, stored and sent as is.

StrEnum members are strings, so they compare equal to what the database and JSON hold
("pending" == DeviceStatus.PENDING), and they serialise as their values. This module is at the
bottom of the layers (keys and payload use it as well as the registry), so it imports nothing.
"""

from __future__ import annotations

from enum import StrEnum


class DeviceStatus(StrEnum):
    """Where a device is in its life: registered, activated once, or revoked."""

    PENDING = "pending"
    ACTIVATED = "activated"
    REVOKED = "revoked"


class PairingResult(StrEnum):
    """The outcome of one activation attempt."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class KeyState(StrEnum):
    """A signing key's state: it signs, it only verifies, or it is destroyed."""

    ACTIVE = "active"
    VERIFY_ONLY = "verify-only"
    REVOKED = "revoked"


class Reason(StrEnum):
    """Why an activation payload or attempt was refused (the API's reason codes)."""

    MALFORMED = "malformed"
    FORGED = "forged"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    EXPIRED = "expired"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED_DEVICE = "revoked_device"
    ALREADY_ACTIVATED = "already_activated"
    RECALLED = "recalled"


class AlertSeverity(StrEnum):
    """How urgent an alert is; `--fail-on warning` also fails on critical ones."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertStatus(StrEnum):
    """An alert is open until acknowledged, and open again when new evidence arrives."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"


class SystemAction(StrEnum):
    """The action types provision itself writes to a device's log."""

    ACTIVATED = "activated"
    REVOKED = "revoked"
    # Staff undid a revocation (the console's un-revoke): the device is as it was before.
    UNREVOKED = "unrevoked"
    RESIGNED = "resigned"
    # A revoked device's token tried to log an action: refused, and recorded here.
    ACTION_REFUSED = "action.refused"
    RECALL_CREATED = "recall.created"
    RECALL_RELEASED = "recall.released"
    RECALL_CLOSED = "recall.closed"


class StaffRole(StrEnum):
    """What a staff account may do in the console; each role can do what the one before can.

    viewer reads; support also revokes and un-revokes devices, releases recall holds and
    acknowledges alerts; admin also manages staff accounts.
    """

    VIEWER = "viewer"
    SUPPORT = "support"
    ADMIN = "admin"

    def allows(self, needed: StaffRole) -> bool:
        order = list(StaffRole)
        return order.index(self) >= order.index(needed)


class BizStep(StrEnum):
    """The GS1 CBV 2.0 business steps of provision's EPCIS events (bare, as JSON-LD writes
    them; the event hash reads https://ref.gs1.org/cbv/BizStep-...)."""

    COMMISSIONING = "commissioning"
    ASSEMBLING = "assembling"
    SHIPPING = "shipping"
    ACCEPTING = "accepting"
    HOLDING = "holding"


class Disposition(StrEnum):
    """The GS1 CBV 2.0 dispositions of provision's EPCIS events."""

    ACTIVE = "active"
    IN_TRANSIT = "in_transit"
    RETAIL_SOLD = "retail_sold"
    INACTIVE = "inactive"
