"""Activation: every reason code, the token, pairing events, races, and no secret in the logs."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import multiprocessing
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Table, select

from provision.activation import (
    REASONS,
    ActivationRejected,
    activate,
    authenticate,
    token_hash,
)
from provision.audit import revoke, verify_chains
from provision.cli import cli
from provision.keys import Keyring, load_keyring
from provision.payload import payload_url, sign_token
from provision.registry import Registry, action_log, devices, pairing_events, utcnow
from provision.serials import device_id
from tests.helpers import REASON_STATUS, register_with_components, with_payload

BASE_URL = "http://localhost:5001"  # what the run_cli fixture sets as PROVISION_BASE_URL
SUCCESS_KEYS = {"device_id", "device_type", "activation_token", "activated_at"}
ALL_REASONS = [
    "malformed",
    "forged",
    "unknown_key",
    "revoked_key",
    "expired",
    "unknown_device",
    "revoked_device",
    "already_activated",
    "recalled",
]
URLSAFE_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,}")


# -- helpers ---------------------------------------------------------------------------------


def write_serials(path: Path, serials: list[str], device_type: str = "sensor") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["serial", "device_type", "manufacturer", "model"])
        w.writerows([s, device_type, "Acme", "M-1"] for s in serials)
    return path


@dataclass
class Factory:
    """Registers devices for a test and hands out their payloads."""

    registry: Registry
    keyring_path: Path
    tmp_path: Path

    @property
    def keyring(self) -> Keyring:
        # Loaded afresh each time: a CLI command may have rotated or revoked keys meanwhile.
        return load_keyring(self.keyring_path)

    def register(
        self, *serials: str, ttl_days: int = 30, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        # Imported here, not at the top: the spawned race workers import this module and
        # need not load pandas.
        from provision.pipeline import register_batch

        keyring = self.keyring
        name = f"b-{serials[0].lower()}"
        manifest = write_serials(self.tmp_path / f"{name}.csv", list(serials))
        register_batch(self.registry, keyring, manifest, batch=name, ttl_days=ttl_days, now=now)
        found = [self.registry.devices.get(device_id(keyring.pepper, s)) for s in serials]
        assert all(d is not None for d in found)
        return [with_payload(keyring, d) for d in found]  # type: ignore[arg-type]

    def one(self, serial: str = "SN000001", **kw: Any) -> dict[str, Any]:
        return self.register(serial, **kw)[0]

    def activate(self, payload: str, user: str = "alice@example.com", **kw: Any) -> Any:
        return activate(self.registry, self.keyring, payload, user, **kw)

    def reason(self, payload: str, user: str = "mallory@example.com", **kw: Any) -> str:
        """Activate expecting a rejection; the rejection's reason."""
        with pytest.raises(ActivationRejected) as info:
            self.activate(payload, user, **kw)
        return info.value.reason


@pytest.fixture
def factory(registry: Registry, keyring_path: Path, tmp_path: Path) -> Factory:
    return Factory(registry, keyring_path, tmp_path)


def url(device: dict[str, Any]) -> str:
    """The QR content of a device's label, as a phone camera reads it."""
    return payload_url(BASE_URL, device["payload"])


def flip_last_char(token: str) -> str:
    """Change the last base32 character: only the tag's last 5 bits change."""
    last = token[-1]
    return token[:-1] + ("B" if last == "A" else "A")


def in_future(days: int = 30) -> int:
    return int((datetime.now(UTC) + timedelta(days=days)).timestamp())


def rows(registry: Registry, table: Table) -> list[dict[str, Any]]:
    with registry.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]


EVENT_FIELDS = (
    "device_pk",
    "claimed_device_id",
    "ip",
    "user_agent",
    "fingerprint",
    "user_id",
    "result",
    "reason",
)


def events(registry: Registry) -> list[tuple[Any, ...]]:
    """Every pairing event, oldest first, without the timestamp."""
    found = rows(registry, pairing_events)
    assert all(isinstance(e["occurred_at"], datetime) for e in found)
    return [tuple(e[k] for k in EVENT_FIELDS) for e in found]


def cli_json(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)


# -- the library: success --------------------------------------------------------------------


