"""The schema: Alembic migrations produce exactly the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from provision.migrations import HEAD, alembic_config, current_revision, head_revision
from provision.registry import Registry, metadata


def test_migrations_build_exactly_the_models(db_url):
    registry = Registry(db_url)
    with registry.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
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


def test_bulk_insert_stores_what_sqlalchemy_stores(db_url):
    # insert_devices bypasses SQLAlchemy's per-row parameters (COPY on PostgreSQL, plain
    # executemany tuples on SQLite): each column must still be stored exactly as an ORM-style
    # INSERT stores it, datetimes included, or reads and comparisons would go wrong.
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from provision.registry import NewBatch, devices

    registry = Registry(db_url)
    batch_id = 0  # set by the first insert, which creates the batch row
    when = datetime(2026, 11, 28, 2, 3, 4, 567890, tzinfo=UTC)

    def row(n: int) -> dict:
        return {
            "device_id": f"{n:016x}",
            "serial_hash": f"{n:064x}",
            "serial_ct": bytes([n, 0, 255]),
            "device_type": "sensor",
            "manufacturer": None,
            "model": "M-1 · ü",
            "manufactured_at": "2026-11-27",
            "production_line": None,
            "batch_id": batch_id,
            "batch_seq": n,
            "key_id": 1,
            "expires_at": when,
            "status": "pending",
            "created_at": when,
            "seal": "5" * 64,
        }

    batch_id = registry.devices.insert([row(1)], [], NewBatch("b", "0" * 64, None))
    with registry.engine.begin() as conn:
        conn.execute(insert(devices), [row(2)])
    same = [c for c in devices.c if c.name not in ("id", "device_id", "serial_hash", "batch_seq")]
    with registry.engine.connect() as conn:
        # the stored form itself, not read back through the column types
        as_text = ", ".join(f"CAST({c.name} AS TEXT)" for c in same if c.name != "serial_ct")
        raw = conn.exec_driver_sql(f"SELECT {as_text} FROM devices ORDER BY batch_seq").all()
        typed = conn.execute(select(*same).order_by(devices.c.batch_seq)).all()
    assert raw[0] == raw[1]
    if registry.is_sqlite:  # SQLAlchemy's text form of a datetime, not sqlite3's own adapter
        assert str(when.replace(tzinfo=None)) in raw[0]
    first, second = (dict(r._mapping) for r in typed)
    assert first.pop("serial_ct") == bytes([1, 0, 255])
    assert second.pop("serial_ct") == bytes([2, 0, 255])
    assert first == second
    assert first["expires_at"].replace(tzinfo=UTC) == when


def test_key_lookups_probe_the_index_before_postgresql_has_statistics(pg_cluster, tmp_path):
    """A registry's first big batch: the devices table grows faster than autovacuum analyzes
    it, and PostgreSQL would scan the whole table for each chunk's `= ANY(keys)` lookup."""
    from sqlalchemy import select

    from provision.keys import init_keyring, load_keyring
    from provision.pipeline import register_batch
    from provision.registry import devices
    from tests.helpers import serials_csv

    url = pg_cluster.create_database(f"lookup_plan_{tmp_path.name[-8:]}")
    init_keyring(tmp_path / "k.json")
    registry = Registry(url)
    try:
        with registry.engine.begin() as conn:  # no statistics for the whole test, as in a batch
            conn.exec_driver_sql("ALTER TABLE devices SET (autovacuum_enabled = false)")
        register_batch(
            registry, load_keyring(tmp_path / "k.json"), serials_csv(tmp_path / "s.csv", 20_000)
        )
        keys = [f"{i:064x}" for i in range(5000)]
        q = select(devices.c.id).where(registry.store.among(devices.c.serial_hash, keys))
        sql = str(q.compile(registry.engine, compile_kwargs={"literal_binds": False}))

        def plan(indexed: bool) -> str:
            with registry.engine.connect() as conn:
                if indexed:
                    registry.store.by_index(conn)
                rows = conn.exec_driver_sql("EXPLAIN " + sql, {"param_1": keys})
                return "\n".join(r[0] for r in rows)

        assert "Seq Scan" in plan(indexed=False)  # the trap, as PostgreSQL plans it
        assert "Index" in plan(indexed=True) and "Seq Scan" not in plan(indexed=True)
    finally:
        registry.close()
