"""Trust: revocation at once, nothing stored that activates, sealed rows, checkpoints, bad input.

Each test here reproduces a finding of the security review: it fails on the code before the fix.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result

from provision.activation import ActivationRejected, activate
from provision.audit import log_action, make_sealer, verify_chains
from provision.chain import UNATTACHED, genesis_hash, pairing_genesis
from provision.errors import ConfigError, ProvisionError
from provision.keys import Keyring, load_keyring
from provision.migrations import upgrade_to
from provision.payload import payload_url, sign_token, verify_payload
from provision.pipeline import batch_labels, register_batch
from provision.registry import Registry
from provision.serials import device_id, encrypt_serial, serial_hash
from provision.web import WebSettings, create_app
from tests.conftest import RunCLI
from tests.helpers import serials_csv, with_payload, write_csv
from tests.test_web import fetch, provision_server

BASE_URL = "http://localhost:5001"
API = "/api/v1/activations"


def cli_json(result: Result) -> Any:
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def devices_of(registry: Registry, keyring: Keyring, batch: str) -> list[dict[str, Any]]:
    """The batch's devices in label order, each with the payload its label carries."""
    batch_id = registry.batches.id_of(batch)
    assert batch_id is not None
    rows = [d for chunk in registry.devices.labels(batch_id) for d in chunk]
    found = [registry.devices.get(r.device_id) for r in rows]
    return [with_payload(keyring, d) for d in found if d is not None]


def url(device: dict[str, Any]) -> str:
    return payload_url(BASE_URL, device["payload"])


# -- 1. a revoked key stops working in a running server ---------------------------------------


def test_a_key_revoked_under_a_running_server_is_refused_at_the_next_activation(
    db_url: str, keyring_path: Path, tmp_path: Path, run_cli: RunCLI
) -> None:
    assert run_cli("register", str(serials_csv(tmp_path / "old.csv", 2, prefix="OLD")),
                   "--batch", "old").exit_code == 0  # fmt: skip
    assert run_cli("keys", "rotate").exit_code == 0  # key 2 signs; key 1 verifies only
    registry = Registry(db_url)
    try:
        first, second = devices_of(registry, load_keyring(keyring_path), "old")
        with provision_server(db_url, keyring_path, tmp_path / "server") as server:
            opener = urllib.request.build_opener()
            api = server.base + API
            ok = fetch(opener, api, json_body={"payload": url(first), "user": "alice"})
            assert ok.status == 201, ok.body  # key 1 still verifies

            assert run_cli("keys", "revoke", "1", "--yes").exit_code == 0
            time.sleep(2.0)  # the required bound: seen within 2 seconds, no restart
            refused = fetch(opener, api, json_body={"payload": url(second), "user": "bob"})
            assert (refused.status, refused.json()["error"]["reason"]) == (403, "revoked_key")

            # A rotation is seen the same way: a key the server never loaded at start.
            assert run_cli("keys", "rotate").exit_code == 0  # key 3
            new = serials_csv(tmp_path / "new.csv", 1, prefix="NEW")
            assert run_cli("register", str(new), "--batch", "new").exit_code == 0
            [fresh] = devices_of(registry, load_keyring(keyring_path), "new")
            assert fresh["key_id"] == 3
            time.sleep(2.0)
            late = fetch(opener, api, json_body={"payload": url(fresh), "user": "carol"})
            assert late.status == 201, late.body
    finally:
        registry.close()


def test_a_keyring_file_that_no_longer_loads_makes_the_service_refuse_not_guess(
    registry: Registry, keyring_path: Path, tmp_path: Path
) -> None:
    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 1), batch="b")
    [dev] = devices_of(registry, keyring, "b")
    app = create_app(
        WebSettings(registry.url, str(keyring_path), BASE_URL, rate_limit="1000 per minute"),
        registry=registry,
    )
    client = app.test_client()
    os.chmod(keyring_path, 0o644)  # a keyring readable by others is refused
    time.sleep(0.6)  # past the watcher's check interval
    resp = client.post(API, json={"payload": url(dev), "user": "alice"})
    assert resp.status_code == 503
    assert resp.get_json()["error"]["reason"] == "unavailable"
    os.chmod(keyring_path, 0o600)
    time.sleep(0.6)
    assert client.post(API, json={"payload": url(dev), "user": "alice"}).status_code == 201


# -- 2. the owner's history shows nobody else --------------------------------------------------


