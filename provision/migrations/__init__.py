"""Alembic migrations of the registry, run programmatically (`provision db upgrade`).

Every command opens the registry and checks its schema first. When the schema is current, as it
nearly always is, that check is one query against alembic_version and needs no Alembic at all:
importing Alembic and reading the revision scripts would cost more than a `history` query.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

    from provision.chain import Sealer
    from provision.keys import Keyring

HERE = Path(__file__).parent
# The newest revision in versions/; a test holds it to what Alembic reads from the scripts.
HEAD = "0012"


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def head_revision() -> str:
    """The newest revision, as Alembic reads it from the scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _stamped_revision(engine: Engine) -> str | None:
    """alembic_version's single row, or None (no table yet, or several heads)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError as exc:
        if _no_such_table(exc):  # a new database
            return None
        raise  # unreachable, not a database, ...: reported once, not retried through Alembic
    return rows[0][0] if len(rows) == 1 else None


def _no_such_table(exc: DBAPIError) -> bool:
    # PostgreSQL: SQLSTATE 42P01 undefined_table; SQLite says so in its message.
    return getattr(exc.orig, "sqlstate", None) == "42P01" or "no such table" in str(exc.orig)


def upgrade_to_head(
    engine: Engine, sealer: Sealer | None = None, keyring: Keyring | None = None
) -> str:
    """Migrate to the newest revision; a no-op (one query) when already there.

    SEALER and KEYRING let a migration seal (0003) or hash (0004) rows already there.
    """
    if _stamped_revision(engine) == HEAD:
        return HEAD
    return upgrade_to(engine, "head", sealer, keyring)


def upgrade_to(
    engine: Engine, target: str, sealer: Sealer | None = None, keyring: Keyring | None = None
) -> str:
    """Migrate to TARGET (a revision, or "head") in one transaction; returns the revision."""
    from alembic import command

    cfg = alembic_config()
    with engine.connect() as conn, _sqlite_migration(conn), conn.begin():
        cfg.attributes["connection"] = conn
        cfg.attributes["sealer"] = sealer
        cfg.attributes["keyring"] = keyring
        command.upgrade(cfg, target)
        if conn.dialect.name == "sqlite":
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"the migration left rows without a parent: {broken[:5]}")
    return head_revision() if target == "head" else target


def downgrade_to(engine: Engine, target: str) -> str:
    """Migrate down to TARGET in one transaction (as upgrade_to, foreign keys off on SQLite)."""
    from alembic import command

    cfg = alembic_config()
    with engine.connect() as conn, _sqlite_migration(conn), conn.begin():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, target)
    return target


@contextlib.contextmanager
def _sqlite_migration(conn: Connection) -> Iterator[None]:
    """On SQLite: one real transaction for the whole migration, with foreign keys off.

    Python's sqlite3 module opens a transaction only before INSERT, UPDATE and DELETE, so DDL
    would commit statement by statement and a failed migration would leave half of itself;
    here the driver's own transaction handling is off and BEGIN is explicit. Alembic rebuilds a
    table to drop or alter a column, and with foreign keys enforced, dropping the old copy of a
    table others refer to fails; the pragma only takes effect outside a transaction, so it is
    set first, and the rows are checked (foreign_key_check) before the commit.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    raw: Any = conn.connection.dbapi_connection
    level = raw.isolation_level
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.isolation_level = None
    raw.execute("BEGIN")
    try:
        yield
    finally:
        if raw.in_transaction:
            raw.rollback()
        raw.isolation_level = level
        raw.execute("PRAGMA foreign_keys=ON")
