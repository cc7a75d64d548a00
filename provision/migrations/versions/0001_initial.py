"""Batches, devices and device components.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("components_sha256", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("device_id", sa.String(16), nullable=False, unique=True),
        sa.Column("serial_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("serial_ct", sa.LargeBinary, nullable=False),
        sa.Column("device_type", sa.String(128), nullable=False),
        sa.Column("manufacturer", sa.String(128)),
        sa.Column("model", sa.String(128)),
        sa.Column("manufactured_at", sa.String(40)),
        sa.Column("production_line", sa.String(128)),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("batch_seq", sa.Integer, nullable=False),
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.Column("payload", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("activated_at", TS),
        sa.Column("user_id", sa.String(256)),
    )
    op.create_index("ix_devices_batch_seq", "devices", ["batch_id", "batch_seq"])
    op.create_table(
        "device_components",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("device_pk", BIGID, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("component_type", sa.String(128), nullable=False),
        sa.Column("component_spec", sa.String(128), nullable=False),
        sa.Column("component_serial_ct", sa.LargeBinary),
        sa.Column("row_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("supplier", sa.String(128)),
        sa.Column("lot", sa.String(128)),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_device_components_device_pk", "device_components", ["device_pk"])


def downgrade() -> None:
    op.drop_table("device_components")
    op.drop_index("ix_devices_batch_seq", "devices")
    op.drop_table("devices")
    op.drop_table("batches")
