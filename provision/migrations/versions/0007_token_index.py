"""A device's activation token finds its device: `GET /api/v1/device` (the device client).

The token is stored only as its hash; the index makes that hash a key.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_devices_activation_token_hash", "devices", ["activation_token_hash"])


def downgrade() -> None:
    op.drop_index("ix_devices_activation_token_hash", "devices")