def test_activation_moves_the_device_to_activated_and_links_the_user(factory: Factory) -> None:
    dev = factory.one()
    when = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    result = factory.activate(url(dev), "alice@example.com", now=when)
    assert result.device_id == dev["device_id"]
    assert result.device_type == "sensor"
    assert result.model == "M-1"
    assert result.activated_at == when
    assert set(result.to_json()) == SUCCESS_KEYS
    assert result.to_json()["activated_at"] == when.isoformat()
    assert when.isoformat().endswith("+00:00")
    after = factory.registry.devices.get(dev["device_id"])
    assert after is not None
    assert (after.status, after.user_id, after.activated_at) == (
        "activated",
        "alice@example.com",
        when,
    )


def test_activation_read_before_a_refused_attempt_still_wins_once_and_chains_hold(
    factory: Factory,
) -> None:
    """The winning UPDATE is conditional on the chains being where they were when the device
    was read: a refused attempt recorded in between makes it read again and try again."""
    from provision.audit import make_sealer
    from provision.registry import Attempt
    from provision.states import Reason

    dev = factory.one()
    registry, keyring = factory.registry, factory.keyring
    sealer = make_sealer(keyring)
    found = registry.events.device_for_activation(dev["device_id"])
    assert found is not None
    stale, held = found
    assert not held and stale.pairing_count == 0
    refused = Attempt(utcnow(), dev["device_id"], "203.0.113.5", None, None, "eve")
    registry.events.record_rejected(stale.id, refused, Reason.FORGED, sealer)
    attempt = Attempt(utcnow(), dev["device_id"], "198.51.100.1", None, None, "alice")
    assert registry.events.try_activate(stale, "alice", "ab" * 32, attempt, sealer) is None
    after = registry.devices.get(dev["device_id"])
    assert after is not None and after.status == "activated" and after.pairing_count == 2
    assert after.action_count == 1 and after.user_id == "alice"
    # The same stale read again: now it loses, and says why.
    late = Attempt(utcnow(), dev["device_id"], "198.51.100.2", None, None, "bob")
    assert registry.events.try_activate(stale, "bob", "cd" * 32, late, sealer) == (
        Reason.ALREADY_ACTIVATED
    )
    assert [e.result for e in registry.events.pairing_events_of(after.id)] == [
        "rejected",
        "accepted",
        "rejected",
    ]
    assert verify_chains(registry, keyring).ok


def _lent_back_clean(registry: Registry) -> None:
    """Every connection in REGISTRY's pool is out of autocommit with no transaction open."""
    import psycopg

    pool = registry.engine.pool
    lent = [registry.engine.raw_connection() for _ in range(pool.checkedin())]
    try:
        for raw in lent:
            conn = raw.driver_connection
            assert conn.autocommit is False
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        for raw in lent:
            raw.close()


def _admin(registry: Registry) -> Any:
    """A connection of the cluster's own, outside the registry's database and pool."""
    import psycopg

    url = registry.engine.url.set(drivername="postgresql", database="postgres")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)


def _drop_every_connection(registry: Registry) -> None:
    with _admin(registry) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            [registry.engine.url.database],
        )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_activates_on_the_driver_and_hands_its_connection_back_as_lent(
    factory: Factory,
) -> None:
    """On PostgreSQL the read and the one-statement activation run on psycopg itself,
    prepared; the pool's connection goes back out of autocommit."""
    dev = factory.one()
    registry = factory.registry
    registry.engine.dispose()  # from here on, the pool holds one connection
    factory.activate(url(dev), "alice@example.com")
    _lent_back_clean(registry)
    with registry.store.driver_once() as conn:  # that connection, lent again
        prepared = [p for (p,) in conn.execute("SELECT statement FROM pg_prepared_statements")]
    assert any("FROM devices" in p for p in prepared)  # the read
    assert any("WITH won AS" in p for p in prepared)  # the UPDATE and both inserts
    after = registry.devices.get(dev["device_id"])
    assert (
        after is not None and after.status == "activated" and after.user_id == "alice@example.com"
    )
    assert (after.pairing_count, after.action_count) == (1, 1)
    assert verify_chains(registry, factory.keyring).ok
    _lent_back_clean(registry)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_driver_errors_are_registry_errors_and_the_connection_goes_back_clean(
    factory: Factory,
) -> None:
    from provision.errors import ConflictError, RegistryError

    first = factory.one()
    registry = factory.registry
    store = registry.store
    with pytest.raises(RegistryError, match="division by zero"), store.driver_once() as conn:
        conn.execute("SELECT 1 / 0")
    _lent_back_clean(registry)
    with pytest.raises(ConflictError), store.driver_once() as conn:
        conn.execute("CREATE TEMP TABLE once (x integer PRIMARY KEY)")
        conn.execute("INSERT INTO once VALUES (1), (1)")
    _lent_back_clean(registry)
    with pytest.raises(KeyError), store.driver_once() as conn:  # not the driver's: as it is
        conn.execute("BEGIN")  # and a transaction left open: that connection is thrown away
        raise KeyError("x")
    _lent_back_clean(registry)
    factory.activate(url(first))
    _lent_back_clean(registry)
    # A registry that refuses connections: a RegistryError, not the driver's own exception.
    with _admin(registry) as admin:
        name = registry.engine.url.database
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        _drop_every_connection(registry)
        registry.engine.dispose()  # the next checkout connects
        try:
            with pytest.raises(RegistryError, match="registry postgresql"):
                registry.events.device_for_activation(first["device_id"])
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_after_the_server_drops_every_connection_one_activation_fails_not_one_a_connection(
    factory: Factory,
) -> None:
    """As SQLAlchemy does on a disconnect: the whole pool is renewed, not one connection."""
    from provision.errors import RegistryError

    first, second = factory.register("SN000001", "SN000002")
    registry = factory.registry
    held = [registry.engine.raw_connection() for _ in range(3)]  # three in the pool
    for raw in held:
        raw.close()
    factory.activate(url(first))
    _drop_every_connection(registry)
    with pytest.raises(RegistryError):
        factory.activate(url(second))
    before = registry.devices.get(second["device_id"])  # nothing recorded, nothing activated
    assert before is not None and before.status == "pending" and before.pairing_count == 0
    factory.activate(url(second))  # the next one works, on a new connection
    assert factory.reason(url(second)) == "already_activated"
    assert verify_chains(registry, factory.keyring).ok


