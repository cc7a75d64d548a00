"""The registry: SQLAlchemy models and the only module that queries the database."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from provision.chain import (
    SEALED_COLUMNS,
    UNATTACHED,
    Sealer,
    canonical_json,
    genesis_hash,
    pairing_genesis,
)
from provision.errors import ConfigError, ConflictError, DeviceError

log = logging.getLogger(__name__)

PENDING, ACTIVATED, REVOKED = "pending", "activated", "revoked"


metadata = MetaData()
"""Every provision table (Alembic compares the migrations with it). Plain Core tables: the ORM
would cost every command 65 ms of imports, and no path of provision needs it."""

# 64-bit keys on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the rowid alias.
ROW_ID = BigInteger().with_variant(Integer, "sqlite")

# A nightly batch: a name and the SHA-256 of the manifests it was registered from.
batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("components_sha256", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One device; its serial is stored only as a keyed hash and as AES-GCM ciphertext.
devices = Table(
    "devices",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("device_id", String(16), unique=True, nullable=False),
    Column("serial_hash", String(64), unique=True, nullable=False),
    Column("serial_ct", LargeBinary, nullable=False),
    Column("device_type", String(128), nullable=False),
    Column("manufacturer", String(128)),
    Column("model", String(128)),
    Column("manufactured_at", String(40)),
    Column("production_line", String(128)),
    Column("batch_id", Integer, ForeignKey("batches.id"), nullable=False),
    Column("batch_seq", Integer, nullable=False),
    # The payload is never stored (it activates the device): it is signed again from its key id
    # and expiry whenever a label is drawn, and HMAC gives the same bytes every time.
    Column("key_id", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), default=PENDING, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("activated_at", DateTime(timezone=True)),
    Column("user_id", String(256)),
    Column("activation_token_hash", String(64)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", String(256)),
    Column("revoked_reason", String(1000)),
    # Head of the device's action chain: deleting the newest entries is detected too.
    Column("action_count", Integer, default=0, server_default="0", nullable=False),
    Column("action_head", String(64)),
    # Head of the device's pairing-event chain, likewise.
    Column("pairing_count", Integer, default=0, server_default="0", nullable=False),
    Column("pairing_head", String(64)),
    # Keyed seal over the row's state (provision.chain.SEALED_COLUMNS), written with each change.
    Column("seal", String(64), nullable=False),
    Index("ix_devices_batch_seq", "batch_id", "batch_seq"),
    Index("ix_devices_status", "status"),
)

# A component fitted to a device; its own serial is kept encrypted like the device's.
components = Table(
    "device_components",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column(
        "device_pk",
        ROW_ID,
        ForeignKey("devices.id"),
        index=True,
        nullable=False,
    ),
    Column("component_type", String(128), nullable=False),
    Column("component_spec", String(128), nullable=False),
    Column("component_serial_ct", LargeBinary),
    # Keyed hash of (device, type, spec, component serial): rerunning a manifest adds nothing.
    Column("row_hash", String(64), unique=True, nullable=False),
    Column("supplier", String(128)),
    Column("lot", String(128)),
    Column("batch_id", Integer, ForeignKey("batches.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One activation attempt, accepted or rejected; chained per device (entry_hash over the event
# and prev_hash), and the attempts that name no registered device in one chain of their own.
pairing_events = Table(
    "device_pairing_events",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("device_pk", ROW_ID, ForeignKey("devices.id")),
    Column("seq", Integer, nullable=False),
    Column("claimed_device_id", String(16)),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("ip", String(64)),
    Column("user_agent", String(512)),
    Column("fingerprint", String(128)),
    Column("user_id", String(256)),
    Column("result", String(16), nullable=False),
    Column("reason", String(32)),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    UniqueConstraint("device_pk", "seq", name="uq_device_pairing_events_device_seq"),
)

# Chains that belong to no device row: their count and sealed head (today the pairing chain of
# attempts that name no registered device, chain.UNATTACHED).
audit_chains = Table(
    "audit_chains",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("head", String(64)),
)

# One device action; entry_hash chains it to the device's previous entry.
action_log = Table(
    "device_action_log",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column(
        "device_pk",
        ROW_ID,
        ForeignKey("devices.id"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("action_type", String(64), nullable=False),
    Column("metadata_json", Text, nullable=False),
    Column("ip", String(64)),
    Column("actor", String(256)),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    UniqueConstraint("device_pk", "seq", name="uq_device_action_log_device_seq"),
)


@dataclass(frozen=True)
class NewBatch:
    """A batch whose row is created by the transaction of its first chunk (insert_devices)."""

    name: str
    manifest_sha256: str
    components_sha256: str | None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything provision stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Registry:
    """A connection to the registry database; migrated to the latest schema on first use."""

    def __init__(self, url: str, *, migrate: bool = True, sealer: Sealer | None = None) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(f"--db: not a database URL: {url!r}") from None
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgresql = parsed.get_backend_name() == "postgresql"
        # PostgreSQL takes a whole chunk of keys as one array parameter; SQLite binds each one
        # (at most 32,766 variables a statement, 999 before SQLite 3.32).
        self._lookup_chunk = 50_000 if self.is_postgresql else 900
        self._sealer = sealer
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            _create_private(Path(parsed.database))
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 60}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if migrate:
            self.upgrade()

    def upgrade(self) -> str:
        """Bring the schema to the latest Alembic revision; returns that revision."""
        from provision.migrations import upgrade_to_head

        try:
            revision = upgrade_to_head(self.engine, self._sealer)
        except OperationalError as exc:
            raise ConfigError(
                f"cannot open the registry database {self.safe_url}: {exc.orig}"
            ) from None
        log.info("registry %s: schema revision %s", self.safe_url, revision)
        return revision

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    # -- batches ---------------------------------------------------------------------------

    def _batch_in(self, conn: Connection, batch: int | NewBatch) -> int:
        """The batch's id, its row created (or its manifest digests updated) in this transaction.

        Creating it with the first chunk, not before, means a run that fails or registers
        nothing leaves no batch row behind.
        """
        if isinstance(batch, int):
            return batch
        now = utcnow()
        row = conn.execute(select(batches.c.id).where(batches.c.name == batch.name)).first()
        if row is not None:
            conn.execute(
                update(batches)
                .where(batches.c.id == row.id)
                .values(
                    manifest_sha256=batch.manifest_sha256,
                    components_sha256=batch.components_sha256,
                    updated_at=now,
                )
            )
            return int(row.id)
        result = conn.execute(
            insert(batches).values(
                name=batch.name,
                manifest_sha256=batch.manifest_sha256,
                components_sha256=batch.components_sha256,
                created_at=now,
                updated_at=now,
            )
        )
        pk = result.inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def batch_id(self, name: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(select(batches.c.id).where(batches.c.name == name)).scalar()

    def batch_name(self, batch_id: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(batches.c.name).where(batches.c.id == batch_id)).scalar()

    def batch_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(batches.c.name).order_by(batches.c.id)).scalars())

    # -- devices ---------------------------------------------------------------------------

    def _among(self, column: Any, values: list[str]) -> Any:
        """`column IN (values)`: one array parameter on PostgreSQL (`= ANY(:values)`), which
        spares compiling, sending and planning thousands of bind parameters a query."""
        if self.is_postgresql:
            # Here, not at the top: the dialect (and asyncio with it) costs 25 ms to import.
            from sqlalchemy.dialects.postgresql import ARRAY

            return column == any_(bindparam(None, values, type_=ARRAY(String)))
        return column.in_(values)

    def _by_index(self, conn: Connection) -> None:
        """Key lookups on this transaction probe the unique index, whatever the statistics say.

        A registry's first big batch grows the devices table faster than autovacuum analyzes
        it; PostgreSQL then plans `serial_hash = ANY(5,000 keys)` as a sequential scan, so
        each chunk's lookup costs more as the batch goes on (1,000,000 devices: lookups took
        18.3 s instead of 3.9 s). Index probes are the right plan for a keyed lookup at any size.
        """
        if self.is_postgresql:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")

    def existing_by_hash(self, hashes: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        """For the hashes already registered: serial hash -> (device pk, batch id, batch name)."""
        found: dict[str, tuple[int, int, str]] = {}
        with self.engine.connect() as conn:
            self._by_index(conn)
            for chunk in _chunks(hashes, self._lookup_chunk):
                q = (
                    select(devices.c.serial_hash, devices.c.id, devices.c.batch_id, batches.c.name)
                    .join(batches, batches.c.id == devices.c.batch_id)
                    .where(self._among(devices.c.serial_hash, chunk))
                )
                for h, pk, bid, bname in conn.execute(q):
                    found[h] = (pk, bid, bname)
        return found

    def insert_devices(
        self,
        rows: list[dict[str, Any]],
        component_rows: list[dict[str, Any]],
        batch: int | NewBatch,
    ) -> int:
        """Insert one chunk of devices and their components in a single transaction.

        BATCH is the batch's id, or a NewBatch whose row this transaction creates; every row
        gets its id. Component rows carry `serial_hash`; it is resolved to the device's primary
        key here. Returns the batch id. A row that another process stored meanwhile (or a
        device id two serials share) raises ConflictError and nothing of the chunk is written.
        """
        try:
            with self.engine.begin() as conn:
                if self.is_sqlite:
                    _bulk_pragmas(conn)
                batch_id = self._batch_in(conn, batch)
                if rows:
                    for r in rows:
                        r["batch_id"] = batch_id
                    if self.is_postgresql and self.engine.dialect.driver == "psycopg":
                        _copy_rows(conn, devices, rows)
                    elif self.is_sqlite:
                        _sqlite_insert_rows(conn, devices, rows)
                    else:
                        conn.execute(insert(devices), rows)
                if component_rows:
                    self._by_index(conn)
                    owners = list({r["serial_hash"] for r in component_rows})
                    pks = {
                        h: pk
                        for h, pk in conn.execute(
                            select(devices.c.serial_hash, devices.c.id).where(
                                self._among(devices.c.serial_hash, owners)
                            )
                        )
                    }
                    conn.execute(
                        insert(components),
                        [
                            {k: v for k, v in r.items() if k != "serial_hash"}
                            | {"device_pk": pks[r["serial_hash"]], "batch_id": batch_id}
                            for r in component_rows
                        ],
                    )
        except IntegrityError as exc:
            raise ConflictError(type(exc.orig).__name__) from None
        return batch_id

    def existing_component_hashes(self, hashes: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.engine.connect() as conn:
            self._by_index(conn)
            for chunk in _chunks(hashes, self._lookup_chunk):
                q = select(components.c.row_hash).where(self._among(components.c.row_hash, chunk))
                found.update(conn.execute(q).scalars())
        return found

    def count_devices(self, batch_id: int | None = None) -> int:
        q = select(func.count()).select_from(devices)
        if batch_id is not None:
            q = q.where(devices.c.batch_id == batch_id)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def count_components(self, batch_id: int | None = None) -> int:
        q = select(func.count()).select_from(components)
        if batch_id is not None:
            q = q.where(components.c.batch_id == batch_id)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def iter_batch_labels(self, batch_id: int, chunk: int = 5000) -> Iterator[list[dict[str, Any]]]:
        """The batch's devices in label order, a chunk at a time (keyset pagination)."""
        cols = (
            devices.c.id,
            devices.c.batch_seq,
            devices.c.device_id,
            devices.c.device_type,
            devices.c.manufacturer,
            devices.c.model,
            devices.c.key_id,
            devices.c.expires_at,
            devices.c.serial_ct,
        )
        last = (-1, -1)
        with self.engine.connect() as conn:
            while True:
                q = (
                    select(*cols)
                    .where(devices.c.batch_id == batch_id)
                    .where(
                        (devices.c.batch_seq > last[0])
                        | ((devices.c.batch_seq == last[0]) & (devices.c.id > last[1]))
                    )
                    .order_by(devices.c.batch_seq, devices.c.id)
                    .limit(chunk)
                )
                rows = [dict(r._mapping) for r in conn.execute(q)]
                if not rows:
                    return
                for r in rows:
                    r["expires_at"] = _aware(r["expires_at"])
                yield rows
                last = (rows[-1]["batch_seq"], rows[-1]["id"])

    def device(self, device_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
        if row is None:
            return None
        d = dict(row._mapping)
        for k in ("expires_at", "created_at", "activated_at", "revoked_at"):
            d[k] = _aware(d[k])
        return d

    def device_components(self, device_pk: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = (
                select(components)
                .where(components.c.device_pk == device_pk)
                .order_by(components.c.id)
            )
            return [dict(r._mapping) for r in conn.execute(q)]

    def batch_key_ids(self, batch_id: int) -> set[int]:
        """The signing keys of the batch's payloads."""
        q = select(devices.c.key_id).where(devices.c.batch_id == batch_id).distinct()
        with self.engine.connect() as conn:
            return {int(k) for k in conn.execute(q).scalars()}

    def max_batch_seq(self, batch_id: int) -> int:
        with self.engine.connect() as conn:
            q = select(func.max(devices.c.batch_seq)).where(devices.c.batch_id == batch_id)
            return int(conn.execute(q).scalar() or 0)

    # -- activation and lifetime tracking -------------------------------------------------------

    def device_by_serial_hash(self, serial_hash: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(devices.c.device_id).where(devices.c.serial_hash == serial_hash)
            ).first()
        return self.device(row.device_id) if row else None

    def record_pairing_event(self, event: dict[str, Any], sealer: Sealer) -> None:
        """Store a rejected attempt: on its device's pairing chain, else on the unattached one."""
        with self.engine.begin() as conn:
            pk = event.get("device_pk")
            device_id = None
            if pk is not None:
                device_id = conn.execute(
                    select(devices.c.device_id).where(devices.c.id == pk)
                ).scalar_one()
            self._append_pairing(conn, pk, device_id, event, sealer)
            if pk is not None:
                self._reseal(conn, pk, sealer)

    def try_activate(
        self,
        device_pk: int,
        device_id: str,
        user: str | None,
        token_hash: str,
        now: datetime,
        event: dict[str, Any],
        sealer: Sealer,
    ) -> str | None:
        """Pending -> activated with one conditional UPDATE; None if this call won, else the
        status that made it lose. The pairing event, the `activated` action and the device's
        new seal are written in the same transaction."""
        with self.engine.begin() as conn:
            won = (
                conn.execute(
                    update(devices)
                    .where(devices.c.id == device_pk, devices.c.status == PENDING)
                    .values(
                        status=ACTIVATED,
                        activated_at=now,
                        user_id=user,
                        activation_token_hash=token_hash,
                    )
                ).rowcount
                == 1
            )
            status = None
            if not won:
                status = conn.execute(
                    select(devices.c.status).where(devices.c.id == device_pk)
                ).scalar_one()
            self._append_pairing(
                conn,
                device_pk,
                device_id,
                event
                | {
                    "result": "accepted" if won else "rejected",
                    "reason": None if won else _LOST_REASON.get(status or "", "already_activated"),
                },
                sealer,
            )
            if won:
                meta = canonical_json({"user": user})
                self._append_action(
                    conn,
                    device_pk,
                    device_id,
                    "activated",
                    meta,
                    event.get("ip"),
                    user,
                    now,
                    sealer,
                )
            self._reseal(conn, device_pk, sealer)
        return status

    def revoke_device(
        self, device_pk: int, device_id: str, by: str, reason: str, now: datetime, sealer: Sealer
    ) -> bool:
        """Mark a device revoked (from any other state); False if it already was."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(devices)
                .where(devices.c.id == device_pk, devices.c.status != REVOKED)
                .values(status=REVOKED, revoked_at=now, revoked_by=by, revoked_reason=reason)
            ).rowcount
            if changed:
                meta = canonical_json({"reason": reason})
                self._append_action(
                    conn, device_pk, device_id, "revoked", meta, None, by, now, sealer
                )
                self._reseal(conn, device_pk, sealer)
        return bool(changed)

    def append_action(
        self,
        device_pk: int,
        device_id: str,
        action_type: str,
        metadata_json: str,
        ip: str | None,
        actor: str | None,
        now: datetime,
        sealer: Sealer,
    ) -> dict[str, Any]:
        with self.engine.begin() as conn:
            entry = self._append_action(
                conn, device_pk, device_id, action_type, metadata_json, ip, actor, now, sealer
            )
            self._reseal(conn, device_pk, sealer)
            return entry

    def _append_action(
        self,
        conn: Connection,
        device_pk: int,
        device_id: str,
        action_type: str,
        metadata_json: str,
        ip: str | None,
        actor: str | None,
        now: datetime,
        sealer: Sealer,
    ) -> dict[str, Any]:
        # Bumping the counter first takes the device row's write lock (PostgreSQL) or the
        # database write lock (SQLite): concurrent appends to one device queue up here.
        seq = conn.execute(
            update(devices)
            .where(devices.c.id == device_pk)
            .values(action_count=devices.c.action_count + 1)
            .returning(devices.c.action_count)
        ).scalar_one()
        prev: str | None = genesis_hash(device_id)
        if seq > 1:
            prev = conn.execute(
                select(action_log.c.entry_hash).where(
                    action_log.c.device_pk == device_pk, action_log.c.seq == seq - 1
                )
            ).scalar()
            if prev is None:
                raise DeviceError(
                    f"the action log of device {device_id} is broken at entry #{seq - 1}; "
                    "nothing appended (run `provision audit verify`)"
                )
        assert prev is not None
        now = now.astimezone(UTC)
        entry_hash = sealer.action(device_id, seq, now, action_type, metadata_json, ip, actor, prev)
        row = {
            "device_pk": device_pk,
            "seq": seq,
            "occurred_at": now,
            "action_type": action_type,
            "metadata_json": metadata_json,
            "ip": ip,
            "actor": actor,
            "prev_hash": prev,
            "entry_hash": entry_hash,
        }
        pk = conn.execute(insert(action_log).values(**row)).inserted_primary_key
        # The head is keyed too: deleting the newest entries and rewinding the head by hand
        # needs the keyring, not just database access.
        head = sealer.action_head(device_id, seq, now, entry_hash)
        conn.execute(update(devices).where(devices.c.id == device_pk).values(action_head=head))
        assert pk is not None
        return row | {"id": int(pk[0])}

    def _append_pairing(
        self,
        conn: Connection,
        device_pk: int | None,
        device_id: str | None,
        event: dict[str, Any],
        sealer: Sealer,
    ) -> None:
        """Append EVENT to its device's pairing chain (or the unattached one), head updated."""
        # Bumping the chain's counter first takes its row's write lock: appends queue up here.
        if device_pk is not None:
            assert device_id is not None
            chain, counter, head_of = device_id, devices.c.pairing_count, devices.c.pairing_head
            owner = devices.c.id == device_pk
            same_chain = pairing_events.c.device_pk == device_pk
        else:
            chain, counter, head_of = UNATTACHED, audit_chains.c.count, audit_chains.c.head
            owner = audit_chains.c.name == UNATTACHED
            same_chain = pairing_events.c.device_pk.is_(None)
        table = counter.table
        seq = conn.execute(
            update(table).where(owner).values({counter: counter + 1}).returning(counter)
        ).scalar_one()
        prev: str | None = pairing_genesis(chain)
        if seq > 1:
            prev = conn.execute(
                select(pairing_events.c.entry_hash).where(
                    same_chain, pairing_events.c.seq == seq - 1
                )
            ).scalar()
            if prev is None:
                raise DeviceError(
                    f"the pairing log of {'device ' + chain if device_pk else 'unknown devices'} "
                    f"is broken at event #{seq - 1}; nothing recorded "
                    "(run `provision audit verify`)"
                )
        assert prev is not None
        occurred = event["occurred_at"].astimezone(UTC)
        row = {
            "device_pk": device_pk,
            "seq": seq,
            "occurred_at": occurred,
            "claimed_device_id": event.get("claimed_device_id"),
            "ip": event.get("ip"),
            "user_agent": event.get("user_agent"),
            "fingerprint": event.get("fingerprint"),
            "user_id": event.get("user_id"),
            "result": event["result"],
            "reason": event.get("reason"),
        }
        entry = sealer.pairing(
            chain,
            seq,
            occurred,
            row["claimed_device_id"],
            row["ip"],
            row["user_agent"],
            row["fingerprint"],
            row["user_id"],
            row["result"],
            row["reason"],
            prev,
        )
        conn.execute(insert(pairing_events).values(**row, prev_hash=prev, entry_hash=entry))
        head = sealer.pairing_head(chain, seq, entry)
        conn.execute(update(table).where(owner).values({head_of: head}))

    def _reseal(self, conn: Connection, device_pk: int, sealer: Sealer) -> None:
        """Seal the device row's state as this transaction leaves it."""
        state = conn.execute(
            select(*(devices.c[c] for c in SEALED_COLUMNS)).where(devices.c.id == device_pk)
        ).one()
        conn.execute(
            update(devices)
            .where(devices.c.id == device_pk)
            .values(seal=sealer.device_values(*state))
        )

    def pairing_events_of(self, device_pk: int, limit: int | None = None) -> list[dict[str, Any]]:
        q = select(pairing_events).where(pairing_events.c.device_pk == device_pk)
        return self._latest(q, pairing_events.c.seq, limit)

    def accepted_pairing_of(self, device_pk: int) -> dict[str, Any] | None:
        """The attempt that activated the device, if one did."""
        q = select(pairing_events).where(
            pairing_events.c.device_pk == device_pk, pairing_events.c.result == "accepted"
        )
        with self.engine.connect() as conn:
            row = conn.execute(q.order_by(pairing_events.c.seq).limit(1)).first()
        if row is None:
            return None
        d = dict(row._mapping)
        d["occurred_at"] = _aware(d["occurred_at"])
        return d

    def rejected_pairing_counts(self, device_pk: int) -> dict[str, int]:
        """The device's rejected attempts, counted by reason."""
        q = (
            select(pairing_events.c.reason, func.count())
            .where(pairing_events.c.device_pk == device_pk, pairing_events.c.result != "accepted")
            .group_by(pairing_events.c.reason)
        )
        with self.engine.connect() as conn:
            return {str(reason): int(n) for reason, n in conn.execute(q)}

    def actions_of(self, device_pk: int, limit: int | None = None) -> list[dict[str, Any]]:
        q = select(action_log).where(action_log.c.device_pk == device_pk)
        return self._latest(q, action_log.c.seq, limit)

    def _latest(self, q: Any, order: Any, limit: int | None) -> list[dict[str, Any]]:
        """The newest `limit` rows (all without a limit), oldest first."""
        q = q.order_by(order.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        rows.reverse()
        for r in rows:
            r["occurred_at"] = _aware(r["occurred_at"])
        return rows

    def count_actions(self, device_pk: int) -> int:
        q = select(func.count()).select_from(action_log).where(action_log.c.device_pk == device_pk)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    @contextlib.contextmanager
    def audit_snapshot(self) -> Iterator[AuditSnapshot]:
        """One consistent, read-only view of the chains, for `audit verify` and checkpoints.

        Raw driver cursors, not SQLAlchemy rows: ten million entries are read in one pass,
        and the row objects alone would cost more than checking them.
        """
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if self.is_sqlite:
                cur.execute("BEGIN")  # every cursor below reads the same WAL snapshot
            elif self.is_postgresql:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.close()
            yield AuditSnapshot(raw, self.is_postgresql)
        finally:
            raw.rollback()
            raw.close()

    def device_pk(self, device_id: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(devices.c.id).where(devices.c.device_id == device_id)
            ).scalar()

    def reconcile_frame(self, chunk: int = 100_000) -> Any:
        """Every device as a pandas frame (no plaintext: serial hashes only), for reconcile.

        Streamed a chunk at a time in primary-key order, with only the columns reconcile needs.
        Timestamps come back as the database's own text (SQLite) or datetimes (PostgreSQL) and
        are parsed by pandas a column at a time; repeated text (type, model, batch name, status)
        keeps one string per distinct value, so a million devices load in seconds.
        """
        import numpy as np
        import pandas as pd
        from sqlalchemy import type_coerce

        stamps = ("registered_at", "activated_at", "revoked_at")
        q = select(
            devices.c.serial_hash,
            devices.c.device_id,
            devices.c.device_type,
            devices.c.model,
            devices.c.batch_id,
            devices.c.status,
            type_coerce(devices.c.created_at, String).label("registered_at"),
            type_coerce(devices.c.activated_at, String).label("activated_at"),
            type_coerce(devices.c.revoked_at, String).label("revoked_at"),
        ).order_by(devices.c.id)

        def shared(values: Any) -> Any:
            codes, uniques = pd.factorize(np.asarray(values, dtype=object))
            lookup = np.concatenate([np.asarray(uniques, dtype=object), np.array([None])])
            return lookup[codes]  # code -1 (NULL) picks the None at the end

        columns = ["serial_hash", "device_id", "device_type", "model", "batch", "status", *stamps]
        parts = []
        with self.engine.connect() as conn:
            names = {i: n for i, n in conn.execute(select(batches.c.id, batches.c.name))}
            result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
            for rows in result.partitions():
                (hashes, ids, types, models, batch_ids, status, *times) = zip(*rows, strict=True)
                part = {
                    "serial_hash": np.asarray(hashes, dtype=object),
                    "device_id": np.asarray(ids, dtype=object),
                    "device_type": shared(types),
                    "model": shared(models),
                    "batch": shared(pd.Series(batch_ids).map(names)),
                    "status": shared(status),
                }
                for col, values in zip(stamps, times, strict=True):
                    part[col] = pd.to_datetime(
                        pd.Series(values, dtype=object), utc=True, format="ISO8601"
                    )
                parts.append(pd.DataFrame(part))
        if not parts:
            empty = {c: pd.Series(dtype=object) for c in columns}
            empty |= {c: pd.Series(dtype="datetime64[us, UTC]") for c in stamps}
            return pd.DataFrame(empty, columns=columns)
        return pd.concat(parts, ignore_index=True)


_LOST_REASON = {ACTIVATED: "already_activated", REVOKED: "revoked_device"}

AUDIT_DEVICE_COLUMNS = ("id", "seal", *SEALED_COLUMNS)
AUDIT_ACTION_COLUMNS = (
    "device_pk",
    "seq",
    "id",
    "occurred_at",
    "action_type",
    "metadata_json",
    "ip",
    "actor",
    "prev_hash",
    "entry_hash",
)
AUDIT_PAIRING_COLUMNS = (
    "device_pk",
    "seq",
    "id",
    "occurred_at",
    "claimed_device_id",
    "ip",
    "user_agent",
    "fingerprint",
    "user_id",
    "result",
    "reason",
    "prev_hash",
    "entry_hash",
)


class AuditSnapshot:
    """Streams of raw rows (tuples in the AUDIT_*_COLUMNS order) from one read transaction.

    Devices, actions and pairing events come in device order, each stream bounded to the
    primary keys LO..HI, so that a verifier can merge them and several can split the registry.
    Timestamps are what the driver gives: SQLite's own text, or datetimes (PostgreSQL).
    """

    BATCH = 20_000

    def __init__(self, raw: Any, is_postgresql: bool) -> None:
        self._raw = raw
        self._pg = is_postgresql
        self._names = itertools.count()

    def _stream(self, sql: str) -> Iterator[tuple[Any, ...]]:
        if self._pg:
            # A server-side cursor: PostgreSQL sends the rows as they are read, not all at once.
            cur = self._raw.driver_connection.cursor(name=f"provision_audit_{next(self._names)}")
            cur.itersize = self.BATCH
        else:
            cur = self._raw.cursor()
        try:
            cur.execute(sql)
            while rows := cur.fetchmany(self.BATCH):
                yield from rows
        finally:
            cur.close()

    def bounds(self) -> tuple[int, int] | None:
        """The smallest and largest device primary key, or None without devices."""
        cur = self._raw.cursor()
        try:
            cur.execute("SELECT MIN(id), MAX(id) FROM devices")
            lo, hi = cur.fetchone()
        finally:
            cur.close()
        return None if lo is None else (int(lo), int(hi))

    def devices(self, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
        return self._stream(
            f"SELECT {', '.join(AUDIT_DEVICE_COLUMNS)} FROM devices "
            f"WHERE id BETWEEN {int(lo)} AND {int(hi)} ORDER BY id"
        )

    def actions(self, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
        return self._stream(
            f"SELECT {', '.join(AUDIT_ACTION_COLUMNS)} FROM device_action_log "
            f"WHERE device_pk BETWEEN {int(lo)} AND {int(hi)} ORDER BY device_pk, seq, id"
        )

    def pairings(self, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
        return self._stream(
            f"SELECT {', '.join(AUDIT_PAIRING_COLUMNS)} FROM device_pairing_events "
            f"WHERE device_pk BETWEEN {int(lo)} AND {int(hi)} ORDER BY device_pk, seq, id"
        )

    def unattached(self) -> Iterator[tuple[Any, ...]]:
        return self._stream(
            f"SELECT {', '.join(AUDIT_PAIRING_COLUMNS)} FROM device_pairing_events "
            "WHERE device_pk IS NULL ORDER BY seq, id"
        )

    def heads(self) -> Iterator[tuple[Any, ...]]:
        """(device_id, action_count, action_head, pairing_count, pairing_head) by device id."""
        return self._stream(
            "SELECT device_id, action_count, action_head, pairing_count, pairing_head "
            "FROM devices ORDER BY device_id"
        )

    def chain(self, name: str) -> tuple[int, str | None] | None:
        """An audit_chains row's (count, head)."""
        cur = self._raw.cursor()
        try:
            marker = "%s" if self._pg else "?"
            cur.execute(f"SELECT count, head FROM audit_chains WHERE name = {marker}", (name,))
            row = cur.fetchone()
        finally:
            cur.close()
        return None if row is None else (int(row[0]), row[1])


def _bulk_columns(table: Table, rows: list[dict[str, Any]]) -> list[str]:
    """The columns a bulk insert of `rows` names: the same in every row, and none left out
    that only SQLAlchemy's INSERT could fill (a Python-side default)."""
    names = list(rows[0])
    for r in rows:
        if len(r) != len(names):
            raise ValueError("rows to insert in bulk must all have the same keys")
    for col in table.c:
        if col.name not in names and col.default is not None and col.server_default is None:
            raise ValueError(f"{table.name}.{col.name}: its Python-side default needs INSERT")
    return names


def _copy_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows with PostgreSQL's COPY (psycopg 3): about twice executemany's rate.

    Columns missing from the rows get their server defaults, as with INSERT; a constraint
    violation is raised as SQLAlchemy's IntegrityError, as executemany would.
    """
    import psycopg

    names = _bulk_columns(table, rows)
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(statement) as copy:
            for r in rows:
                copy.write_row([r[n] for n in names])
    except psycopg.IntegrityError as exc:
        raise IntegrityError(statement, None, exc) from exc
    finally:
        cursor.close()


def _sqlite_insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """executemany with plain tuples: the rows converted by the columns' own bind processors
    (datetimes to SQLite's text form, ...) in one pass, instead of SQLAlchemy's per-row
    parameter handling, which costs as much as SQLite's insert itself (about 10 us a row).
    """
    names = _bulk_columns(table, rows)
    dialect = conn.dialect
    processors = [table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names]
    if any(processors):
        data = [
            tuple(p(r[n]) if p else r[n] for n, p in zip(names, processors, strict=True))
            for r in rows
        ]
    else:
        data = [tuple(r[n] for n in names) for r in rows]
    statement = (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    )
    conn.exec_driver_sql(statement, data)  # type: ignore[arg-type]


def _create_private(path: Path) -> None:
    """Create an SQLite registry file readable by its owner only (mode 0600), if it is new.

    SQLite gives its -wal and -shm files the database file's mode, so they are private too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask
    os.close(fd)


def _chunks(items: Sequence[str] | Iterable[str], size: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _bulk_pragmas(conn: Connection) -> None:
    """For the connection that registers a batch (not every connection, not the web service's).

    32 MiB of page cache instead of 2 MiB (the default): the unique indexes of a million devices are
    random-access B-trees, and their upper levels stay cached. The WAL checkpointed every 20,000
    pages (80 MB) instead of 1,000: a big batch's index pages are copied back to the database
    file, and fsynced, 20 times less often. Registering 1,000,000 devices alone (this machine):
    8 MiB 62.0 s, 246 MB peak; 32 MiB 57.0 s, 274 MB; 128 MiB 54.8 s, 376 MB. 32 MiB keeps most
    of the gain and the memory of a big batch close to a small one's.
    """
    conn.exec_driver_sql("PRAGMA cache_size=-32768")
    conn.exec_driver_sql("PRAGMA wal_autocheckpoint=20000")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (the web service) run beside a nightly batch; foreign keys are off by
    # default in SQLite and must be turned on per connection.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
