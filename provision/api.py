"""The public Python API for server-side integrations: `from provision import Provision`.

    with Provision.from_env() as p:
        made = p.generate("SN-000123", "sensor", components={"battery": "CR2032"})
        done = p.activate(made.url, user="ann@example.com")
        p.log_action(done.device_id, "voice_recording", metadata={"recording_id": 42})
        for action in p.history(done.device_id).actions:
            print(action.seq, action.action_type)

Everything here is in `__all__` and stays compatible within a major version: the facade, the
dataclasses it returns, and the errors it raises (the CLI's own ProvisionError subclasses;
an activation refused carries its reason code as `.reason`). The rest of the package is
internal: its modules may change in any release.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from provision.activation import Activation, ActivationRejected
from provision.config import DEFAULT_BASE_URL, DEFAULT_DB_URL, DEFAULT_OUTPUT, DEFAULT_TTL_DAYS
from provision.errors import (
    BatchError,
    ConfigError,
    ConflictError,
    DeviceError,
    KeyringError,
    ManifestError,
    ProvisionError,
    RegistryError,
    RowsRejected,
    TemplateError,
    UsageError,
)
from provision.keys import Keyring, load_keyring
from provision.pipeline import RegisterResult
from provision.registry import Registry

__all__ = [
    "Action",
    "Activation",
    "ActivationRejected",
    "BatchError",
    "Component",
    "ConfigError",
    "ConflictError",
    "Device",
    "DeviceError",
    "Generated",
    "History",
    "Hit",
    "KeyringError",
    "ManifestError",
    "PairingEvent",
    "Provision",
    "ProvisionError",
    "RegisterResult",
    "RegistryError",
    "RowsRejected",
    "TemplateError",
    "Trace",
    "TraceDevice",
    "UsageError",
]


@dataclass(frozen=True)
class Device:
    """One device as the registry holds it (no serial: only its keyed hash is stored)."""

    device_id: str
    device_type: str
    manufacturer: str | None
    model: str | None
    production_line: str | None
    manufactured_at: str | None
    batch: str
    status: str
    created_at: datetime
    activated_at: datetime | None
    user_id: str | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoked_reason: str | None
    key_id: int
    expires_at: datetime


@dataclass(frozen=True)
class Component:
    """A component fitted to a device (its own serial stays encrypted)."""

    component_type: str
    component_spec: str
    supplier: str | None
    lot: str | None


@dataclass(frozen=True)
class PairingEvent:
    """One activation attempt on the device, accepted or refused (with its reason)."""

    occurred_at: datetime
    result: str
    reason: str | None
    user_id: str | None
    ip: str | None
    user_agent: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class Action:
    """One entry of a device's tamper-evident action log."""

    id: int
    seq: int
    device_id: str
    occurred_at: datetime
    action_type: str
    metadata: dict[str, Any]
    ip: str | None
    actor: str | None


@dataclass(frozen=True)
class History:
    """A device's whole record, oldest first: the operator's view (every attempt)."""

    device: Device
    components: list[Component]
    pairing_events: list[PairingEvent]
    actions: list[Action]


@dataclass(frozen=True)
class Generated:
    """A device `generate` registered (or found), its QR URL and the label files it wrote."""

    device_id: str
    url: str
    batch: str
    created: bool
    png: Path
    pdf: Path


@dataclass(frozen=True)
class Hit:
    """A device `find` found, and what of the text it matched on (`matched_on`)."""

    matched_on: str
    detail: str
    device: Device


@dataclass(frozen=True)
class TraceDevice:
    """A device carrying a traced component, with its owner and newest action time."""

    device_id: str
    batch: str
    production_line: str | None
    model: str | None
    status: str
    activated_at: datetime | None
    user_id: str | None
    last_action_at: datetime | None


@dataclass(frozen=True)
class Trace:
    """What `trace` found: the devices, and their counts by status and by batch."""

    query: dict[str, str]
    devices: list[TraceDevice]
    by_status: dict[str, int] = field(default_factory=dict)
    by_batch: dict[str, int] = field(default_factory=dict)


