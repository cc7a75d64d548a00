"""Shipments: no index on import_id. Nothing looks shipments up by their import alone (an
import counts and forgets its own rows by id range, the primary key), and a bulk import of
10,000,000 rows spent 4 s building it. Imports are never deleted; deleting one would now scan
the shipments for its rows (the foreign key has no index behind it).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_shipments_import_id", "shipments")


def downgrade() -> None:
    op.create_index("ix_shipments_import_id", "shipments", ["import_id"])
