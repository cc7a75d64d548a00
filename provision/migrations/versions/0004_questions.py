"""Questions the registry answers: list, find, trace, recalls.

- device_components gains component_serial_hash (a keyed hash of the component's serial, so
  `find` and `trace --component-serial` look it up without decrypting anything), and indexes
  for lot, supplier and that hash;
- devices gains indexes ending in id for `devices` (keyset pagination), and one on
  lower(user_id) for `find` by user;
- batches gains rejected_rows, label_revision and labels_rendered_at;
- recalls and recall_devices are created.

Existing component serials are hashed here, which needs the keyring (provision hands this
migration the keyring with `provision db upgrade` and PROVISION_KEYRING set); a registry
without component serials needs none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from provision.errors import ConfigError
from provision.serials import component_serial_hash, decrypt_serial

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

_components = sa.table(
    "device_components",
    sa.column("id", sa.Integer),
    sa.column("row_hash", sa.String),
    sa.column("component_serial_ct", sa.LargeBinary),
    sa.column("component_serial_hash", sa.String),
)


def upgrade() -> None:
    conn = op.get_bind()
    with_serials = conn.execute(
        sa.select(sa.func.count())
        .select_from(_components)
        .where(_components.c.component_serial_ct.is_not(None))
    ).scalar_one()
    keyring = context.config.attributes.get("keyring")
    if with_serials and keyring is None:  # before any change: nothing is left half done
        raise ConfigError(
            "this upgrade (0004) hashes the component serials already in the registry, "
            "which needs the keyring: set PROVISION_KEYRING and run `provision db upgrade`"
        )
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("rejected_rows", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("label_revision", sa.Integer))
        batch.add_column(sa.Column("labels_rendered_at", TS))
    with op.batch_alter_table("device_components") as batch:
        batch.add_column(sa.Column("component_serial_hash", sa.String(64)))
    op.create_index("ix_device_components_lot", "device_components", ["lot", "supplier"])
    op.create_index("ix_device_components_supplier", "device_components", ["supplier", "lot"])
    op.create_index(
        "ix_device_components_serial_hash", "device_components", ["component_serial_hash"]
    )
    op.create_index("ix_device_components_type", "device_components", ["component_type", "lot"])
    op.drop_index("ix_devices_status", "devices")
    op.create_index("ix_devices_status", "devices", ["status", "id"])
    op.create_index("ix_devices_batch_id", "devices", ["batch_id", "id"])
    op.create_index("ix_devices_activated_at", "devices", ["activated_at", "id"])
    op.create_index("ix_devices_user_lower", "devices", [sa.text("lower(user_id)")])
    op.create_table(
        "recalls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("query_json", sa.Text, nullable=False),
        sa.Column("hold", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("closed_at", TS),
        sa.Column("closed_by", sa.String(256)),
    )
    op.create_table(
        "recall_devices",
        sa.Column("recall_id", sa.Integer, sa.ForeignKey("recalls.id"), primary_key=True),
        sa.Column("device_pk", BIGID, sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column("released_at", TS),
        sa.Column("released_by", sa.String(256)),
    )
    op.create_index("ix_recall_devices_device_pk", "recall_devices", ["device_pk"])
    if with_serials:
        _hash_component_serials(conn, keyring)


def _hash_component_serials(conn: Any, keyring: Any) -> None:
    rows = conn.execute(
        sa.select(
            _components.c.id, _components.c.row_hash, _components.c.component_serial_ct
        ).where(_components.c.component_serial_ct.is_not(None))
    ).all()
    for pk, row_hash, ct in rows:
        serial = decrypt_serial(keyring.data_key, row_hash[:16], ct)
        conn.execute(
            sa.update(_components)
            .where(_components.c.id == pk)
            .values(component_serial_hash=component_serial_hash(keyring.pepper, serial))
        )


def downgrade() -> None:
    op.drop_index("ix_recall_devices_device_pk", "recall_devices")
    op.drop_table("recall_devices")
    op.drop_table("recalls")
    op.drop_index("ix_devices_user_lower", "devices")
    op.drop_index("ix_devices_activated_at", "devices")
    op.drop_index("ix_devices_batch_id", "devices")
    op.drop_index("ix_devices_status", "devices")
    op.create_index("ix_devices_status", "devices", ["status"])
    op.drop_index("ix_device_components_type", "device_components")
    op.drop_index("ix_device_components_serial_hash", "device_components")
    op.drop_index("ix_device_components_supplier", "device_components")
    op.drop_index("ix_device_components_lot", "device_components")
    with op.batch_alter_table("device_components") as batch:
        batch.drop_column("component_serial_hash")
    with op.batch_alter_table("batches") as batch:
        for col in ("labels_rendered_at", "label_revision", "rejected_rows"):
            batch.drop_column(col)
