"""The registry: the only package that queries the database.

`Registry(url)` opens it (migrating the schema on first use) and hands out one object per
subject, as sqlite-utils' `db[table]` does: `registry.batches`, `registry.devices`,
`registry.events`, `registry.recalls`, `registry.alerts`, `registry.shipments` and
`registry.staff`. They return frozen dataclasses
(provision.registry.records, and the trace and recall records of recalls.py) and raise
ProvisionError subclasses, never SQLAlchemy's exceptions.

    schema.py   the tables; states come from provision.states
    store.py    engine, dialect specifics, bulk paths, error translation, audit reads
    records.py  the dataclasses the subjects return
    batches.py, devices.py, events.py, recalls.py, alerts.py, shipments.py, staff.py: one module
                per subject
    frames.py   pandas frames for reconcile (pandas stays out of the rest)
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from provision.chain import Sealer
from provision.errors import ConflictError
from provision.keys import Keyring
from provision.registry.alerts import Alerts
from provision.registry.batches import Batches
from provision.registry.devices import Devices
from provision.registry.events import Events
from provision.registry.recalls import (
    ComponentFilter,
    OwnerRow,
    RecallCounts,
    RecallMember,
    RecallRecord,
    Recalls,
    TraceRow,
)
from provision.registry.records import (
    ActionEntry,
    Attempt,
    BatchRecord,
    ComponentRecord,
    DeviceFilter,
    DeviceRecord,
    LabelRow,
    NewAction,
    NewBatch,
    PairingEvent,
)
from provision.registry.schema import (
    action_log,
    audit_chains,
    batches,
    components,
    devices,
    metadata,
    pairing_events,
)
from provision.registry.shipments import Shipments
from provision.registry.staff import Staff, StaffEvent, StaffRecord
from provision.registry.store import AuditSnapshot, Store, utcnow
from provision.states import DeviceStatus, PairingResult

__all__ = [
    "ActionEntry",
    "Attempt",
    "AuditSnapshot",
    "BatchRecord",
    "ComponentFilter",
    "ComponentRecord",
    "ConflictError",
    "DeviceFilter",
    "DeviceRecord",
    "DeviceStatus",
    "LabelRow",
    "NewAction",
    "NewBatch",
    "OwnerRow",
    "PairingEvent",
    "PairingResult",
    "RecallCounts",
    "RecallMember",
    "RecallRecord",
    "Registry",
    "StaffEvent",
    "StaffRecord",
    "TraceRow",
    "action_log",
    "audit_chains",
    "batches",
    "components",
    "devices",
    "metadata",
    "pairing_events",
    "utcnow",
]


class Registry:
    """A connection to the registry database; migrated to the latest schema on first use.

    KEYRING (or just a SEALER made from it) lets a migration seal (0003) or hash (0004) the
    rows already there.
    With CREATE false, a SQLite file that does not exist is an error, not a new registry.
    """

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = True,
        sealer: Sealer | None = None,
        create: bool = True,
        keyring: Keyring | None = None,
    ) -> None:
        self.store = Store(url, migrate=migrate, sealer=sealer, create=create, keyring=keyring)
        self.batches = Batches(self.store)
        self.devices = Devices(self.store)
        self.events = Events(self.store)
        self.recalls = Recalls(self.store)
        self.alerts = Alerts(self.store)
        self.shipments = Shipments(self.store)
        self.staff = Staff(self.store)

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def safe_url(self) -> str:
        return self.store.safe_url

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine, for tests and benchmarks that set a registry up by hand."""
        return self.store.engine

    @property
    def is_sqlite(self) -> bool:
        return self.store.is_sqlite

    @property
    def is_postgresql(self) -> bool:
        return self.store.is_postgresql

    def upgrade(self) -> str:
        return self.store.upgrade()

    def table_names(self) -> list[str]:
        return self.store.table_names()

    def audit_snapshot(self) -> AbstractContextManager[AuditSnapshot]:
        return self.store.audit_snapshot()

    def reconcile_frame(self, chunk: int = 100_000, batch_id: int | None = None) -> Any:
        """Every device (of BATCH_ID) as a pandas frame (serial hashes only), for reconcile."""
        from provision.registry.frames import reconcile_frame

        return reconcile_frame(self.store, chunk, batch_id)

    def reconcile_chunks(self, chunk: int = 100_000, batch_id: int | None = None) -> Any:
        """reconcile_frame a CHUNK of rows at a time (an iterator of frames)."""
        from provision.registry.frames import reconcile_chunks

        return reconcile_chunks(self.store, chunk, batch_id)

    def shipments_chunks(self, until: Any = None, chunk: int = 100_000) -> Any:
        """shipments_frame a CHUNK of rows at a time, in id order (an iterator of frames)."""
        from provision.registry.frames import shipments_chunks

        return shipments_chunks(self.store, until, chunk)

    def sizes(self) -> tuple[int, int]:
        """About how many devices and shipments are stored (their highest ids: no scan)."""
        from sqlalchemy import func, select

        from provision.registry.schema import shipments

        with self.store.connect() as conn:
            n_dev = conn.execute(select(func.max(devices.c.id))).scalar() or 0
            n_ship = conn.execute(select(func.max(shipments.c.id))).scalar() or 0
        return int(n_dev), int(n_ship)

    def follow_up(self, device_ids: list[str]) -> dict[str, tuple[bytes, str | None]]:
        """Device id -> (serial ciphertext, activation address), for reconcile's follow-ups."""
        from provision.registry.frames import follow_up

        return follow_up(self.store, device_ids)

    def ping(self) -> None:
        """One trivial query: raises when the database does not answer."""
        with self.store.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.store.close()
