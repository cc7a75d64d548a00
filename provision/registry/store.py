"""The engine and everything dialect-specific: connections, errors, bulk paths, audit reads.

The subject modules (batches, devices, events) write their queries once, in SQLAlchemy Core;
what differs between SQLite and PostgreSQL (COPY, array parameters, pragmas, server-side
cursors) is here, and so is the translation of SQLAlchemy's exceptions into ProvisionErrors.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import String, Table, any_, bindparam, create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from provision.chain import SEALED_COLUMNS, Sealer
from provision.errors import ConfigError, ConflictError, RegistryError
from provision.keys import Keyring

log = logging.getLogger("provision.registry")


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything provision stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    # PostgreSQL gives the session's time zone: provision speaks UTC whatever the server's.
    return value.astimezone(UTC) if value is not None else None


class Store:
    """The database behind a registry: its engine, dialect and migrations."""

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = True,
        sealer: Sealer | None = None,
        create: bool = True,
        keyring: Keyring | None = None,
    ) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(f"--db: not a database URL: {url!r}") from None
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgresql = parsed.get_backend_name() == "postgresql"
        # An in-memory SQLite registry is this process's alone: no worker process can open it.
        self.in_memory = self.is_sqlite and parsed.database in (None, "", ":memory:")
        # PostgreSQL takes a whole chunk of keys as one array parameter; SQLite binds each one
        # (at most 32,766 variables a statement, 999 before SQLite 3.32).
        self.lookup_chunk = 50_000 if self.is_postgresql else 900
        # A migration may need the keyring: 0003 seals existing rows, 0004 hashes serials.
        self._keyring = keyring
        self._sealer = sealer or (Sealer(keyring.pepper) if keyring is not None else None)
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            if not create and not path.exists():
                # Only the commands that make a registry create one: anything else, run in the
                # wrong folder, would find an empty new registry and say "no such device".
                raise ConfigError(f"no registry at {path} (set PROVISION_DB_URL or --db)")
            _create_private(path)
        # A failed statement's values never reach an exception's text (a log line): they may be
        # a password's or a token's hash, a user's address.
        kwargs: dict[str, Any] = {"hide_parameters": True}
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
            revision = upgrade_to_head(self.engine, self._sealer, self._keyring)
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

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction, committed at the end; errors as ProvisionErrors."""
        with self._errors(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reading; errors as ProvisionErrors."""
        with self._errors(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def read_once(self) -> Iterator[Connection]:
        """A connection for one read outside a transaction (autocommit): on PostgreSQL one
        round trip for the statement, where a transaction adds a BEGIN and a ROLLBACK."""
        with self._errors(), self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextlib.contextmanager
    def driver_once(self) -> Iterator[Any]:
        """The pool's own psycopg connection, in autocommit, for statements run so often that
        SQLAlchemy's execution around each costs more than the database does (the activation,
        PostgreSQL only). Driver errors come out as read_once's do; a connection the server
        dropped is thrown away, not handed to the next request."""
        import psycopg

        assert self.is_postgresql and self.engine.dialect.driver == "psycopg"
        try:
            raw = self.engine.raw_connection()  # the pool's; its connect errors come out raw
        except psycopg.Error as exc:
            raise self._refused(exc) from exc
        conn: Any = raw.driver_connection
        assert conn is not None
        try:
            conn.autocommit = True
            yield conn
        except psycopg.Error as exc:
            dropped = self.engine.dialect.is_disconnect(exc, conn, None)  # type: ignore[arg-type]
            if conn.broken or dropped:
                # As SQLAlchemy does on a disconnect: every connection the pool made before
                # now is replaced at its next checkout (a restarted server dropped them all),
                # not only this one.
                self.engine.pool._invalidate(raw, exc)
            if isinstance(exc, psycopg.IntegrityError):
                raise ConflictError(type(exc).__name__) from exc
            raise self._refused(exc) from exc
        finally:
            if not conn.closed:
                try:
                    conn.autocommit = False  # as the pool hands connections out
                except psycopg.Error as exc:
                    raw.invalidate(exc)
            raw.close()

    def _refused(self, cause: BaseException | None) -> RegistryError:
        """What the database (or its driver) refused, naming the registry."""
        return RegistryError(f"registry {self.safe_url}: {cause}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLAlchemy's exceptions never leave the registry: a clash of unique keys is a
        ConflictError (another process stored the row meanwhile), anything else the database
        refuses is a RegistryError naming the registry."""
        try:
            yield
        except IntegrityError as exc:
            raise ConflictError(type(exc.orig).__name__) from exc
        except DBAPIError as exc:
            raise self._refused(exc.orig) from exc

    def among(self, column: Any, values: list[str]) -> Any:
        """`column IN (values)`: one array parameter on PostgreSQL (`= ANY(:values)`), which
        spares compiling, sending and planning thousands of bind parameters a query."""
        if self.is_postgresql:
            # Here, not at the top: the dialect (and asyncio with it) costs 25 ms to import.
            from sqlalchemy.dialects.postgresql import ARRAY

            return column == any_(bindparam(None, values, type_=ARRAY(String)))
        return column.in_(values)

    def by_index(self, conn: Connection) -> None:
        """Key lookups on this transaction probe the unique index, whatever the statistics say.

        A registry's first big batch grows the devices table faster than autovacuum analyzes
        it; PostgreSQL then plans `serial_hash = ANY(5,000 keys)` as a sequential scan, so
        each chunk's lookup costs more as the batch goes on (1,000,000 devices: lookups took
        18.3 s instead of 3.9 s). Index probes are the right plan for a keyed lookup at any size.
        """
        if self.is_postgresql:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")

    def insert_rows(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert many rows the fastest way the dialect has (COPY, plain executemany)."""
        if self.is_postgresql and self.engine.dialect.driver == "psycopg":
            _copy_rows(conn, table, rows)
        elif self.is_sqlite:
            _sqlite_insert_rows(conn, table, rows)
        else:
            from sqlalchemy import insert

            conn.execute(insert(table), rows)

    def insert_ignoring(self, table: Table) -> Any:
        """`INSERT ... ON CONFLICT DO NOTHING` into TABLE, in the dialect's own words (append
        `.on_conflict_do_nothing(...)` targets with RETURNING to tell what went in)."""
        if self.is_postgresql:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def bulk_pragmas(self, conn: Connection) -> None:
        if self.is_sqlite:
            _bulk_pragmas(conn)

    @contextlib.contextmanager
    def audit_snapshot(self) -> Iterator[AuditSnapshot]:
        """One consistent, read-only view of the chains, for `audit verify` and checkpoints.

        Raw driver cursors, not SQLAlchemy rows: ten million entries are read in one pass,
        and the row objects alone would cost more than checking them.
        """
        with self._errors():
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

    def _stream(self, sql: str, *, server: bool = True) -> Iterator[tuple[Any, ...]]:
        # One device's rows (lo == hi) are few: a plain cursor spares the named one's set-up.
        if self._pg and server:
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
            f"WHERE id BETWEEN {int(lo)} AND {int(hi)} ORDER BY id",
            server=lo != hi,
        )

    def actions(self, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
        return self._stream(
            f"SELECT {', '.join(AUDIT_ACTION_COLUMNS)} FROM device_action_log "
            f"WHERE device_pk BETWEEN {int(lo)} AND {int(hi)} ORDER BY device_pk, seq, id",
            server=lo != hi,
        )

    def pairings(self, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
        return self._stream(
            f"SELECT {', '.join(AUDIT_PAIRING_COLUMNS)} FROM device_pairing_events "
            f"WHERE device_pk BETWEEN {int(lo)} AND {int(hi)} ORDER BY device_pk, seq, id",
            server=lo != hi,
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
        raise IntegrityError(statement, None, exc) from exc  # as executemany raises it
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


T = TypeVar("T")


def chunks(items: Sequence[T] | Iterable[T], size: int) -> Iterator[list[T]]:
    buf: list[T] = []
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