def test_bare_token_and_lower_case_url_activate_like_the_scanned_url(factory: Factory) -> None:
    a, b = factory.register("SN000001", "SN000002")
    assert factory.activate(a["payload"]).device_id == a["device_id"]
    assert factory.activate(url(b).lower()).device_id == b["device_id"]


# -- the library: every reason code ----------------------------------------------------------


def test_text_that_is_no_payload_is_malformed(factory: Factory) -> None:
    for payload in (
        "",
        "hello",
        "http://localhost:5001/A/",
        "http://localhost:5001/A/NOT-A-TOKEN",
        "AAAA",
        "A" * 47 + "1",
    ):
        assert factory.reason(payload) == "malformed", payload
    assert [e[-1] for e in events(factory.registry)] == ["malformed"] * 6


def test_truncated_lengthened_or_wrong_version_payload_is_malformed(factory: Factory) -> None:
    dev = factory.one()
    token = dev["payload"]
    raw = bytearray(base64.b32decode(token))
    raw[0] = 2  # version 2 does not exist
    assert factory.reason(token[:-1]) == "malformed"
    assert factory.reason(token + "A") == "malformed"
    assert factory.reason(base64.b32encode(bytes(raw)).decode()) == "malformed"
    assert factory.registry.devices.get(dev["device_id"]).status == "pending"  # type: ignore[union-attr]


def test_one_changed_tag_character_is_forged(factory: Factory) -> None:
    dev = factory.one()
    assert factory.reason(flip_last_char(dev["payload"])) == "forged"
    assert factory.reason(payload_url(BASE_URL, flip_last_char(dev["payload"]))) == "forged"
    assert factory.registry.devices.get(dev["device_id"]).status == "pending"  # type: ignore[union-attr]


def test_token_signed_by_another_keyring_under_the_same_key_id_is_forged(
    factory: Factory,
) -> None:
    dev = factory.one()
    impostor = sign_token(1, secrets.token_bytes(32), dev["device_id"], in_future())
    assert factory.keyring.active.id == 1
    assert factory.reason(impostor) == "forged"


def test_validly_signed_payload_that_is_not_the_devices_label_is_forged(
    factory: Factory,
) -> None:
    # Signed with our own key, but with another expiry than the label we printed.
    dev = factory.one()
    key = factory.keyring.active
    assert key.secret is not None
    other = sign_token(key.id, key.secret, dev["device_id"], in_future(days=400))
    assert other != dev["payload"]
    assert factory.reason(other) == "forged"
    assert factory.activate(url(dev)).device_id == dev["device_id"]


def test_key_id_the_keyring_never_had_is_unknown_key(factory: Factory) -> None:
    dev = factory.one()
    assert factory.keyring.get(9) is None
    token = sign_token(9, secrets.token_bytes(32), dev["device_id"], in_future())
    assert factory.reason(token) == "unknown_key"


