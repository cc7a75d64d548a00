"""The registry: SQLAlchemy models and the only module that queries the database."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from provision.errors import ConfigError

log = logging.getLogger(__name__)

PENDING, ACTIVATED, REVOKED = "pending", "activated", "revoked"


class Base(DeclarativeBase):
    """Declarative base of every provision table."""


class Batch(Base):
    """A nightly batch: a name and the SHA-256 of the manifests it was registered from."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    components_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Device(Base):
    """One device; its serial is stored only as a keyed hash and as AES-GCM ciphertext."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(16), unique=True)
    serial_hash: Mapped[str] = mapped_column(String(64), unique=True)
    serial_ct: Mapped[bytes] = mapped_column(LargeBinary)
    device_type: Mapped[str] = mapped_column(String(128))
    manufacturer: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(128))
    manufactured_at: Mapped[str | None] = mapped_column(String(40))
    production_line: Mapped[str | None] = mapped_column(String(128))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    batch_seq: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[int] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[str | None] = mapped_column(String(256))

    __table_args__ = (Index("ix_devices_batch_seq", "batch_id", "batch_seq"),)


class DeviceComponent(Base):
    """A component fitted to a device; its own serial is kept encrypted like the device's."""

    __tablename__ = "device_components"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_pk: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("devices.id"), index=True
    )
    component_type: Mapped[str] = mapped_column(String(128))
    component_spec: Mapped[str] = mapped_column(String(128))
    component_serial_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Keyed hash of (device, type, spec, component serial): rerunning a manifest adds nothing.
    row_hash: Mapped[str] = mapped_column(String(64), unique=True)
    supplier: Mapped[str | None] = mapped_column(String(128))
    lot: Mapped[str | None] = mapped_column(String(128))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


devices = cast(Table, Device.__table__)
components = cast(Table, DeviceComponent.__table__)
batches = cast(Table, Batch.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything provision stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Registry:
    """A connection to the registry database; migrated to the latest schema on first use."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(f"--db: not a database URL: {url!r}") from None
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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
            return upgrade_to_head(self.engine)
        except OperationalError as exc:
            raise ConfigError(
                f"cannot open the registry database {self.safe_url}: {exc.orig}"
            ) from None

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    # -- batches ---------------------------------------------------------------------------

    def ensure_batch(self, name: str, manifest_sha256: str, components_sha256: str | None) -> int:
        """The id of the named batch, created on first use."""
        now = utcnow()
        with self.engine.begin() as conn:
            row = conn.execute(select(batches.c.id).where(batches.c.name == name)).first()
            if row is not None:
                conn.execute(
                    update(batches)
                    .where(batches.c.id == row.id)
                    .values(
                        manifest_sha256=manifest_sha256,
                        components_sha256=components_sha256,
                        updated_at=now,
                    )
                )
                return int(row.id)
            result = conn.execute(
                insert(batches).values(
                    name=name,
                    manifest_sha256=manifest_sha256,
                    components_sha256=components_sha256,
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

    def batch_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(batches.c.name).order_by(batches.c.id)).scalars())

    # -- devices ---------------------------------------------------------------------------

    def existing_by_hash(self, hashes: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        """For the hashes already registered: serial hash -> (device pk, batch id, batch name)."""
        found: dict[str, tuple[int, int, str]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(hashes, 900):
                q = (
                    select(devices.c.serial_hash, devices.c.id, devices.c.batch_id, batches.c.name)
                    .join(batches, batches.c.id == devices.c.batch_id)
                    .where(devices.c.serial_hash.in_(chunk))
                )
                for h, pk, bid, bname in conn.execute(q):
                    found[h] = (pk, bid, bname)
        return found

    def insert_devices(
        self, rows: list[dict[str, Any]], component_rows: list[dict[str, Any]]
    ) -> None:
        """Insert one chunk of devices and their components in a single transaction.

        Component rows carry `serial_hash`; it is resolved to the device's primary key here.
        """
        with self.engine.begin() as conn:
            if rows:
                conn.execute(insert(devices), rows)
            if component_rows:
                pks = {
                    h: pk
                    for h, pk in conn.execute(
                        select(devices.c.serial_hash, devices.c.id).where(
                            devices.c.serial_hash.in_({r["serial_hash"] for r in component_rows})
                        )
                    )
                }
                conn.execute(
                    insert(components),
                    [
                        {k: v for k, v in r.items() if k != "serial_hash"}
                        | {"device_pk": pks[r["serial_hash"]]}
                        for r in component_rows
                    ],
                )

    def existing_component_hashes(self, hashes: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(hashes, 900):
                q = select(components.c.row_hash).where(components.c.row_hash.in_(chunk))
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
            devices.c.payload,
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
                yield rows
                last = (rows[-1]["batch_seq"], rows[-1]["id"])

    def device(self, device_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
        if row is None:
            return None
        d = dict(row._mapping)
        for k in ("expires_at", "created_at", "activated_at"):
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

    def max_batch_seq(self, batch_id: int) -> int:
        with self.engine.connect() as conn:
            q = select(func.max(devices.c.batch_seq)).where(devices.c.batch_id == batch_id)
            return int(conn.execute(q).scalar() or 0)


def _chunks(items: Sequence[str] | Iterable[str], size: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (the web service) run beside a nightly batch; foreign keys are off by
    # default in SQLite and must be turned on per connection.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
