"""Devices: the GTIN (GS1 Digital Link, EPCIS) of each, where the manifest or job gives one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("gtin", sa.String(14)))


def downgrade() -> None:
    # Not Alembic's batch mode: copying the table would lose the expression index
    # ix_devices_user_lower, which SQLite's reflection cannot see (SQLite 3.35+ drops columns).
    op.execute("ALTER TABLE devices DROP COLUMN gtin")
