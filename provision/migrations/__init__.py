"""Alembic migrations of the registry, run programmatically (`provision db upgrade`).

Every command opens the registry and checks its schema first. When the schema is current, as it
nearly always is, that check is one query against alembic_version and needs no Alembic at all:
importing Alembic and reading the revision scripts would cost more than a `history` query.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

HERE = Path(__file__).parent
# The newest revision in versions/; a test holds it to what Alembic reads from the scripts.
HEAD = "0002"


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


def upgrade_to_head(engine: Engine) -> str:
    """Migrate to the newest revision; a no-op (one query) when already there."""
    if _stamped_revision(engine) == HEAD:
        return HEAD
    from alembic import command

    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head_revision()
