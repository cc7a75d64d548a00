"""Shipments: the row hash's uniqueness as a named unique index, which a bulk import can drop
and build again (SQLite cannot drop the index behind a UNIQUE constraint).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_constraint("shipments_row_hash_key", "shipments", type_="unique")
    else:
        # SQLite: the table is copied into one without the constraint (Alembic's batch mode,
        # from this definition rather than the reflected one, which still has it).
        with op.batch_alter_table("shipments", recreate="always", copy_from=_shipments()):
            pass
    op.create_index("ux_shipments_row_hash", "shipments", ["row_hash"], unique=True)


TS = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _shipments() -> sa.Table:
    """The shipments table of 0008, without its UNIQUE (row_hash) constraint."""
    meta = sa.MetaData()
    sa.Table("shipment_imports", meta, sa.Column("id", sa.Integer, primary_key=True))
    return sa.Table(
        "shipments",
        meta,
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("serial_hash", sa.String(64), nullable=False),
        sa.Column("serial_ct", sa.LargeBinary, nullable=False),
        sa.Column("shipped_at", TS, nullable=False),
        sa.Column("order_id", sa.String(256)),
        sa.Column("customer", sa.String(256)),
        sa.Column("destination", sa.String(256)),
        sa.Column("carrier", sa.String(256)),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.Column("import_id", sa.Integer, sa.ForeignKey("shipment_imports.id"), nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Index("ix_shipments_serial_hash", "serial_hash", "shipped_at"),
        sa.Index("ix_shipments_shipped_at", "shipped_at"),
        sa.Index("ix_shipments_import_id", "import_id"),
    )


def downgrade() -> None:
    op.drop_index("ux_shipments_row_hash", "shipments")
    with op.batch_alter_table("shipments") as batch:
        batch.create_unique_constraint("shipments_row_hash_key", ["row_hash"])
