"""Staff: console accounts, failed logins (the lockout) and the staff audit log.

- staff holds each account: name, role, the argon2id hash of its password, the SHA-256 of its
  API token, when it was disabled;
- staff_login_failures holds failed logins by name and address (5 in 15 minutes lock both);
- staff_audit holds what staff did: who, when, what, to what, from which address.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "staff",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("password_changed_at", TS, nullable=False),
        sa.Column("token_hash", sa.String(64)),
        sa.Column("token_created_at", TS),
        sa.Column("disabled_at", TS),
        sa.Column("last_login_at", TS),
        sa.Column("sessions_ended_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
    )
    op.create_index("ux_staff_token_hash", "staff", ["token_hash"], unique=True)
    op.create_table(
        "staff_login_failures",
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_staff_login_failures_username", "staff_login_failures", ["username", "occurred_at"]
    )
    op.create_index("ix_staff_login_failures_ip", "staff_login_failures", ["ip", "occurred_at"])
    op.create_table(
        "staff_audit",
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("staff", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256)),
        sa.Column("ip", sa.String(64)),
        sa.Column("detail_json", sa.Text, nullable=False),
    )
    op.create_index("ix_staff_audit_occurred_at", "staff_audit", ["occurred_at"])
    op.create_index("ix_staff_audit_subject", "staff_audit", ["subject", "occurred_at"])


def downgrade() -> None:
    op.drop_table("staff_audit")
    op.drop_table("staff_login_failures")
    op.drop_table("staff")
