"""The registry's tables (plain SQLAlchemy Core) and, from provision.states, their states.

Alembic compares the migrations with `metadata`; a test holds the two together.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

from provision.states import DeviceStatus, PairingResult

__all__ = [
    "DeviceStatus",
    "PairingResult",
    "action_log",
    "alert_marks",
    "alerts",
    "audit_chains",
    "audit_runs",
    "batches",
    "components",
    "devices",
    "metadata",
    "pairing_events",
    "recall_devices",
    "recalls",
    "shipment_imports",
    "shipments",
]

metadata = MetaData()
"""Every provision table (Alembic compares the migrations with it). Plain Core tables: the ORM
would cost every command 65 ms of imports, and no path of provision needs it."""

# 64-bit keys on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the rowid alias.
ROW_ID = BigInteger().with_variant(Integer, "sqlite")

# A nightly batch: a name and the SHA-256 of the manifests it was registered from.
batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("components_sha256", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Rows the last run sent to its reject file, and the newest label revision published.
    Column("rejected_rows", Integer, default=0, server_default="0", nullable=False),
    Column("label_revision", Integer),
    Column("labels_rendered_at", DateTime(timezone=True)),
)

# One device; its serial is stored only as a keyed hash and as AES-GCM ciphertext.
devices = Table(
    "devices",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("device_id", String(16), unique=True, nullable=False),
    Column("serial_hash", String(64), unique=True, nullable=False),
    Column("serial_ct", LargeBinary, nullable=False),
    Column("device_type", String(128), nullable=False),
    Column("manufacturer", String(128)),
    Column("model", String(128)),
    Column("manufactured_at", String(40)),
    Column("production_line", String(128)),
    # GTIN-14 (GS1 AI 01), from the manifest's gtin column or the job's model table.
    Column("gtin", String(14)),
    Column("batch_id", Integer, ForeignKey("batches.id"), nullable=False),
    Column("batch_seq", Integer, nullable=False),
    # The payload is never stored (it activates the device): it is signed again from its key id
    # and expiry whenever a label is drawn, and HMAC gives the same bytes every time.
    Column("key_id", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), default=DeviceStatus.PENDING, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("activated_at", DateTime(timezone=True)),
    Column("user_id", String(256)),
    Column("activation_token_hash", String(64)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", String(256)),
    Column("revoked_reason", String(1000)),
    # Head of the device's action chain: deleting the newest entries is detected too.
    Column("action_count", Integer, default=0, server_default="0", nullable=False),
    Column("action_head", String(64)),
    # Head of the device's pairing-event chain, likewise.
    Column("pairing_count", Integer, default=0, server_default="0", nullable=False),
    Column("pairing_head", String(64)),
    # Keyed seal over the row's state (provision.chain.SEALED_COLUMNS), written with each change.
    Column("seal", String(64), nullable=False),
    Index("ix_devices_batch_seq", "batch_id", "batch_seq"),
    # `devices` lists in id order (keyset pagination): each filter's index ends in id.
    Index("ix_devices_batch_id", "batch_id", "id"),
    Index("ix_devices_status", "status", "id"),
    Index("ix_devices_activated_at", "activated_at", "id"),
    # The device client names its device by its token alone (GET /api/v1/device).
    Index("ix_devices_activation_token_hash", "activation_token_hash"),
)

# A component fitted to a device; its own serial is kept encrypted like the device's.
components = Table(
    "device_components",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column(
        "device_pk",
        ROW_ID,
        ForeignKey("devices.id"),
        index=True,
        nullable=False,
    ),
    Column("component_type", String(128), nullable=False),
    Column("component_spec", String(128), nullable=False),
    Column("component_serial_ct", LargeBinary),
    # Keyed hash of (device, type, spec, component serial): rerunning a manifest adds nothing.
    Column("row_hash", String(64), unique=True, nullable=False),
    Column("supplier", String(128)),
    Column("lot", String(128)),
    Column("batch_id", Integer, ForeignKey("batches.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Keyed hash of the component's own serial, for `find` and `trace --component-serial`.
    Column("component_serial_hash", String(64)),
    Index("ix_device_components_lot", "lot", "supplier"),
    Index("ix_device_components_supplier", "supplier", "lot"),
    Index("ix_device_components_serial_hash", "component_serial_hash"),
    Index("ix_device_components_type", "component_type", "lot"),
)

# One activation attempt, accepted or rejected; chained per device (entry_hash over the event
# and prev_hash), and the attempts that name no registered device in one chain of their own.
pairing_events = Table(
    "device_pairing_events",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("device_pk", ROW_ID, ForeignKey("devices.id")),
    Column("seq", Integer, nullable=False),
    Column("claimed_device_id", String(16)),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("ip", String(64)),
    Column("user_agent", String(512)),
    Column("fingerprint", String(128)),
    Column("user_id", String(256)),
    Column("result", String(16), nullable=False),
    Column("reason", String(32)),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    UniqueConstraint("device_pk", "seq", name="uq_device_pairing_events_device_seq"),
    # Alerts look at attempts by time, and by the address they came from.
    Index("ix_device_pairing_events_occurred_at", "occurred_at"),
    Index("ix_device_pairing_events_ip", "ip", "occurred_at"),
)

# Users are found case-insensitively (support types what the customer reads out).
Index("ix_devices_user_lower", func.lower(devices.c.user_id))

# A recall: the trace query it was made from, and whether it holds its pending devices.
recalls = Table(
    "recalls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("reason", String(1000), nullable=False),
    Column("query_json", Text, nullable=False),
    Column("hold", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    Column("closed_by", String(256)),
)

# The devices a recall matched when it was made; a released device is no longer held.
recall_devices = Table(
    "recall_devices",
    metadata,
    Column("recall_id", Integer, ForeignKey("recalls.id"), primary_key=True),
    Column("device_pk", ROW_ID, ForeignKey("devices.id"), primary_key=True),
    Column("released_at", DateTime(timezone=True)),
    Column("released_by", String(256)),
    Index("ix_recall_devices_device_pk", "device_pk"),
)

# Chains that belong to no device row: their count and sealed head (today the pairing chain of
# attempts that name no registered device, chain.UNATTACHED).
audit_chains = Table(
    "audit_chains",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("head", String(64)),
)

# One device action; entry_hash chains it to the device's previous entry.
action_log = Table(
    "device_action_log",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column(
        "device_pk",
        ROW_ID,
        ForeignKey("devices.id"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("action_type", String(64), nullable=False),
    Column("metadata_json", Text, nullable=False),
    Column("ip", String(64)),
    Column("actor", String(256)),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    UniqueConstraint("device_pk", "seq", name="uq_device_action_log_device_seq"),
    # Usage statistics and alerts read recent actions by time; the device and the type are in
    # the index, so the usage figures never read the rows (migration 0006).
    Index("ix_device_action_log_occurred_at", "occurred_at", "device_pk", "action_type"),
)

# One alert: a rule's finding about one subject (a device, an IP, a user, a batch). Its id is
# stable (a hash of rule and subject), so the same situation is the same alert on every run.
alerts = Table(
    "alerts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("subject_kind", String(16), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("count", Integer, nullable=False),
    Column("evidence_json", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("acked_by", String(256)),
    Column("acked_at", DateTime(timezone=True)),
    Column("ack_note", String(1000)),
    Column("notified_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_alerts_status", "status", "severity"),
)

# Where the last alerts run stopped reading (the newest pairing event and action it saw), so
# that the next run reads only what came after.
alert_marks = Table(
    "alert_marks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# What each `audit verify` found: the alerts' audit_chain_broken rule reads the newest run.
audit_runs = Table(
    "audit_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ran_at", DateTime(timezone=True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("devices", Integer, nullable=False),
    Column("entries", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("problems_json", Text, nullable=False),
)

# One `shipments import`: which file (its SHA-256), from which source, what it stored.
shipment_imports = Table(
    "shipment_imports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(64), nullable=False),
    Column("file_name", String(1024), nullable=False),
    Column("file_sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("stored", Integer, nullable=False),
    Column("imported_at", DateTime(timezone=True), nullable=False),
    Column("imported_by", String(256), nullable=False),
)

# One shipment, as the ERP sent it; the serial only as its keyed hash and AES-GCM ciphertext.
# row_hash (keyed, over the serial and every other field) makes an import idempotent: a row
# sent twice, in one file or in two, is stored once.
shipments = Table(
    "shipments",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("serial_hash", String(64), nullable=False),
    Column("serial_ct", LargeBinary, nullable=False),
    Column("shipped_at", DateTime(timezone=True), nullable=False),
    Column("order_id", String(256)),
    Column("customer", String(256)),
    Column("destination", String(256)),
    Column("carrier", String(256)),
    Column("source", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    Column("import_id", Integer, ForeignKey("shipment_imports.id"), nullable=False),
    Column("line", Integer, nullable=False),
    # An index, not a UNIQUE constraint: a bulk import drops it and builds it again.
    Index("ux_shipments_row_hash", "row_hash", unique=True),
    Index("ix_shipments_serial_hash", "serial_hash", "shipped_at"),
    Index("ix_shipments_shipped_at", "shipped_at"),
)

# A staff account of the console (`provision staff`). The password only as its argon2id hash,
# the API token only as its SHA-256; disabled_at set means it can no longer log in.
staff = Table(
    "staff",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(256), nullable=False),
    Column("password_changed_at", DateTime(timezone=True), nullable=False),
    Column("token_hash", String(64)),
    Column("token_created_at", DateTime(timezone=True)),
    Column("disabled_at", DateTime(timezone=True)),
    Column("last_login_at", DateTime(timezone=True)),
    # A logout ends every session of the account made before it.
    Column("sessions_ended_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(256), nullable=False),
    Index("ux_staff_token_hash", "token_hash", unique=True),
)

# Failed console logins: 5 within 15 minutes lock the account name, and the address too.
staff_login_failures = Table(
    "staff_login_failures",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("username", String(64), nullable=False),
    Column("ip", String(64), nullable=False),
    Index("ix_staff_login_failures_username", "username", "occurred_at"),
    Index("ix_staff_login_failures_ip", "ip", "occurred_at"),
)

# What staff did: who, when, what, to what, from which address (the console and `staff`).
staff_audit = Table(
    "staff_audit",
    metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("staff", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(256)),
    Column("ip", String(64)),
    Column("detail_json", Text, nullable=False),
    Index("ix_staff_audit_occurred_at", "occurred_at"),
    Index("ix_staff_audit_subject", "subject", "occurred_at"),
)