def test_payload_signed_with_a_revoked_key_is_revoked_key(factory: Factory) -> None:
    dev = factory.one()
    keyring = factory.keyring
    keyring.rotate()
    keyring.revoke(1)
    keyring.save()
    assert dev["key_id"] == 1
    assert factory.reason(url(dev)) == "revoked_key"


def test_payload_past_its_expiry_is_expired(factory: Factory) -> None:
    dev = factory.one(ttl_days=1)
    assert factory.reason(url(dev), now=utcnow() + timedelta(days=2)) == "expired"
    # Valid up to the second before expiry, not at it.
    expires_at = dev["expires_at"]
    assert factory.reason(url(dev), now=expires_at) == "expired"
    ok = factory.activate(url(dev), now=expires_at - timedelta(seconds=1))
    assert ok.device_id == dev["device_id"]


def test_correctly_signed_token_for_an_unregistered_device_is_unknown_device(
    factory: Factory,
) -> None:
    factory.one()
    key = factory.keyring.active
    assert key.secret is not None
    ghost = device_id(factory.keyring.pepper, "NEVER-REGISTERED")
    assert factory.registry.devices.get(ghost) is None
    assert factory.reason(sign_token(key.id, key.secret, ghost, in_future())) == "unknown_device"


def test_revoked_device_cannot_be_activated(factory: Factory, run_cli) -> None:
    dev = factory.one()
    result = run_cli("revoke", dev["device_id"], "--reason", "stolen from warehouse 3")
    assert result.exit_code == 0, result.stderr
    assert factory.reason(url(dev)) == "revoked_device"
    after = factory.registry.devices.get(dev["device_id"])
    assert after is not None
    assert (after.status, after.user_id, after.activation_token_hash) == (
        "revoked",
        None,
        None,
    )


def test_second_activation_is_already_activated_and_changes_nothing(factory: Factory) -> None:
    dev = factory.one()
    first = factory.activate(url(dev), "alice@example.com")
    before = factory.registry.devices.get(dev["device_id"])
    assert factory.reason(url(dev), "bob@example.com") == "already_activated"
    assert factory.reason(url(dev), "alice@example.com") == "already_activated"
    after = factory.registry.devices.get(dev["device_id"])
    # The rejected attempts join the device's pairing chain (its count, head and seal move on);
    # nothing else of the device changes.
    chain = ("pairing_count", "pairing_head", "seal")
    assert after is not None and before is not None
    assert {k: v for k, v in asdict(after).items() if k not in chain} == {
        k: v for k, v in asdict(before).items() if k not in chain
    }
    assert after.pairing_count == before.pairing_count + 2
    assert after.user_id == "alice@example.com"
    assert after.activation_token_hash == token_hash(first.activation_token)


def test_rejection_carries_status_and_message_for_every_reason() -> None:
    from provision.web.activation import REASON_STATUS as WEB_REASON_STATUS

    assert sorted(REASONS) == sorted(ALL_REASONS)
    # The HTTP status lives with the web service; activation.py knows no HTTP.
    statuses = {r: WEB_REASON_STATUS[ActivationRejected(r).reason] for r in ALL_REASONS}
    assert statuses == REASON_STATUS
    for r in ALL_REASONS:
        exc = ActivationRejected(r)
        assert exc.message == REASONS[r]
        assert str(exc) == f"{r}: {REASONS[r]}"


# -- pairing events --------------------------------------------------------------------------


