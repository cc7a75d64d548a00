"""The schema: Alembic migrations produce exactly the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from provision.migrations import HEAD, alembic_config, current_revision, head_revision
from provision.registry import Base, Registry


def test_migrations_build_exactly_the_models(db_url):
    registry = Registry(db_url)
    with registry.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(registry.engine) == head_revision()


def test_the_fast_schema_check_knows_the_newest_revision():
    # Registry skips Alembic when alembic_version holds HEAD: a new migration must move HEAD.
    assert head_revision() == HEAD


def test_first_use_migrates_and_a_second_open_changes_nothing(db_url):
    assert Registry(db_url, migrate=False).table_names() == []
    Registry(db_url)
    tables = Registry(db_url).table_names()
    assert {
        "batches",
        "devices",
        "device_components",
        "device_pairing_events",
        "device_action_log",
    } <= set(tables)


def test_downgrade_to_base_and_upgrade_again(db_url):
    registry = Registry(db_url)
    cfg = alembic_config()
    with registry.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(registry.table_names()) <= {"alembic_version"}
    assert registry.upgrade() == head_revision()
    assert "device_action_log" in registry.table_names()
