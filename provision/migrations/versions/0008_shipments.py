"""Shipments as a stored feed: each import, and each shipment (serial hashed and encrypted).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "shipment_imports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(1024), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("stored", sa.Integer, nullable=False),
        sa.Column("imported_at", TS, nullable=False),
        sa.Column("imported_by", sa.String(256), nullable=False),
    )
    op.create_table(
        "shipments",
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("serial_hash", sa.String(64), nullable=False),
        sa.Column("serial_ct", sa.LargeBinary, nullable=False),
        sa.Column("shipped_at", TS, nullable=False),
        sa.Column("order_id", sa.String(256)),
        sa.Column("customer", sa.String(256)),
        sa.Column("destination", sa.String(256)),
        sa.Column("carrier", sa.String(256)),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("import_id", sa.Integer, sa.ForeignKey("shipment_imports.id"), nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
    )
    op.create_index("ix_shipments_serial_hash", "shipments", ["serial_hash", "shipped_at"])
    op.create_index("ix_shipments_shipped_at", "shipments", ["shipped_at"])
    op.create_index("ix_shipments_import_id", "shipments", ["import_id"])


def downgrade() -> None:
    op.drop_index("ix_shipments_import_id", "shipments")
    op.drop_index("ix_shipments_shipped_at", "shipments")
    op.drop_index("ix_shipments_serial_hash", "shipments")
    op.drop_table("shipments")
    op.drop_table("shipment_imports")