def test_every_attempt_leaves_a_pairing_event_with_client_details(factory: Factory) -> None:
    dev, revoked = factory.register("SN000001", "SN000002")
    reg = factory.registry
    revoke(reg, factory.keyring, revoked, "lost", "ops")
    key = factory.keyring.active
    assert key.secret is not None
    ghost = device_id(factory.keyring.pepper, "GHOST")

    def client(n: int) -> dict[str, str]:
        return {"ip": f"198.51.100.{n}", "user_agent": f"Phone/{n}", "fingerprint": f"fp{n:03d}"}

    attempts = [
        ("not a code", "malformed"),
        (flip_last_char(dev["payload"]), "forged"),
        (sign_token(9, b"k" * 32, dev["device_id"], in_future()), "unknown_key"),
        (sign_token(key.id, key.secret, ghost, in_future()), "unknown_device"),
        (url(revoked), "revoked_device"),
        (url(dev), None),
        (url(dev), "already_activated"),
    ]
    for n, (payload, want) in enumerate(attempts, start=1):
        if want is None:
            factory.activate(payload, f"user{n}", **client(n))
        else:
            assert factory.reason(payload, f"user{n}", **client(n)) == want
    assert factory.reason(url(dev), "user8", now=utcnow() + timedelta(days=60)) == "expired"

    def row(n: int, pk: Any, claimed: Any, result: str, reason: str | None) -> tuple[Any, ...]:
        c = client(n)
        return (pk, claimed, c["ip"], c["user_agent"], c["fingerprint"], f"user{n}", result, reason)

    did = dev["device_id"]
    assert events(reg) == [
        row(1, None, None, "rejected", "malformed"),
        row(2, None, None, "rejected", "forged"),
        row(3, None, None, "rejected", "unknown_key"),
        row(4, None, ghost, "rejected", "unknown_device"),
        row(5, revoked["id"], revoked["device_id"], "rejected", "revoked_device"),
        row(6, dev["id"], did, "accepted", None),
        row(7, dev["id"], did, "rejected", "already_activated"),
        (dev["id"], did, None, None, None, "user8", "rejected", "expired"),
    ]


def test_revoked_key_attempt_is_recorded_too(factory: Factory) -> None:
    dev = factory.one()
    keyring = factory.keyring
    keyring.rotate()
    keyring.revoke(1)
    with pytest.raises(ActivationRejected, match=r"^revoked_key: "):
        activate(factory.registry, keyring, url(dev), "eve", ip="192.0.2.9")
    assert events(factory.registry) == [
        (None, None, "192.0.2.9", None, None, "eve", "rejected", "revoked_key")
    ]


def test_overlong_client_details_are_clipped_not_refused(factory: Factory) -> None:
    dev = factory.one()
    factory.activate(url(dev), ip="1" * 100, user_agent="U" * 2000, fingerprint="f" * 500)
    (event,) = rows(factory.registry, pairing_events)
    assert (event["ip"], event["user_agent"], event["fingerprint"]) == (
        "1" * 64,
        "U" * 512,
        "f" * 128,
    )


# -- the activation token ---------------------------------------------------------------------


def test_activation_token_has_128_bits_or_more_and_only_its_sha256_is_stored(
    factory: Factory,
) -> None:
    a, b = factory.register("SN000001", "SN000002")
    tok_a = factory.activate(url(a)).activation_token
    tok_b = factory.activate(url(b)).activation_token
    for tok in (tok_a, tok_b):
        assert URLSAFE_TOKEN_RE.fullmatch(tok)
        assert len(base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))) * 8 >= 128
    assert tok_a != tok_b
    row = factory.registry.devices.get(a["device_id"])
    assert row is not None
    assert row.activation_token_hash == hashlib.sha256(tok_a.encode()).hexdigest()
    everything = repr([rows(factory.registry, t) for t in (devices, pairing_events, action_log)])
    assert tok_a not in everything
    assert tok_b not in everything
    assert row.activation_token_hash in everything


def test_authenticate_accepts_the_activation_token_and_rejects_any_other(
    factory: Factory,
) -> None:
    a, b, pending = factory.register("SN000001", "SN000002", "SN000003")
    tok_a = factory.activate(url(a)).activation_token
    tok_b = factory.activate(url(b)).activation_token
    reg = factory.registry
    ok = authenticate(reg, a["device_id"], tok_a)
    assert ok is not None and ok.device_id == a["device_id"]
    upper = authenticate(reg, a["device_id"].upper(), tok_a)
    assert upper is not None and upper.device_id == a["device_id"]
    wrong = tok_a[:-1] + ("A" if tok_a[-1] != "A" else "B")
    assert authenticate(reg, a["device_id"], wrong) is None
    assert authenticate(reg, a["device_id"], tok_b) is None  # another device's token
    assert authenticate(reg, a["device_id"], token_hash(tok_a)) is None  # the stored hash
    assert authenticate(reg, a["device_id"], "") is None
    assert authenticate(reg, a["device_id"], None) is None
    assert authenticate(reg, pending["device_id"], tok_a) is None
    assert authenticate(reg, "0000000000000000", tok_a) is None