class Provision:
    """The registry and the keyring, opened the way the CLI opens them; a context manager."""

    def __init__(
        self,
        db_url: str = DEFAULT_DB_URL,
        keyring: str | Path | Keyring | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        output: str | Path = DEFAULT_OUTPUT,
    ) -> None:
        """Open the registry at DB_URL with the keyring file KEYRING (or a loaded Keyring)."""
        self._keyring = keyring if isinstance(keyring, Keyring) else load_keyring(keyring)
        self._registry = Registry(db_url, keyring=self._keyring)
        self._base_url = base_url
        self._output = Path(output)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Provision:
        """Open it with the PROVISION_DB_URL, _KEYRING, _BASE_URL and _OUTPUT settings."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("PROVISION_DB_URL", DEFAULT_DB_URL),
            env.get("PROVISION_KEYRING"),
            base_url=env.get("PROVISION_BASE_URL", DEFAULT_BASE_URL),
            output=env.get("PROVISION_OUTPUT", DEFAULT_OUTPUT),
        )

    def __enter__(self) -> Self:
        """The facade itself; the registry closes at the end of the block."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the registry."""
        self.close()

    def close(self) -> None:
        """Close the registry's connections."""
        self._registry.close()

    # -- the nightly batch ------------------------------------------------------------------

    def generate(
        self,
        serial: str,
        device_type: str,
        *,
        components: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        ttl_days: int = DEFAULT_TTL_DAYS,
        template: str = "thermal-50x30",
    ) -> Generated:
        """Register one device (or find it) and write its QR PNG and one-label PDF."""
        from provision.labels.templates import load_template
        from provision.payload import check_base_url
        from provision.pipeline import generate_device

        pairs = list(components.items()) if isinstance(components, Mapping) else components
        result = generate_device(
            self._registry,
            self._keyring,
            serial,
            device_type,
            check_base_url(self._base_url),
            self._output,
            load_template(template),
            components=[(str(t), str(s)) for t, s in (pairs or [])],
            ttl_days=ttl_days,
        )
        return Generated(
            result.device_id,
            result.url,
            result.batch,
            result.created,
            Path(result.png),
            Path(result.pdf),
        )

    def register(
        self,
        serials_csv: str | Path,
        *,
        components_csv: str | Path | None = None,
        batch: str | None = None,
        device_type: str | None = None,
        reject_file: str | Path | None = None,
    ) -> RegisterResult:
        """Validate the manifests and register the batch, as `provision register` does."""
        from provision.pipeline import register_batch

        return register_batch(
            self._registry,
            self._keyring,
            serials_csv,
            components_path=components_csv,
            batch=batch,
            device_type=device_type,
            reject_file=reject_file,
        )

    # -- activation and lifetime ------------------------------------------------------------------

    def activate(
        self,
        payload: str,
        *,
        user: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> Activation:
        """Activate the device a scanned payload (or QR URL) names, exactly once."""
        from provision.activation import activate

        return activate(self._registry, self._keyring, payload, user, ip, user_agent)

    def log_action(
        self,
        device_id: str,
        action_type: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        ip_address: str | None = None,
        actor: str | None = None,
    ) -> Action:
        """Append an action to the device's tamper-evident log."""
        from provision.audit import log_action, resolve_device

        device = resolve_device(self._registry, device_id)
        entry = log_action(
            self._registry,
            self._keyring,
            device,
            action_type,
            dict(metadata or {}),
            ip=ip_address,
            actor=actor,
        )
        return _action(entry, device.device_id)

    def history(self, device_id: str, *, limit: int | None = None) -> History:
        """The device's record: itself, its components, every attempt and every action."""
        from provision.audit import resolve_device

        if limit is not None and limit < 1:
            raise UsageError("limit must be at least 1")
        device = resolve_device(self._registry, device_id)
        events = self._registry.events
        return History(
            self._device(device),
            [
                Component(c.component_type, c.component_spec, c.supplier, c.lot)
                for c in self._registry.devices.components_of(device.id)
            ],
            [
                PairingEvent(
                    e.occurred_at, e.result, e.reason, e.user_id, e.ip, e.user_agent, e.fingerprint
                )
                for e in events.pairing_events_of(device.id, limit)
            ],
            [_action(a, device.device_id) for a in events.actions_of(device.id, limit)],
        )

    def device(self, device_id: str) -> Device:
        """One device by its id (any case, `ID xxxx`, or a unique prefix of 6 or more)."""
        from provision.audit import resolve_device

        return self._device(resolve_device(self._registry, device_id))

    def revoke(self, device_id: str, reason: str, *, by: str) -> Device:
        """Revoke the device: it can no longer be activated, and its token no longer logs."""
        from provision.audit import resolve_device, revoke

        device = resolve_device(self._registry, device_id)
        revoke(self._registry, self._keyring, device, reason, by)
        return self.device(device.device_id)

    # -- support and quality ------------------------------------------------------------------

    def find(self, text: str) -> list[Hit]:
        """Devices from whatever a customer reads out: id, label text, QR, serial, user."""
        from provision.queries import find

        result = find(self._registry, self._keyring, text)
        return [Hit(h.matched_on, h.detail, self._device(h.device)) for h in result.hits]

    def trace(
        self,
        *,
        lot: str | None = None,
        supplier: str | None = None,
        component_type: str | None = None,
        component_serial: str | None = None,
    ) -> Trace:
        """Every device carrying components that match all the given fields, with owners."""
        from provision.trace import TraceQuery, TraceSummary, trace_components

        query = TraceQuery(lot, supplier, component_type, component_serial)
        result = trace_components(self._registry, self._keyring, query)
        summary = TraceSummary()
        rows = [
            TraceDevice(
                r.device_id, r.batch, r.line, r.model, r.status, r.activated_at, r.owner,
                r.last_action_at,
            )
            for r in result.counted(summary)
        ]  # fmt: skip
        return Trace(
            result.query, rows, dict(sorted(summary.by_status.items())),
            dict(sorted(summary.by_batch.items())),
        )  # fmt: skip

    # -- internal ---------------------------------------------------------------------------------

    def _device(self, d: Any) -> Device:
        batch = self._registry.batches.name_of(d.batch_id) or ""
        return Device(
            d.device_id, d.device_type, d.manufacturer, d.model, d.production_line,
            d.manufactured_at, batch, d.status, d.created_at, d.activated_at, d.user_id,
            d.revoked_at, d.revoked_by, d.revoked_reason, d.key_id, d.expires_at,
        )  # fmt: skip


def _action(entry: Any, device_id: str) -> Action:
    return Action(
        entry.id, entry.seq, device_id, entry.occurred_at, entry.action_type,
        json.loads(entry.metadata_json), entry.ip, entry.actor,
    )  # fmt: skip