def test_the_owner_sees_its_own_activation_and_only_counts_of_other_attempts(
    registry: Registry, keyring_path: Path, tmp_path: Path, run_cli: RunCLI
) -> None:
    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 1), batch="b")
    [dev] = devices_of(registry, keyring, "b")
    app = create_app(
        WebSettings(registry.url, str(keyring_path), BASE_URL, rate_limit="1000 per minute"),
        registry=registry,
        keyring=keyring,
    )
    client = app.test_client()

    def attempt(payload: str, user: str, ip: str, agent: str, fingerprint: str) -> Any:
        return client.post(
            API,
            json={"payload": payload, "user": user, "fingerprint": fingerprint},
            headers={"User-Agent": agent},
            environ_base={"REMOTE_ADDR": ip},
        )

    # Before the customer: a label signed again with another expiry (a valid tag, not the label).
    key = keyring.active
    assert key.secret is not None
    other_expiry = int(dev["expires_at"].timestamp()) + 1
    superseded = payload_url(
        BASE_URL, sign_token(key.id, key.secret, dev["device_id"], other_expiry)
    )
    assert (
        attempt(superseded, "carol@example.com", "203.0.113.5", "Carol-UA", "fp-carol").status_code
        == 403
    )
    won = attempt(url(dev), "alice@example.com", "198.51.100.7", "Alice-UA", "fp-alice")
    assert won.status_code == 201
    token = won.get_json()["activation_token"]
    for n in (1, 2):
        lost = attempt(
            url(dev), f"bob{n}@example.com", f"203.0.113.{n}", f"Bob-UA-{n}", f"fp-bob{n}"
        )
        assert lost.status_code == 409

    resp = client.get(
        f"/api/v1/devices/{dev['device_id']}/history", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200
    body = resp.get_data(as_text=True)
    for secret in (
        "carol",
        "bob1",
        "bob2",
        "203.0.113.",
        "Carol-UA",
        "Bob-UA",
        "fp-carol",
        "fp-bob",
    ):
        assert secret not in body, f"{secret} leaked into the owner's history"
    h = resp.get_json()
    assert [(e["result"], e["user"], e["ip"]) for e in h["pairing_events"]] == [
        ("accepted", "alice@example.com", "198.51.100.7")
    ]
    assert h["other_attempts"] == {
        "total": 3,
        "by_reason": {"already_activated": 2, "forged": 1},
    }
    assert [a["action_type"] for a in h["actions"]] == ["activated"]

    # The operator on the server keeps the full record.
    full = cli_json(run_cli("history", dev["device_id"], "--json"))
    assert [
        (e["user"], e["ip"], e["user_agent"], e["fingerprint"]) for e in full["pairing_events"]
    ] == [
        ("carol@example.com", "203.0.113.5", "Carol-UA", "fp-carol"),
        ("alice@example.com", "198.51.100.7", "Alice-UA", "fp-alice"),
        ("bob1@example.com", "203.0.113.1", "Bob-UA-1", "fp-bob1"),
        ("bob2@example.com", "203.0.113.2", "Bob-UA-2", "fp-bob2"),
    ]
    assert "other_attempts" not in full


# -- 3. nothing in the database activates a device ----------------------------------------------

_BASE32_RUN = re.compile(r"[A-Za-z2-7]{48,}")


def activating_strings(value: Any, keyring: Keyring) -> list[str]:
    """Every string in VALUE that `verify` accepts: the whole value, or any 48-character run."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        return []
    found = [value] if verify_payload(value, keyring).valid else []
    for run in _BASE32_RUN.findall(value):
        found += [
            run[i : i + 48]
            for i in range(len(run) - 47)
            if verify_payload(run[i : i + 48], keyring).valid
        ]
    return found


def every_value(registry: Registry) -> list[tuple[str, str, Any]]:
    """(table, column, value) for every column of every row of every table."""
    out = []
    with registry.engine.connect() as conn:
        for name in sa.inspect(registry.engine).get_table_names():
            result = conn.execute(sa.text(f"SELECT * FROM {name}"))
            columns = list(result.keys())
            for row in result:
                out += [(name, c, v) for c, v in zip(columns, row, strict=True)]
    return out


def test_no_column_of_a_1000_device_registry_holds_a_payload_that_verifies(
    registry: Registry, keyring_path: Path, tmp_path: Path
) -> None:
    keyring = load_keyring(keyring_path)
    manifest = serials_csv(tmp_path / "s.csv", 1000)
    comps = write_csv(
        tmp_path / "c.csv",
        ["serial", "component_type", "component_spec", "component_serial", "lot"],
        [[f"SN{i:06d}", "mcu", "STM32", f"MCU-{i}", "L1"] for i in range(0, 1000, 10)],
    )
    register_batch(registry, keyring, manifest, components_path=comps, batch="big")
    devs = devices_of(registry, keyring, "big")
    assert len(devs) == 1000
    sealer_keyring = keyring
    for n, dev in enumerate(devs[:60]):
        result = activate(registry, keyring, url(dev), f"user{n}@example.com", ip="10.0.0.1")
        log_action(registry, keyring, dev, "reboot", {"n": n})
        with pytest.raises(ActivationRejected):
            activate(registry, keyring, url(dev), "late@example.com")
        assert result.activation_token
    with pytest.raises(ActivationRejected):
        activate(registry, keyring, "HTTP://LOCALHOST:5001/A/" + "A" * 48, "x")

    values = every_value(registry)
    assert len({t for t, _, _ in values}) >= 6  # every table was read
    hits = [(t, c) for t, c, v in values if activating_strings(v, sealer_keyring)]
    assert hits == []

    # The scan itself finds a payload wherever one is kept (so the check above can fail).
    with registry.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE device_action_log SET metadata_json = :m "
                "WHERE id = (SELECT MIN(id) FROM device_action_log WHERE seq = 2)"
            ),
            {"m": json.dumps({"url": url(devs[500])})},
        )
    assert [(t, c) for t, c, v in every_value(registry) if activating_strings(v, keyring)] == [
        ("device_action_log", "metadata_json")
    ]


def test_labels_signed_again_are_byte_identical(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    manifest = serials_csv(tmp_path / "s.csv", 40)
    assert run_cli("register", str(manifest), "--batch", "b").exit_code == 0
    first = cli_json(run_cli("labels", "b", "--json"))
    again = cli_json(run_cli("labels", "b", "--json"))
    assert (again["file"], again["revision"], again["sha256"]) == (
        first["file"],
        1,
        first["sha256"],
    )


def test_a_new_sqlite_registry_and_its_journal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "reg" / "provision.db"
    old = os.umask(0o022)
    try:
        registry = Registry(f"sqlite:///{path}")
        with registry.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            kept = registry.engine.connect()  # keeps -wal and -shm in place
            files = sorted(p.name for p in path.parent.iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        kept.close()
        registry.close()
    finally:
        os.umask(old)
    assert "provision.db" in files and "provision.db-wal" in files
    assert set(modes.values()) == {0o600}, modes


# -- 3b. an existing registry is converted -----------------------------------------------------

_v2_devices = sa.table(
    "devices",
    *(sa.column(c) for c in ("id", "device_id", "serial_hash", "serial_ct", "device_type",
                             "batch_id", "batch_seq", "key_id", "payload", "expires_at",
                             "status", "created_at", "activated_at", "user_id",
                             "activation_token_hash", "action_count", "action_head")),
)  # fmt: skip
_v2_events = sa.table(
    "device_pairing_events",
    *(sa.column(c) for c in ("device_pk", "claimed_device_id", "occurred_at", "ip",
                             "user_agent", "fingerprint", "user_id", "result", "reason")),
)  # fmt: skip
_v2_actions = sa.table(
    "device_action_log",
    *(sa.column(c) for c in ("device_pk", "seq", "occurred_at", "action_type", "metadata_json",
                             "ip", "actor", "prev_hash", "entry_hash")),
)  # fmt: skip


def make_v2_registry(url_: str, keyring: Keyring) -> dict[str, str]:
    """A registry at revision 0002, as the previous release wrote it: payloads stored, pairing
    events unchained, no seals. Returns device id -> the payload 0002 stored."""
    engine = sa.create_engine(url_)
    upgrade_to(engine, "0002")
    sealer = make_sealer(keyring)
    key = keyring.active
    assert key.secret is not None
    now = datetime(2026, 11, 20, 8, 0, 0, 123456, tzinfo=UTC)
    expires = now + timedelta(days=365)
    stored: dict[str, str] = {}
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO batches (id, name, manifest_sha256, created_at, updated_at) "
                "VALUES (1, 'v2', :sha, :now, :now)"
            ),
            {"sha": "0" * 64, "now": now},
        )
        for n in range(3):
            serial = f"V2-{n}"
            did = device_id(keyring.pepper, serial)
            token = sign_token(key.id, key.secret, did, int(expires.timestamp()))
            stored[did] = token
            activated = n == 0
            head = None
            if activated:
                meta = json.dumps({"user": "old@example.com"}, separators=(",", ":"))
                entry = sealer.action(
                    did, 1, now, "activated", meta, "10.1.1.1", "old@example.com", genesis_hash(did)
                )
                head = sealer.action_head(did, 1, now, entry)
            conn.execute(
                sa.insert(_v2_devices).values(
                    id=n + 1,
                    device_id=did,
                    serial_hash=serial_hash(keyring.pepper, serial),
                    serial_ct=encrypt_serial(keyring.data_key, did, serial),
                    device_type="sensor",
                    batch_id=1,
                    batch_seq=n + 2,
                    key_id=key.id,
                    payload=token,
                    expires_at=expires,
                    status="activated" if activated else "pending",
                    created_at=now,
                    activated_at=now if activated else None,
                    user_id="old@example.com" if activated else None,
                    activation_token_hash="ab" * 32 if activated else None,
                    action_count=1 if activated else 0,
                    action_head=head,
                )
            )
            if activated:
                conn.execute(
                    sa.insert(_v2_actions).values(
                        device_pk=1, seq=1, occurred_at=now, action_type="activated",
                        metadata_json=meta, ip="10.1.1.1", actor="old@example.com",
                        prev_hash=genesis_hash(did), entry_hash=entry,
                    )
                )  # fmt: skip
                for user, result, reason in (
                    ("old@example.com", "accepted", None),
                    ("late@example.com", "rejected", "already_activated"),
                ):
                    conn.execute(
                        sa.insert(_v2_events).values(
                            device_pk=1, claimed_device_id=did, occurred_at=now, ip="10.1.1.1",
                            user_agent="UA", fingerprint=None, user_id=user, result=result,
                            reason=reason,
                        )
                    )  # fmt: skip
        conn.execute(
            sa.insert(_v2_events).values(
                device_pk=None, claimed_device_id=None, occurred_at=now, ip="10.9.9.9",
                user_agent="junk", fingerprint=None, user_id="x", result="rejected",
                reason="malformed",
            )
        )  # fmt: skip
    engine.dispose()
    return stored


def test_a_registry_at_the_previous_revision_is_upgraded_chained_and_sealed(
    db_url: str, keyring: Keyring
) -> None:
    stored = make_v2_registry(db_url, keyring)
    with pytest.raises(ConfigError, match="needs the keyring"):
        Registry(db_url)  # the rows must be sealed, and there is no keyring to seal them with
    registry = Registry(db_url, sealer=make_sealer(keyring))
    try:
        columns = {c["name"] for c in sa.inspect(registry.engine).get_columns("devices")}
        assert "payload" not in columns and {"seal", "pairing_count"} <= columns
        report = verify_chains(registry, keyring)
        assert report.ok, [str(p) for p in report.problems]
        assert (report.devices, report.entries, report.events) == (3, 1, 3)
        # Labels signed again carry the very payloads 0002 had stored...
        labels = list(batch_labels(registry, 1, "v2", _template(), BASE_URL, keyring))
        assert {lab.device_id: lab.url for lab in labels} == {
            did: payload_url(BASE_URL, token) for did, token in stored.items()
        }
        # ...and a label printed under 0002 still activates its pending device, once.
        pending = [did for did in stored if registry.devices.get(did).status == "pending"]  # type: ignore[union-attr]
        done = activate(
            registry, keyring, payload_url(BASE_URL, stored[pending[0]]), "new@example.com"
        )
        assert done.device_id == pending[0]
        assert verify_chains(registry, keyring).ok
    finally:
        registry.close()


def _template() -> Any:
    from provision.labels.templates import load_template

    return load_template("avery-l7160")


# -- 4. sealed rows: direct edits are named ----------------------------------------------------


class Edited:
    """A registry with an activated, a revoked and a busy device, and SQL to tamper with it."""

    def __init__(self, registry: Registry, keyring: Keyring, tmp_path: Path) -> None:
        self.registry, self.keyring = registry, keyring
        register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 4), batch="e")
        self.active, self.revoked, self.busy, self.quiet = devices_of(registry, keyring, "e")
        activate(registry, keyring, url(self.active), "alice@example.com")
        dev = registry.devices.get(self.revoked["device_id"])
        assert dev is not None
        from provision.audit import revoke

        revoke(registry, keyring, dev, "stolen", "ops")
        activate(registry, keyring, url(self.busy), "bob@example.com")
        for n in range(3):
            self.log(self.busy, f"step{n}")

    def log(self, dev: dict[str, Any], action: str) -> None:
        fresh = self.registry.devices.get(dev.device_id)
        assert fresh is not None
        log_action(self.registry, self.keyring, fresh, action)

    def sql(self, statement: str, **params: Any) -> None:
        with self.registry.engine.begin() as conn:
            conn.execute(sa.text(statement), params)

    def row(self, dev: dict[str, Any]) -> dict[str, Any]:
        with self.registry.engine.connect() as conn:
            return dict(
                conn.execute(
                    sa.text("SELECT * FROM devices WHERE device_id = :d"), {"d": dev.device_id}
                )
                .one()
                ._mapping
            )

    def pk(self, dev: dict[str, Any]) -> int:
        return int(self.row(dev)["id"])

    def problems(self, **kw: Any) -> list[tuple[str, str]]:
        return [
            (p.device_id, p.chain)
            for p in verify_chains(self.registry, self.keyring, **kw).problems
        ]


@pytest.fixture
def edited(registry: Registry, keyring: Keyring, tmp_path: Path) -> Edited:
    e = Edited(registry, keyring, tmp_path)
    assert e.problems() == []
    return e


def test_an_activated_device_set_back_to_pending_is_named(edited: Edited) -> None:
    edited.sql("UPDATE devices SET status = 'pending' WHERE id = :pk", pk=edited.pk(edited.active))
    assert edited.problems() == [(edited.active["device_id"], "seal")]


def test_a_cleared_revocation_is_named(edited: Edited) -> None:
    edited.sql(
        "UPDATE devices SET status = 'pending', revoked_at = NULL, revoked_by = NULL, "
        "revoked_reason = NULL WHERE id = :pk",
        pk=edited.pk(edited.revoked),
    )
    assert edited.problems() == [(edited.revoked["device_id"], "seal")]


def test_a_changed_user_is_named(edited: Edited) -> None:
    edited.sql("UPDATE devices SET user_id = 'mallory' WHERE id = :pk", pk=edited.pk(edited.active))
    assert edited.problems() == [(edited.active["device_id"], "seal")]


def test_an_erased_log_and_a_reset_row_are_named(edited: Edited) -> None:
    pk = edited.pk(edited.busy)
    edited.sql("DELETE FROM device_action_log WHERE device_pk = :pk", pk=pk)
    edited.sql("DELETE FROM device_pairing_events WHERE device_pk = :pk", pk=pk)
    edited.sql(
        "UPDATE devices SET status = 'pending', user_id = NULL, activated_at = NULL, "
        "activation_token_hash = NULL, action_count = 0, action_head = NULL, "
        "pairing_count = 0, pairing_head = NULL WHERE id = :pk",
        pk=pk,
    )
    assert edited.problems() == [(edited.busy["device_id"], "seal")]


def test_an_edited_or_deleted_pairing_event_is_named(edited: Edited) -> None:
    pk = edited.pk(edited.busy)
    edited.sql("UPDATE device_pairing_events SET user_id = 'eve' WHERE device_pk = :pk", pk=pk)
    assert edited.problems() == [(edited.busy["device_id"], "pairing")]
    edited.sql(
        "UPDATE device_pairing_events SET user_id = 'bob@example.com' WHERE device_pk = :pk", pk=pk
    )
    assert edited.problems() == []
    activate_again = edited.active
    with pytest.raises(ActivationRejected):
        activate(edited.registry, edited.keyring, url(activate_again), "late@example.com")
    edited.sql(
        "DELETE FROM device_pairing_events WHERE device_pk = :pk AND seq = 2",
        pk=edited.pk(activate_again),
    )
    assert edited.problems() == [(activate_again["device_id"], "pairing")]


def test_an_edited_unattached_attempt_is_named(edited: Edited) -> None:
    with pytest.raises(ActivationRejected):
        activate(edited.registry, edited.keyring, "not a payload", "eve")
    edited.sql("UPDATE device_pairing_events SET ip = '1.2.3.4' WHERE device_pk IS NULL")
    assert edited.problems() == [(UNATTACHED, "pairing")]


def test_a_rollback_is_consistent_alone_and_named_by_a_checkpoint(
    edited: Edited, tmp_path: Path, run_cli: RunCLI
) -> None:
    busy = edited.busy
    saved = edited.row(busy)  # an old copy of the row, as a backup or snapshot holds it
    edited.log(busy, "step3")
    edited.log(busy, "step4")
    made = run_cli("audit", "checkpoint", "--output", str(tmp_path / "cp.txt"), "--json")
    assert cli_json(made)["devices"] == 4
    # Roll the device back: its newest entries go, the row returns to the saved copy.
    pk = saved["id"]
    edited.sql(
        "DELETE FROM device_action_log WHERE device_pk = :pk AND seq > :n",
        pk=pk,
        n=saved["action_count"],
    )
    edited.sql(
        "UPDATE devices SET action_count = :c, action_head = :h, seal = :s WHERE id = :pk",
        c=saved["action_count"],
        h=saved["action_head"],
        s=saved["seal"],
        pk=pk,
    )
    alone = run_cli("audit", "verify")
    assert alone.exit_code == 0, alone.stdout  # every chain and seal is consistent again
    found = run_cli("audit", "verify", "--checkpoint", str(tmp_path / "cp.txt"))
    assert found.exit_code == 1
    assert found.stdout.splitlines()[0] == (
        f"BROKEN device {busy['device_id']} entry #5: the action log holds 4 entries, "
        "the checkpoint recorded 6 (rolled back?)"
    )
    assert found.stdout.splitlines()[-1].endswith("1 broken")


def test_a_registry_that_grew_extends_its_checkpoint(
    edited: Edited, tmp_path: Path, run_cli: RunCLI
) -> None:
    cp = tmp_path / "cp.txt"
    assert run_cli("audit", "checkpoint", "--output", str(cp)).exit_code == 0
    edited.log(edited.busy, "later")
    with pytest.raises(ActivationRejected):
        activate(edited.registry, edited.keyring, url(edited.quiet) + "X", "eve")
    result = run_cli("audit", "verify", "--checkpoint", str(cp))
    assert result.exit_code == 0, result.stdout
    assert result.stdout.endswith(f"checked against checkpoint {cp}: all chains and seals intact\n")


def test_a_device_gone_since_the_checkpoint_is_named(
    edited: Edited, tmp_path: Path, run_cli: RunCLI
) -> None:
    cp = tmp_path / "cp.txt"
    assert run_cli("audit", "checkpoint", "--output", str(cp)).exit_code == 0
    pk = edited.pk(edited.quiet)
    edited.sql("DELETE FROM devices WHERE id = :pk", pk=pk)
    result = run_cli("audit", "verify", "--checkpoint", str(cp), "--json")
    assert result.exit_code == 1
    assert [(p["device_id"], p["chain"]) for p in json.loads(result.stdout)["problems"]] == [
        (edited.quiet["device_id"], "checkpoint")
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.replace(" 1 ", " 0 ", 1), "do not match the signed digest"),
        (lambda t: t.replace('"devices": 4', '"devices": 5', 1), "signature does not match"),
        (lambda t: "garbage\n" + t, "not a provision checkpoint"),
    ],
    ids=["device-line", "header", "not-a-checkpoint"],
)
def test_an_altered_checkpoint_is_refused(
    edited: Edited, tmp_path: Path, run_cli: RunCLI, change: Callable[[str], str], message: str
) -> None:
    cp = tmp_path / "cp.txt"
    assert run_cli("audit", "checkpoint", "--output", str(cp)).exit_code == 0
    cp.write_text(change(cp.read_text()))
    result = run_cli("audit", "verify", "--checkpoint", str(cp))
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_a_checkpoint_of_another_keyring_is_refused(
    edited: Edited, tmp_path: Path, run_cli: RunCLI
) -> None:
    from provision.keys import init_keyring

    other = tmp_path / "other" / "keyring.json"
    init_keyring(other)
    cp = tmp_path / "cp.txt"
    made = run_cli(
        "audit", "checkpoint", "--output", str(cp), env={"PROVISION_KEYRING": str(other)}
    )
    assert made.exit_code == 0, made.stderr
    result = run_cli("audit", "verify", "--checkpoint", str(cp))
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {cp}: signed with another keyring's key, not this one's\n",
    )


def test_pairing_chains_start_from_their_genesis(edited: Edited) -> None:
    with edited.registry.engine.connect() as conn:
        first = conn.execute(
            sa.text(
                "SELECT prev_hash FROM device_pairing_events WHERE device_pk = :pk AND seq = 1"
            ),
            {"pk": edited.pk(edited.active)},
        ).scalar_one()
    assert first == pairing_genesis(edited.active["device_id"])


# -- 5. bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["30000", "100000000", "0"])
def test_an_out_of_range_ttl_is_one_line_and_exit_2(
    run_cli: RunCLI, tmp_path: Path, days: str
) -> None:
    result = run_cli("register", str(serials_csv(tmp_path / "s.csv", 1)), "--ttl-days", days)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == [
        f"Error: Invalid value for '--ttl-days': {days} is not in the range 1<=x<=3660."
    ]
    assert "Traceback" not in result.stderr


def test_the_library_bounds_the_ttl_too(
    registry: Registry, keyring: Keyring, tmp_path: Path
) -> None:
    with pytest.raises(ProvisionError, match="--ttl-days must be 1 to 3660"):
        register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 1), ttl_days=30000)
    assert registry.batches.names() == []


def test_a_run_that_registers_nothing_leaves_no_batch_row(
    registry: Registry, keyring: Keyring, tmp_path: Path
) -> None:
    manifest = serials_csv(tmp_path / "s.csv", 3)
    register_batch(registry, keyring, manifest, batch="first")
    again = register_batch(registry, keyring, manifest, batch="second")
    assert (again.registered, again.other_batch) == (0, 3)
    assert registry.batches.names() == ["first"]


def test_a_run_that_fails_in_its_first_chunk_leaves_no_batch_row(
    registry: Registry, keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = serials_csv(tmp_path / "s.csv", 3)
    register_batch(registry, keyring, manifest, batch="first")
    # A second process registers the same serials between our look-up and our insert: the
    # unique keys clash inside the chunk's transaction, which rolls the new batch row back too.
    monkeypatch.setattr(registry.devices, "existing_by_hash", lambda hashes: {})
    with pytest.raises(ProvisionError, match="registered by another process meanwhile"):
        register_batch(registry, keyring, manifest, batch="second")
    assert registry.batches.names() == ["first"]


@pytest.mark.parametrize(
    "limit", ["99999999999999999999999", "0", "-1", "abc", "１２", "10001", "1.5", ""]
)
def test_a_history_limit_out_of_range_is_a_json_400(
    registry: Registry, keyring_path: Path, tmp_path: Path, limit: str
) -> None:
    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 1), batch="b")
    [dev] = devices_of(registry, keyring, "b")
    client = create_app(
        WebSettings(registry.url, str(keyring_path), BASE_URL), registry=registry, keyring=keyring
    ).test_client()
    token = client.post(API, json={"payload": url(dev), "user": "a"}).get_json()["activation_token"]
    resp = client.get(
        f"/api/v1/devices/{dev['device_id']}/history",
        query_string={"limit": limit},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"]["reason"] == "bad_request"
    ok = client.get(
        f"/api/v1/devices/{dev['device_id']}/history?limit=10000",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert ok.status_code == 200


def test_every_api_error_status_has_a_json_body(registry: Registry, keyring_path: Path) -> None:
    client = create_app(
        WebSettings(registry.url, str(keyring_path), BASE_URL), registry=registry
    ).test_client()
    big = client.post(API, data=b"{" + b" " * (70 * 1024) + b"}", content_type="application/json")
    assert big.status_code == 413
    assert big.get_json()["error"]["reason"] == "payload_too_large"
    page = client.post("/A/" + "A" * 48, data={"user": "x" * (70 * 1024)})
    assert page.status_code == 413 and page.mimetype == "text/html"
    for resp, code in (
        (client.get(API), 405),
        (client.get("/api/v1/nothing"), 404),
        (client.delete("/api/v1/devices/00/history"), 405),
    ):
        assert resp.status_code == code
        assert resp.is_json and resp.get_json()["error"]["reason"], resp.get_data(as_text=True)


def test_text_history_escapes_control_characters_in_stored_values(
    registry: Registry, keyring: Keyring, tmp_path: Path, run_cli: RunCLI
) -> None:
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 1), batch="b")
    [dev] = devices_of(registry, keyring, "b")
    activate(registry, keyring, url(dev), "alice")
    forged_line = "x\n  #99 2026-01-01T00:00:00+00:00  factory_reset\x1b[2J\x9b31m\u202e"
    log_action(
        registry,
        keyring,
        dev,
        "note",
        {"text": forged_line},
    )
    result = run_cli("history", dev["device_id"])
    assert result.exit_code == 0
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", result.stdout)
    actions = [line for line in result.stdout.splitlines() if line.startswith("  #")]
    assert len(actions) == 2  # no forged line
    assert actions[-1].endswith(
        "note  text=x\\n  #99 2026-01-01T00:00:00+00:00  factory_reset\\x1b[2J\\x9b31m\\u202e"
        "  actor=- ip=-"
    )


def test_an_error_line_never_carries_a_raw_escape_sequence(run_cli: RunCLI, tmp_path: Path) -> None:
    manifest = serials_csv(tmp_path / "s.csv", 1)
    assert run_cli("register", str(manifest), "--batch", "b").exit_code == 0
    result = run_cli("labels", "b", "--template", str(tmp_path / "x\x1b[2J.toml"))
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr
    assert "x\\x1b[2J.toml" in result.stderr


@pytest.mark.parametrize("bidi", ["\u202e", "\u2066", "\u202a"])
def test_bidi_controls_are_refused_in_users_and_reasons(
    registry: Registry, keyring: Keyring, tmp_path: Path, bidi: str
) -> None:
    from provision.audit import revoke

    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 2), batch="b")
    first, second = devices_of(registry, keyring, "b")
    with pytest.raises(ProvisionError, match="no control characters"):
        activate(registry, keyring, url(first), f"alice{bidi}moc.elpmaxe")
    with pytest.raises(ProvisionError, match="bidirectional control character"):
        revoke(registry, keyring, second, f"lost{bidi}", "ops")


def test_a_migration_that_fails_midway_leaves_the_registry_as_it_was(
    db_url: str, keyring: Keyring
) -> None:
    make_v2_registry(db_url, keyring)

    class Failing:
        """A sealer that breaks after the schema changes began."""

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        Registry(db_url, sealer=Failing())  # type: ignore[arg-type]
    engine = sa.create_engine(db_url)
    try:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("devices")}
        tables = set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert revision == "0002" and "payload" in columns and "seal" not in columns
    assert not {t for t in tables if t.startswith("_alembic_tmp")} and "audit_chains" not in tables
    registry = Registry(db_url, sealer=make_sealer(keyring))  # and the real upgrade still works
    try:
        assert verify_chains(registry, keyring).ok
    finally:
        registry.close()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "100.5", "x"])
def test_an_offset_that_is_not_a_finite_small_number_is_a_usage_error(
    run_cli: RunCLI, tmp_path: Path, value: str
) -> None:
    result = run_cli("labels", "b", "--offset-x", value)
    assert result.exit_code == 2
    assert "Invalid value for '--offset-x'" in result.stderr


def test_copies_are_bounded(run_cli: RunCLI) -> None:
    result = run_cli("labels", "b", "--copies", "1001")
    assert result.exit_code == 2
    assert "1001 is not in the range 1<=x<=1000" in result.stderr


def test_a_device_type_default_with_a_bidi_control_is_refused_once(
    run_cli: RunCLI, tmp_path: Path
) -> None:
    manifest = write_csv(tmp_path / "s.csv", ["serial"], [["SN1"], ["SN2"]])
    result = run_cli("register", str(manifest), "--device-type", "sensor\u202e")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: --device-type contains a bidirectional control character (U+202E)\n",
    )


@pytest.mark.parametrize(
    "pattern", ["b-{date.year:>999999999}", "b-{date!r}", "b-{0}", "b-{now}", "b-{date:{x}}"]
)
def test_a_batch_pattern_may_hold_only_the_date(tmp_path: Path, pattern: str) -> None:
    from provision.errors import JobError
    from provision.jobs import load_job

    job = tmp_path / "job.toml"
    job.write_text(f'batch = "{pattern}"\nserials = "s.csv"\n')
    with pytest.raises(JobError, match=r"may hold only|bad placeholder"):
        load_job(job)
    job.write_text('batch = "line1-{date:%Y%m%d}"\nserials = "s.csv"\n')
    assert load_job(job, now=datetime(2026, 12, 1, tzinfo=UTC)).batch == "line1-20261201"
