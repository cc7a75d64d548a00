"""Analytics and alerts: alert state, run marks, audit runs, time indexes.

- alerts holds each alert (stable id, rule, severity, subject, first and last seen, count,
  evidence, open or acknowledged, when it was notified);
- alert_marks holds where the last alerts run stopped reading (the incremental runs);
- audit_runs holds what each `audit verify` found;
- the action log and the pairing events get indexes on their time, the pairing events one on
  (ip, occurred_at) for the rules about one address.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_index("ix_device_action_log_occurred_at", "device_action_log", ["occurred_at"])
    op.create_index(
        "ix_device_pairing_events_occurred_at", "device_pairing_events", ["occurred_at"]
    )
    op.create_index("ix_device_pairing_events_ip", "device_pairing_events", ["ip", "occurred_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("subject_kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("evidence_json", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("acked_by", sa.String(256)),
        sa.Column("acked_at", TS),
        sa.Column("ack_note", sa.String(1000)),
        sa.Column("notified_at", TS),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_alerts_status", "alerts", ["status", "severity"])
    op.create_table(
        "alert_marks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "audit_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ran_at", TS, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("devices", sa.Integer, nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("problems_json", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_runs")
    op.drop_table("alert_marks")
    op.drop_index("ix_alerts_status", "alerts")
    op.drop_table("alerts")
    op.drop_index("ix_device_pairing_events_ip", "device_pairing_events")
    op.drop_index("ix_device_pairing_events_occurred_at", "device_pairing_events")
    op.drop_index("ix_device_action_log_occurred_at", "device_action_log")
