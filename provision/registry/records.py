"""What the registry hands out: frozen dataclasses, one per kind of row, named like its columns.

Each record is built from its row in one place (`from_row`), so no caller re-keys a dict; the
JSON a command or the API prints is built from these fields where it is printed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Self

from provision.registry.store import aware
from provision.states import DeviceStatus, PairingResult


class _Record:
    """from_row: a record from a SQLAlchemy row (by column name); datetimes made UTC-aware."""

    _TIMES: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> Self:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Any) -> Self:
        """From column name -> value (a driver's row zipped with its column names)."""
        values = {f.name: m[f.name] for f in fields(cls)}  # type: ignore[arg-type]
        for name in cls._TIMES:
            values[name] = aware(values[name])
        return cls(**values)

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]


@dataclass(frozen=True)
class DeviceRecord(_Record):
    """One device as registered, activated or revoked. The serial is only a hash and a
    ciphertext; the payload is not stored at all (it is signed again from key_id and
    expires_at)."""

    id: int
    device_id: str
    serial_hash: str
    serial_ct: bytes
    device_type: str
    manufacturer: str | None
    model: str | None
    manufactured_at: str | None
    production_line: str | None
    batch_id: int
    batch_seq: int
    key_id: int
    expires_at: datetime
    status: DeviceStatus
    created_at: datetime
    activated_at: datetime | None
    user_id: str | None
    activation_token_hash: str | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoked_reason: str | None
    action_count: int
    action_head: str | None
    pairing_count: int
    pairing_head: str | None
    seal: str
    gtin: str | None = None

    _TIMES = ("expires_at", "created_at", "activated_at", "revoked_at")

    @classmethod
    def from_mapping(cls, m: Any) -> Self:
        record = super().from_mapping(m)
        object.__setattr__(record, "status", DeviceStatus(record.status))
        return record


@dataclass(frozen=True)
class DeviceFilter:
    """What `provision devices` lists; every field given narrows it (None: any). A date-only
    `activated_until` includes that whole day."""

    batch: str | None = None
    status: DeviceStatus | None = None
    device_type: str | None = None
    model: str | None = None
    line: str | None = None
    user: str | None = None
    activated_since: date | datetime | None = None
    activated_until: date | datetime | None = None


@dataclass(frozen=True)
class BatchRecord:
    """A batch as `provision batches` shows it: its devices by status, keys and labels."""

    id: int
    name: str
    created_at: datetime
    updated_at: datetime
    manifest_sha256: str
    components_sha256: str | None
    rejected_rows: int
    label_revision: int | None
    labels_rendered_at: datetime | None
    devices: int
    by_status: dict[str, int]
    key_ids: tuple[int, ...]


@dataclass(frozen=True)
class LabelRow(_Record):
    """What a device's label is drawn from, in label order."""

    id: int
    batch_seq: int
    device_id: str
    device_type: str
    manufacturer: str | None
    model: str | None
    key_id: int
    expires_at: datetime
    serial_ct: bytes
    status: DeviceStatus
    gtin: str | None = None

    _TIMES = ("expires_at",)


@dataclass(frozen=True)
class ComponentRecord(_Record):
    """A component fitted to a device; its own serial only as ciphertext."""

    id: int
    device_pk: int
    component_type: str
    component_spec: str
    component_serial_ct: bytes | None
    row_hash: str
    supplier: str | None
    lot: str | None
    batch_id: int
    created_at: datetime

    _TIMES = ("created_at",)


@dataclass(frozen=True)
class PairingEvent(_Record):
    """One activation attempt, accepted or rejected, as its chain holds it."""

    id: int
    device_pk: int | None
    seq: int
    claimed_device_id: str | None
    occurred_at: datetime
    ip: str | None
    user_agent: str | None
    fingerprint: str | None
    user_id: str | None
    result: PairingResult
    reason: str | None
    prev_hash: str
    entry_hash: str

    _TIMES = ("occurred_at",)


@dataclass(frozen=True)
class ActionEntry(_Record):
    """One entry of a device's action log."""

    id: int
    device_pk: int
    seq: int
    occurred_at: datetime
    action_type: str
    metadata_json: str
    ip: str | None
    actor: str | None
    prev_hash: str
    entry_hash: str

    _TIMES = ("occurred_at",)


@dataclass(frozen=True)
class NewBatch:
    """A batch whose row is created (or, when it exists, updated) by the transaction of the
    first chunk a run stores (Devices.insert)."""

    name: str
    manifest_sha256: str
    components_sha256: str | None
    rejected_rows: int = 0


@dataclass(frozen=True)
class NewAction:
    """An action to append to a device's log (provision.audit.log_action checks it first)."""

    action_type: str
    metadata_json: str
    ip: str | None
    actor: str | None
    occurred_at: datetime


@dataclass(frozen=True)
class Attempt:
    """Who tried to activate, from where: what a pairing event records besides its outcome."""

    occurred_at: datetime
    claimed_device_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    fingerprint: str | None = None
    user_id: str | None = None