def test_a_revoked_devices_token_no_longer_authenticates(factory: Factory) -> None:
    (a,) = factory.register("SN000001")
    token = factory.activate(url(a)).activation_token
    assert authenticate(factory.registry, a["device_id"], token) is not None
    device = factory.registry.devices.get(a["device_id"])
    assert device is not None
    revoke(factory.registry, factory.keyring, device, "stolen", "support")
    assert authenticate(factory.registry, a["device_id"], token) is None


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_activate_prints_exactly_the_four_keys(factory: Factory, run_cli) -> None:
    dev = factory.one()
    result = run_cli(
        "activate",
        url(dev),
        "--user",
        "alice@example.com",
        "--ip",
        "203.0.113.7",
        "--user-agent",
        "Mozilla/5.0 (Phone)",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    out = cli_json(result)
    assert set(out) == SUCCESS_KEYS
    assert (out["device_id"], out["device_type"]) == (dev["device_id"], "sensor")
    assert URLSAFE_TOKEN_RE.fullmatch(out["activation_token"])
    assert datetime.fromisoformat(out["activated_at"]).tzinfo is not None
    assert authenticate(factory.registry, dev["device_id"], out["activation_token"]) is not None
    assert events(factory.registry) == [
        (
            dev["id"],
            dev["device_id"],
            "203.0.113.7",
            "Mozilla/5.0 (Phone)",
            None,
            "alice@example.com",
            "accepted",
            None,
        )
    ]


def test_cli_activate_text_output_shows_the_token_once(factory: Factory, run_cli) -> None:
    dev = factory.one()
    result = run_cli("activate", dev["payload"], "--user", "alice")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Activated device {dev['device_id']} (sensor) for alice."
    assert lines[1].startswith("Activation token (shown once): ")
    token = lines[1].removeprefix("Activation token (shown once): ")
    assert authenticate(factory.registry, dev["device_id"], token) is not None
    assert events(factory.registry)[0][3] == "provision-cli"  # default user agent


def _payload_for(reason: str, factory: Factory, run_cli) -> tuple[str, dict[str, Any] | None]:
    """A payload that must be rejected with `reason`, built the way it happens in the field;
    and the device the rejection is attributed to, if any."""
    dev = factory.one()
    key = factory.keyring.active
    assert key.secret is not None
    if reason == "malformed":
        return "HTTP://LOCALHOST:5001/A/NOT-A-CODE", None
    if reason == "forged":
        return payload_url(BASE_URL, flip_last_char(dev["payload"])), None
    if reason == "unknown_key":
        return sign_token(9, key.secret, dev["device_id"], in_future()), None
    if reason == "revoked_key":
        assert run_cli("keys", "rotate").exit_code == 0
        assert run_cli("keys", "revoke", "1", "--yes").exit_code == 0
        return url(dev), None
    if reason == "expired":
        old = factory.one("SN000099", ttl_days=1, now=utcnow() - timedelta(days=2))
        return url(old), old
    if reason == "unknown_device":
        ghost = device_id(factory.keyring.pepper, "NEVER-REGISTERED")
        return sign_token(key.id, key.secret, ghost, in_future()), None
    if reason == "revoked_device":
        assert run_cli("revoke", dev["device_id"], "--reason", "stolen").exit_code == 0
        return url(dev), dev
    if reason == "already_activated":
        assert run_cli("activate", url(dev), "--user", "first").exit_code == 0
        return url(dev), dev
    if reason == "recalled":
        held = register_with_components(
            factory.registry,
            factory.keyring,
            factory.tmp_path,
            "held",
            [["SN-HELD-1", "battery", "CR2032", "", "ACME", "L-HELD"]],
        )["SN-HELD-1"]
        made = run_cli(
            "recall", "create", "r1", "--lot", "L-HELD", "--reason", "cells swell", "--hold"
        )
        assert made.exit_code == 0, made.output
        return url(held), held
    raise AssertionError(reason)


@pytest.mark.parametrize("reason", ALL_REASONS)
def test_cli_rejection_exits_1_with_the_reason_as_json(
    factory: Factory, run_cli, reason: str
) -> None:
    payload, dev = _payload_for(reason, factory, run_cli)
    before = len(events(factory.registry))
    result = run_cli("activate", payload, "--user", "bob", "--ip", "192.0.2.1", "--json")
    assert result.exit_code == 1
    assert cli_json(result) == {"error": {"reason": reason, "message": REASONS[reason]}}
    assert result.stderr == f"Error: {reason}: {REASONS[reason]}\n"
    new = events(factory.registry)[before:]
    assert [(e[0], e[2], e[3], e[5], e[6], e[7]) for e in new] == [
        (dev["id"] if dev else None, "192.0.2.1", "provision-cli", "bob", "rejected", reason)
    ]


def test_cli_rejection_without_json_prints_only_the_error_line(factory: Factory, run_cli) -> None:
    result = run_cli("activate", "garbage", "--user", "bob")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: malformed: {REASONS['malformed']}\n"


def test_cli_refuses_a_user_with_control_characters(factory: Factory, run_cli) -> None:
    dev = factory.one()
    result = run_cli("activate", url(dev), "--user", "eve\x1b[2J")
    assert result.exit_code == 1
    assert result.stderr == "Error: user: give 1-256 characters, no control characters\n"
    assert factory.registry.devices.get(dev["device_id"]).status == "pending"  # type: ignore[union-attr]


# -- races ---------------------------------------------------------------------------------------


def _assert_one_winner(
    registry: Registry, dev: dict[str, Any], outcomes: list[tuple[str, str, str | None]]
) -> None:
    """outcomes: (user, "ok" or reason or "error: ...", token or None) per attempt."""
    assert Counter(o[1] for o in outcomes) == {"ok": 1, "already_activated": len(outcomes) - 1}
    ((winner, _, token),) = [o for o in outcomes if o[1] == "ok"]
    after = registry.devices.get(dev["device_id"])
    assert after is not None
    assert (after.status, after.user_id) == ("activated", winner)
    assert after.activation_token_hash == token_hash(token or "")
    mine = [e for e in rows(registry, pairing_events) if e["device_pk"] == dev["id"]]
    assert len(mine) == len(outcomes)
    assert Counter((e["result"], e["reason"]) for e in mine) == {
        ("accepted", None): 1,
        ("rejected", "already_activated"): len(outcomes) - 1,
    }
    assert [e["user_id"] for e in mine if e["result"] == "accepted"] == [winner]
    acts = [a for a in rows(registry, action_log) if a["device_pk"] == dev["id"]]
    assert [(a["seq"], a["action_type"], a["actor"]) for a in acts] == [(1, "activated", winner)]


def _race_threads(
    registry: Registry, keyring: Keyring, payload: str, n: int
) -> list[tuple[str, str, str | None]]:
    """n threads released together by a barrier, each activating `payload` once."""
    barrier = threading.Barrier(n)
    outcomes: list[tuple[str, str, str | None]] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        user = f"user{i:02d}"
        barrier.wait(timeout=30)
        try:
            tok = activate(registry, keyring, payload, user).activation_token
            outcome: tuple[str, str, str | None] = (user, "ok", tok)
        except ActivationRejected as exc:
            outcome = (user, exc.reason, None)
        except Exception as exc:  # recorded, so the assertion shows it
            outcome = (user, f"error: {exc!r}", None)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == n
    return outcomes


def test_sixteen_threads_racing_for_one_device_exactly_one_wins(factory: Factory) -> None:
    keyring = factory.keyring
    for dev in factory.register("RACE01", "RACE02", "RACE03"):
        outcomes = _race_threads(factory.registry, keyring, url(dev), 16)
        _assert_one_winner(factory.registry, dev, outcomes)
    assert verify_chains(factory.registry, keyring).ok


def _activate_in_process(
    db_url: str, keyring_path: str, payload: str, user: str, barrier: Any, queue: Any
) -> None:
    """Runs in a spawned process: open everything, wait for the others, then activate."""
    try:
        registry = Registry(db_url)
        keyring = load_keyring(keyring_path)
        registry.devices.get("0" * 16)  # connect before the start line
        barrier.wait(timeout=60)
        tok = activate(registry, keyring, payload, user).activation_token
        queue.put((user, "ok", tok))
    except ActivationRejected as exc:
        queue.put((user, exc.reason, None))
    except BaseException as exc:
        queue.put((user, f"error: {exc!r}", None))


def test_six_processes_racing_for_one_device_exactly_one_wins(
    factory: Factory, db_url: str, keyring_path: Path
) -> None:
    n = 6
    dev = factory.one("RACE01")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_activate_in_process,
            args=(db_url, str(keyring_path), url(dev), f"proc{i}", barrier, queue),
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=90) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    _assert_one_winner(factory.registry, dev, outcomes)


