"""Activation and lifetime tracking: pairing events, the chained action log, revocation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("activation_token_hash", sa.String(64)))
        batch.add_column(sa.Column("revoked_at", TS))
        batch.add_column(sa.Column("revoked_by", sa.String(256)))
        batch.add_column(sa.Column("revoked_reason", sa.String(1000)))
        batch.add_column(sa.Column("action_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("action_head", sa.String(64)))
    op.create_index("ix_devices_status", "devices", ["status"])
    op.create_table(
        "device_pairing_events",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("device_pk", BIGID, sa.ForeignKey("devices.id")),
        sa.Column("claimed_device_id", sa.String(16)),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("ip", sa.String(64)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("fingerprint", sa.String(128)),
        sa.Column("user_id", sa.String(256)),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
    )
    op.create_index(
        "ix_device_pairing_events_device_pk", "device_pairing_events", ["device_pk", "id"]
    )
    op.create_table(
        "device_action_log",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("device_pk", BIGID, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("action_type", sa.String(64), nullable=False),
        sa.Column("metadata_json", sa.Text, nullable=False),
        sa.Column("ip", sa.String(64)),
        sa.Column("actor", sa.String(256)),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("device_pk", "seq", name="uq_device_action_log_device_seq"),
    )


def downgrade() -> None:
    op.drop_table("device_action_log")
    op.drop_index("ix_device_pairing_events_device_pk", "device_pairing_events")
    op.drop_table("device_pairing_events")
    op.drop_index("ix_devices_status", "devices")
    with op.batch_alter_table("devices") as batch:
        for col in (
            "action_head",
            "action_count",
            "revoked_reason",
            "revoked_by",
            "revoked_at",
            "activation_token_hash",
        ):
            batch.drop_column(col)
