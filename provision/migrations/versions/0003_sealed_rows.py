"""Nothing that activates is stored; device rows sealed; pairing events chained.

- devices.payload is dropped: a payload activates its device, so it is signed again from the
  stored key id and expiry whenever a label is drawn (HMAC gives the same bytes).
- devices gains pairing_count, pairing_head and seal; device_pairing_events gains seq,
  prev_hash and entry_hash; audit_chains holds the chain of attempts that name no device.

Existing rows are chained and sealed here, which needs the keyring's pepper: provision hands
this migration a Sealer (`provision db upgrade` with PROVISION_KEYRING set). A registry without
devices or pairing events needs none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from provision.chain import SEALED_COLUMNS, UNATTACHED, Sealer, pairing_genesis
from provision.errors import ConfigError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

_devices = sa.table(
    "devices",
    sa.column("id", sa.Integer),
    sa.column("device_id", sa.String),
    sa.column("serial_hash", sa.String),
    sa.column("key_id", sa.Integer),
    sa.column("expires_at", TS),
    sa.column("status", sa.String),
    sa.column("user_id", sa.String),
    sa.column("activated_at", TS),
    sa.column("activation_token_hash", sa.String),
    sa.column("revoked_at", TS),
    sa.column("revoked_by", sa.String),
    sa.column("revoked_reason", sa.String),
    sa.column("action_count", sa.Integer),
    sa.column("action_head", sa.String),
    sa.column("pairing_count", sa.Integer),
    sa.column("pairing_head", sa.String),
    sa.column("seal", sa.String),
)
_v2_devices = sa.table("devices", sa.column("id", sa.Integer))
_events = sa.table(
    "device_pairing_events",
    sa.column("id", sa.Integer),
    sa.column("device_pk", sa.Integer),
    sa.column("seq", sa.Integer),
    sa.column("occurred_at", TS),
    sa.column("claimed_device_id", sa.String),
    sa.column("ip", sa.String),
    sa.column("user_agent", sa.String),
    sa.column("fingerprint", sa.String),
    sa.column("user_id", sa.String),
    sa.column("result", sa.String),
    sa.column("reason", sa.String),
    sa.column("prev_hash", sa.String),
    sa.column("entry_hash", sa.String),
)
_chains = sa.table(
    "audit_chains", sa.column("name", sa.String), sa.column("count"), sa.column("head")
)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(sa.func.count()).select_from(_v2_devices)).scalar_one()
    rows += conn.execute(sa.select(sa.func.count()).select_from(_events)).scalar_one()
    sealer = context.config.attributes.get("sealer")
    if rows and sealer is None:  # before any change: nothing is left half done
        raise ConfigError(
            "this upgrade (0003) chains and seals the rows already in the registry, "
            "which needs the keyring: set PROVISION_KEYRING and run `provision db upgrade`"
        )
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("payload")
        batch.add_column(sa.Column("pairing_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("pairing_head", sa.String(64)))
        batch.add_column(sa.Column("seal", sa.String(64)))
    with op.batch_alter_table("device_pairing_events") as batch:
        batch.add_column(sa.Column("seq", sa.Integer))
        batch.add_column(sa.Column("prev_hash", sa.String(64)))
        batch.add_column(sa.Column("entry_hash", sa.String(64)))
    op.create_table(
        "audit_chains",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("head", sa.String(64)),
    )
    op.bulk_insert(_chains, [{"name": UNATTACHED, "count": 0, "head": None}])

    if rows:
        assert sealer is not None
        _chain_events(conn, sealer)
        _seal_devices(conn, sealer)

    with op.batch_alter_table("devices") as batch:
        batch.alter_column("seal", existing_type=sa.String(64), nullable=False)
    op.drop_index("ix_device_pairing_events_device_pk", "device_pairing_events")
    with op.batch_alter_table("device_pairing_events") as batch:
        batch.alter_column("seq", existing_type=sa.Integer, nullable=False)
        for col in ("prev_hash", "entry_hash"):
            batch.alter_column(col, existing_type=sa.String(64), nullable=False)
        batch.create_unique_constraint("uq_device_pairing_events_device_seq", ["device_pk", "seq"])


def _chain_events(conn: Any, sealer: Sealer) -> None:
    """Chain the existing pairing events, oldest first, per device and unattached."""
    ids = dict(conn.execute(sa.select(_devices.c.id, _devices.c.device_id)).all())
    q = sa.select(_events).order_by(_events.c.device_pk, _events.c.id)
    state: dict[Any, tuple[int, str]] = {}
    for e in conn.execute(q).mappings().all():
        pk = e["device_pk"]
        chain = ids[pk] if pk is not None else UNATTACHED
        seq, prev = state.get(pk, (0, pairing_genesis(chain)))
        seq += 1
        entry = sealer.pairing(
            chain,
            seq,
            e["occurred_at"],
            e["claimed_device_id"],
            e["ip"],
            e["user_agent"],
            e["fingerprint"],
            e["user_id"],
            e["result"],
            e["reason"],
            prev,
        )
        conn.execute(
            sa.update(_events)
            .where(_events.c.id == e["id"])
            .values(seq=seq, prev_hash=prev, entry_hash=entry)
        )
        state[pk] = (seq, entry)
    for pk, (seq, entry) in state.items():
        chain = ids[pk] if pk is not None else UNATTACHED
        head = sealer.pairing_head(chain, seq, entry)
        if pk is None:
            conn.execute(
                sa.update(_chains).where(_chains.c.name == UNATTACHED).values(count=seq, head=head)
            )
        else:
            conn.execute(
                sa.update(_devices)
                .where(_devices.c.id == pk)
                .values(pairing_count=seq, pairing_head=head)
            )


def _seal_devices(conn: Any, sealer: Sealer) -> None:
    cols = [_devices.c[c] for c in SEALED_COLUMNS]
    for row in conn.execute(sa.select(_devices.c.id, *cols)).all():
        conn.execute(
            sa.update(_devices)
            .where(_devices.c.id == row[0])
            .values(seal=sealer.device_values(*row[1:]))
        )


def downgrade() -> None:
    # A revision-0002 registry stores each device's payload, which this one never keeps: it
    # could only be recreated by signing, and a migration does not sign. So only a registry
    # without devices goes back.
    conn = op.get_bind()
    if conn.execute(sa.select(sa.func.count()).select_from(_devices)).scalar_one():
        raise ConfigError(
            "revision 0003 cannot be downgraded while devices are registered: the payloads "
            "revision 0002 stores are no longer kept"
        )
    with op.batch_alter_table("device_pairing_events") as batch:
        batch.drop_constraint("uq_device_pairing_events_device_seq", type_="unique")
        for col in ("entry_hash", "prev_hash", "seq"):
            batch.drop_column(col)
    op.create_index(
        "ix_device_pairing_events_device_pk", "device_pairing_events", ["device_pk", "id"]
    )
    op.drop_table("audit_chains")
    with op.batch_alter_table("devices") as batch:
        for col in ("seal", "pairing_head", "pairing_count"):
            batch.drop_column(col)
        batch.add_column(sa.Column("payload", sa.String(64), nullable=False))