# A real `provision activate` per process; each waits at a start line after its imports.
_GATED_CLI = """
import os, sys, time
import provision.activation, provision.audit, provision.registry
from provision.cli import main
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
sys.argv = ["provision", *sys.argv[3:]]
main()
"""


def test_six_cli_processes_racing_for_one_device_exactly_one_wins(
    factory: Factory, db_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    n = 6
    dev = factory.one("RACE01")
    env = os.environ | {"PROVISION_DB_URL": db_url, "PROVISION_KEYRING": str(keyring_path)}
    go = tmp_path / "go"
    procs = []
    for i in range(n):
        argv = [sys.executable, "-c", _GATED_CLI, str(tmp_path / f"ready{i}"), str(go)]
        argv += ["activate", url(dev), "--user", f"cli{i}", "--json"]
        procs.append(
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
        assert time.monotonic() < deadline, "the CLI processes never got ready"
        time.sleep(0.01)
    go.touch()
    outcomes = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        body = json.loads(out)
        if p.returncode == 0:
            assert set(body) == SUCCESS_KEYS and err == ""
            outcomes.append((f"cli{i}", "ok", body["activation_token"]))
        else:
            assert p.returncode == 1, err
            assert err == f"Error: {body['error']['reason']}: {body['error']['message']}\n"
            outcomes.append((f"cli{i}", body["error"]["reason"], None))
    _assert_one_winner(factory.registry, dev, outcomes)


# -- nothing secret in the logs ------------------------------------------------------------------


def _secrets(keyring: Keyring) -> list[str]:
    raw = [keyring.pepper, keyring.data_key] + [k.secret for k in keyring.keys if k.secret]
    return [form for b in raw for form in (base64.b64encode(b).decode(), b.hex())]


def test_no_token_key_or_serial_in_verbose_log_output(
    sqlite_url: str, keyring_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # In-process first, with every log record of every logger captured at DEBUG.
    caplog.set_level(logging.DEBUG)
    serials = ["LEAKY-SERIAL-0001", "LEAKY-SERIAL-0002"]
    manifest = write_serials(tmp_path / "s.csv", serials)
    keyring = load_keyring(keyring_path)
    key_secrets = _secrets(keyring)
    env = {
        "PROVISION_DB_URL": sqlite_url,
        "PROVISION_KEYRING": str(keyring_path),
        "PROVISION_OUTPUT": str(tmp_path / "out"),
        "PROVISION_BASE_URL": BASE_URL,
    }
    stderr = []

    def run(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, ["--verbose", *args], env=env, catch_exceptions=False)
        assert result.exit_code == code, (args, result.stderr)
        stderr.append(result.stderr)
        return result

    run("register", str(manifest), "--batch", "leak")
    registry = Registry(sqlite_url)
    dids = [device_id(keyring.pepper, s) for s in serials]
    payloads = [with_payload(keyring, registry.devices.get(d))["payload"] for d in dids]  # type: ignore[arg-type]
    token = cli_json(run("activate", payload_url(BASE_URL, payloads[0]), "--user", "al", "--json"))
    token = token["activation_token"]
    run("activate", payload_url(BASE_URL, payloads[0]), "--user", "bob", "--json", code=1)
    run("activate", flip_last_char(payloads[1]), "--user", "bob", code=1)
    run("verify", payload_url(BASE_URL, payloads[1]))
    run("log", "--serial", serials[0], "firmware_update", "--meta", "version=2")
    run("history", "--serial", serials[0], "--json")
    run("history", "--serial", "NO-SUCH-SERIAL", code=1)
    run("audit", "verify")
    run("keys", "list")
    run("keys", "rotate")
    run("revoke", "--serial", serials[1], "--reason", "lost in transit")
    key_secrets += _secrets(load_keyring(keyring_path))  # the rotated-in key too

    # Then the real thing: `provision --verbose ...` in a process of its own, stderr as is.
    penv = os.environ | env
    activated = subprocess.run(
        [sys.executable, "-m", "provision", "--verbose", "activate", payloads[1], "--user", "x"],
        env=penv,
        capture_output=True,
        text=True,
    )
    assert activated.returncode == 1  # revoked meanwhile
    assert activated.stderr.endswith(f"Error: revoked_device: {REASONS['revoked_device']}\n")
    hist = subprocess.run(
        [sys.executable, "-m", "provision", "--verbose", "history", "--serial", serials[0]],
        env=penv,
        capture_output=True,
        text=True,
    )
    assert hist.returncode == 0, hist.stderr
    assert " INFO " in hist.stderr  # --verbose is in force: logging does reach stderr
    stderr += [activated.stderr, hist.stderr]

    logged = caplog.text + "".join(stderr)
    assert "INFO" in caplog.text
    for needle in [token, *serials, *key_secrets]:
        assert needle not in logged, f"{needle[:6]}... leaked into the log output"
    assert token not in activated.stdout + hist.stdout
    for s in serials:
        assert s not in hist.stdout
