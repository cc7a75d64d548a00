"""Every look-up of `find`, `devices`, `trace` and recalls uses its index, on both databases.

Each statement is the library's own (the registry builds them in named functions), and each
database is asked for its plan: SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN with
sequential scans disabled, so that the plan shows whether an index can serve the query at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from provision.registry import DeviceFilter, Registry
from provision.registry.devices import (
    by_component_serial_query,
    by_user_query,
    id_prefix_query,
    page_query,
)
from provision.states import DeviceStatus


def plan(registry: Registry, statement: Any) -> str:
    """The database's plan for STATEMENT, as one text."""
    compiled = statement.compile(dialect=registry.engine.dialect)
    with registry.engine.connect() as conn:
        if registry.is_postgresql:
            conn.exec_driver_sql("SET enable_seqscan = off")
            rows = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).all()
            return "\n".join(r[0] for r in rows)
        params = tuple(compiled.params[k] for k in compiled.positiontup or ())
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), params).all()
        return "\n".join(str(r[-1]) for r in rows)


def uses(registry: Registry, statement: Any, index: str) -> None:
    text = plan(registry, statement)
    assert index in text, text
    assert "Seq Scan" not in text and "SCAN devices" not in text, text


@pytest.fixture
def populated(registry: Registry, keyring_path: Path, tmp_path: Path) -> Registry:
    """2,100 devices in two batches, 1 in 100 activated by its own user, statistics taken: the
    shape of a real registry, for which each filter is selective."""
    from provision.keys import load_keyring
    from provision.pipeline import register_batch
    from tests.helpers import serials_csv

    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "a.csv", 2000, prefix="A"), batch="a")
    register_batch(registry, keyring, serials_csv(tmp_path / "b.csv", 100, prefix="B"), batch="b")
    with registry.engine.begin() as conn:
        # Directly, not through activation: only the plans matter here, not the seals.
        conn.execute(
            sa.text(
                "UPDATE devices SET status = 'activated', user_id = 'user' || id || "
                "'@example.com', activated_at = created_at WHERE MOD(id, 100) = 0"
            )
        )
        # One component a device: 40 lots, 7 suppliers, 2 types, each serial its own hash.
        conn.execute(
            sa.text(
                "INSERT INTO device_components (device_pk, component_type, component_spec, "
                "row_hash, supplier, lot, batch_id, created_at, component_serial_hash) "
                "SELECT id, CASE WHEN MOD(id, 2) = 0 THEN 'mcu' ELSE 'battery' END, 'X', "
                "serial_hash, 'S' || MOD(id, 7), 'L' || MOD(id, 40), batch_id, created_at, "
                "device_id || device_id || device_id || device_id FROM devices"
            )
        )
    if registry.is_postgresql:
        with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("ANALYZE")
    else:
        with registry.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return registry


def unique_index(registry: Registry, column: str) -> str:
    # PostgreSQL names a UNIQUE column's index TABLE_COLUMN_key; SQLite sqlite_autoindex_...
    return f"devices_{column}_key" if registry.is_postgresql else "sqlite_autoindex_devices"


@pytest.mark.parametrize(
    "flt, index",
    [
        (DeviceFilter(status=DeviceStatus.ACTIVATED), "ix_devices_status"),
        (DeviceFilter(user="alice@example.com"), "ix_devices_user_lower"),
        (
            DeviceFilter(activated_since=datetime(2026, 11, 1, tzinfo=UTC)),
            "ix_devices_activated_at",
        ),
    ],
    ids=["status", "user", "activated_since"],
)
def test_each_devices_filter_pages_through_its_index(
    populated: Registry, flt: DeviceFilter, index: str
) -> None:
    uses(populated, page_query(flt, None, None, 50), index)
    uses(populated, page_query(flt, None, 700, 50), index)  # a later page: the same index


def test_a_batchs_devices_page_through_the_batch_index(populated: Registry) -> None:
    b = populated.batches.id_of("b")
    uses(populated, page_query(DeviceFilter(), b, None, 50), "ix_devices_batch_id")
    uses(populated, page_query(DeviceFilter(), b, 2050, 50), "ix_devices_batch_id")


def test_the_first_page_of_all_devices_reads_the_primary_key_in_order(
    populated: Registry,
) -> None:
    text = plan(populated, page_query(DeviceFilter(), None, None, 50))
    if populated.is_postgresql:
        assert "devices_pkey" in text and "Sort" not in text, text
    else:
        assert "SCAN devices" in text and "TEMP B-TREE" not in text, text  # rowid order


def test_find_by_user_uses_the_lower_user_index(populated: Registry) -> None:
    uses(populated, by_user_query("Alice@Example.com", 100), "ix_devices_user_lower")


def test_find_by_component_serial_uses_its_hash_index(populated: Registry) -> None:
    text = plan(populated, by_component_serial_query("0" * 64, 100))
    assert "ix_device_components_serial_hash" in text, text
    assert "SCAN device_components" not in text, text


def test_find_by_id_prefix_is_a_range_on_the_unique_id_index(populated: Registry) -> None:
    uses(populated, id_prefix_query("83d38b", 2), unique_index(populated, "device_id"))


@pytest.mark.parametrize(
    "wanted, index",
    [
        ({"lot": "L7"}, "ix_device_components_lot"),
        ({"lot": "L7", "supplier": "S3"}, "ix_device_components_lot|ix_device_components_supplier"),
        ({"supplier": "S3"}, "ix_device_components_supplier"),
        ({"component_type": "mcu"}, "ix_device_components_type"),
        ({"component_serial_hash": "0" * 64}, "ix_device_components_serial_hash"),
    ],
    ids=["lot", "lot+supplier", "supplier", "type", "serial"],
)
def test_trace_and_recall_find_their_components_through_an_index(
    populated: Registry, wanted: dict[str, str], index: str
) -> None:
    from provision.registry import ComponentFilter

    text = plan(populated, ComponentFilter(**wanted)._devices())
    assert any(name in text for name in index.split("|")), text  # either composite serves
    assert "SCAN device_components" not in text and "Seq Scan" not in text, text


def test_the_hold_check_finds_a_devices_recalls_through_its_index(populated: Registry) -> None:
    from provision.registry.events import held

    text = plan(populated, held(1234))
    assert "ix_recall_devices_device_pk" in text or "recall_devices_pkey" in text, text
    assert "SCAN recall_devices" not in text, text
