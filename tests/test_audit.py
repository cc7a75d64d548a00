"""Lifetime tracking: history, log, revoke (by id or serial) and the tamper-evident action log."""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import text

from provision.activation import ActivationRejected, activate
from provision.audit import log_action, verify_chains
from provision.errors import ProvisionError
from provision.keys import Keyring, init_keyring, load_keyring
from provision.payload import payload_url
from provision.registry import Registry
from provision.serials import device_id
from tests.helpers import with_payload, write_csv

BASE_URL = "http://localhost:5001"
HISTORY_KEYS = {"device", "components", "pairing_events", "actions"}


def operator() -> str:
    """Who the CLI records as the actor of `log` and `revoke`."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def ok_json_fail(result: Result) -> Any:
    """The JSON of a run that must exit 1."""
    assert result.exit_code == 1, result.stdout + result.stderr
    return json.loads(result.stdout)


def seal_broken(did: str) -> dict[str, Any]:
    """The problem `audit verify --json` reports for a device row changed behind our back."""
    return {
        "device_id": did,
        "chain": "seal",
        "seq": None,
        "entry_id": None,
        "problem": "the device row's seal does not match its state (status, user, activation, "
        "revocation or chain heads changed directly in the database)",
    }


@dataclass
class Fleet:
    """A registered batch with components, and helpers to activate and log through the CLI."""

    registry: Registry
    keyring: Keyring
    run_cli: Any
    serials: list[str]

    def did(self, serial: str) -> str:
        return device_id(self.keyring.pepper, serial)

    def device(self, serial: str) -> Any:
        dev = self.registry.devices.get(self.did(serial))
        assert dev is not None
        return with_payload(self.keyring, dev)

    def activate(self, serial: str, user: str = "alice@example.com", **kw: Any) -> str:
        url = payload_url(BASE_URL, self.device(serial)["payload"])
        return activate(self.registry, self.keyring, url, user, **kw).activation_token

    def log(self, serial: str, action: str, **meta: str) -> dict[str, Any]:
        return log_action(self.registry, self.keyring, self.device(serial), action, meta)

    def history(self, *args: str) -> dict[str, Any]:
        return ok_json(self.run_cli("history", *args, "--json"))

    def audit(self, *args: str) -> Result:
        return self.run_cli("audit", "verify", *args)

    def sql(self, statement: str, **params: Any) -> int:
        """Tamper with the database directly, as someone with database access would."""
        with self.registry.engine.begin() as conn:
            return conn.execute(text(statement), params).rowcount

    def entry_id(self, serial: str, seq: int) -> int:
        with self.registry.engine.connect() as conn:
            return conn.execute(
                text("SELECT id FROM device_action_log WHERE device_pk = :pk AND seq = :seq"),
                {"pk": self.device(serial)["id"], "seq": seq},
            ).scalar_one()


@pytest.fixture
def fleet(registry: Registry, keyring_path: Path, run_cli, tmp_path: Path) -> Fleet:
    serials = ["TH200-0001", "TH200-0002", "TH200-0003"]
    manifest = write_csv(
        tmp_path / "serials.csv",
        ["serial", "device_type", "manufacturer", "model", "line"],
        [[s, "thermostat", "Acme", "TH-200", "line-1"] for s in serials],
    )
    comps = write_csv(
        tmp_path / "components.csv",
        ["serial", "component_type", "component_spec", "component_serial", "supplier", "lot"],
        [
            [serials[0], "mcu", "STM32L4", "MCU-SECRET-1", "ST", "L42"],
            [serials[0], "battery", "CR2032", "", "", ""],
            [serials[1], "mcu", "STM32L4", "", "ST", ""],
        ],
    )
    out = ok_json(
        run_cli("register", str(manifest), "--components", str(comps), "--batch", "n1", "--json")
    )
    assert (out["registered"], out["components"]) == (3, 3)
    return Fleet(registry, load_keyring(keyring_path), run_cli, serials)


def chained(fleet: Fleet) -> tuple[str, str]:
    """Two devices with four log entries each: #1 activated, #2-#4 logged."""
    a, b = fleet.serials[0], fleet.serials[1]
    for s in (a, b):
        fleet.activate(s, f"owner-of-{s}")
        fleet.log(s, "firmware_update", version="2.4.1")
        fleet.log(s, "reboot")
        fleet.log(s, "returned", rma="RMA-7781")
    return a, b


# -- history -----------------------------------------------------------------------------------


def test_history_has_device_components_pairing_events_and_actions(fleet: Fleet) -> None:
    s = fleet.serials[0]
    did = fleet.did(s)
    fleet.activate(s, "alice@example.com", ip="198.51.100.1", user_agent="UA-1", fingerprint="f1")
    with pytest.raises(ActivationRejected, match="already_activated"):
        fleet.activate(s, "bob@example.com", ip="198.51.100.2", user_agent="UA-2")
    fleet.log(s, "firmware_update", version="2.4.1")
    h = fleet.history(did)
    assert set(h) == HISTORY_KEYS
    dev = h["device"]
    assert set(dev) == {
        "device_id",
        "device_type",
        "manufacturer",
        "model",
        "manufactured_at",
        "line",
        "batch",
        "key_id",
        "status",
        "registered_at",
        "expires_at",
        "activated_at",
        "user",
        "revoked_at",
        "revoked_by",
        "revoked_reason",
        "actions_total",
        "pairing_events_total",
    }
    assert {k: dev[k] for k in ("device_id", "device_type", "manufacturer", "model", "line")} == {
        "device_id": did,
        "device_type": "thermostat",
        "manufacturer": "Acme",
        "model": "TH-200",
        "line": "line-1",
    }
    assert (dev["batch"], dev["key_id"], dev["status"], dev["user"]) == (
        "n1",
        1,
        "activated",
        "alice@example.com",
    )
    assert (dev["revoked_at"], dev["revoked_by"], dev["revoked_reason"]) == (None, None, None)
    assert (dev["actions_total"], dev["pairing_events_total"]) == (2, 2)
    assert datetime.fromisoformat(dev["registered_at"]) <= datetime.fromisoformat(
        dev["activated_at"]
    )
    assert h["components"] == [
        {
            "component_type": "mcu",
            "component_spec": "STM32L4",
            "supplier": "ST",
            "lot": "L42",
            "has_component_serial": True,
        },
        {
            "component_type": "battery",
            "component_spec": "CR2032",
            "supplier": None,
            "lot": None,
            "has_component_serial": False,
        },
    ]
    assert [
        (e["result"], e["reason"], e["user"], e["ip"], e["user_agent"], e["fingerprint"])
        for e in h["pairing_events"]
    ] == [
        ("accepted", None, "alice@example.com", "198.51.100.1", "UA-1", "f1"),
        ("rejected", "already_activated", "bob@example.com", "198.51.100.2", "UA-2", None),
    ]
    assert [(a["seq"], a["action_type"], a["metadata"], a["actor"]) for a in h["actions"]] == [
        (1, "activated", {"user": "alice@example.com"}, "alice@example.com"),
        (2, "firmware_update", {"version": "2.4.1"}, None),
    ]
    stamps = [a["occurred_at"] for a in h["actions"]]
    assert stamps == sorted(stamps, key=datetime.fromisoformat)
    assert "MCU-SECRET-1" not in json.dumps(h)
    assert fleet.serials[0] not in json.dumps(h)


def test_history_of_a_pending_device_is_empty_but_complete(fleet: Fleet) -> None:
    h = fleet.history(fleet.did(fleet.serials[2]))
    assert (h["device"]["status"], h["device"]["activated_at"], h["device"]["user"]) == (
        "pending",
        None,
        None,
    )
    assert (h["components"], h["pairing_events"], h["actions"]) == ([], [], [])


def test_history_limit_shows_the_newest_actions_oldest_first(fleet: Fleet) -> None:
    s = fleet.serials[0]
    fleet.activate(s)
    for n in range(2, 7):
        fleet.log(s, f"step{n}")
    h = fleet.history(fleet.did(s), "--limit", "2")
    assert [(a["seq"], a["action_type"]) for a in h["actions"]] == [(5, "step5"), (6, "step6")]
    assert h["device"]["actions_total"] == 6
    full = fleet.history(fleet.did(s))
    assert [a["seq"] for a in full["actions"]] == [1, 2, 3, 4, 5, 6]
    assert full["actions"][-2:] == h["actions"]


def test_history_limit_applies_to_pairing_events_too(fleet: Fleet) -> None:
    s = fleet.serials[0]
    fleet.activate(s, "u1")
    for n in (2, 3, 4):
        with pytest.raises(ActivationRejected, match="already_activated"):
            fleet.activate(s, f"u{n}")
    h = fleet.history(fleet.did(s), "--limit", "2")
    assert [e["user"] for e in h["pairing_events"]] == ["u3", "u4"]


def test_history_text_lists_pairing_and_actions(fleet: Fleet) -> None:
    s = fleet.serials[0]
    fleet.activate(s, "alice", ip="198.51.100.1")
    fleet.log(s, "firmware_update", version="2.4.1")
    result = fleet.run_cli("history", fleet.did(s))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Device {fleet.did(s)}  thermostat TH-200 by Acme"
    assert "Components (2 of 2):" in lines
    assert "  mcu: STM32L4 (ST, lot L42)" in lines
    assert "Pairing events (1 of 1):" in lines
    assert "Actions (2 of 2):" in lines
    assert lines[-1].endswith("  firmware_update  version=2.4.1  actor=- ip=-")
    assert lines[-1].startswith("  #2 ")


def test_serial_finds_the_same_device_for_history_log_and_revoke(fleet: Fleet) -> None:
    s = fleet.serials[1]
    did = fleet.did(s)
    assert fleet.history("--serial", s)["device"]["device_id"] == did
    assert fleet.history("--serial", f"  {s} ") == fleet.history(did)
    logged = ok_json(fleet.run_cli("log", "--serial", s, "returned", "--meta", "rma=R1", "--json"))
    assert (logged["device_id"], logged["seq"], logged["action_type"]) == (did, 1, "returned")
    revoked = ok_json(fleet.run_cli("revoke", "--serial", s, "--reason", "lost", "--json"))
    assert revoked == {
        "device_id": did,
        "status": "revoked",
        "revoked_by": operator(),
        "reason": "lost",
    }
    h = fleet.history(did)
    assert [(a["action_type"], a["metadata"]) for a in h["actions"]] == [
        ("returned", {"rma": "R1"}),
        ("revoked", {"reason": "lost"}),
    ]
    for other in (fleet.serials[0], fleet.serials[2]):
        assert fleet.device(other)["status"] == "pending"
        assert fleet.device(other)["action_count"] == 0


def test_unknown_serial_or_device_id_is_a_one_line_error(fleet: Fleet) -> None:
    for args in (
        ("history", "--serial", "NO-SUCH-SERIAL"),
        ("log", "--serial", "NO-SUCH-SERIAL", "reboot"),
        ("revoke", "--serial", "NO-SUCH-SERIAL", "--reason", "x"),
    ):
        result = fleet.run_cli(*args)
        assert result.exit_code == 1
        assert result.stderr == "Error: no device registered with that serial\n"
    result = fleet.run_cli("history", "0000000000000000")
    assert result.exit_code == 1
    assert result.stderr == "Error: no device with id '0000000000000000'\n"
    both = fleet.run_cli("history", fleet.did(fleet.serials[0]), "--serial", fleet.serials[0])
    assert both.exit_code == 1
    assert both.stderr == "Error: give either a DEVICE_ID or --serial SERIAL\n"


# -- revoke ------------------------------------------------------------------------------------


def test_revoke_shows_in_history_who_revoked_and_why(fleet: Fleet) -> None:
    s = fleet.serials[0]
    did = fleet.did(s)
    fleet.activate(s)
    result = fleet.run_cli("revoke", did, "--reason", "stolen from warehouse 3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"Device {did} revoked by {operator()}: stolen from warehouse 3\n"
    h = fleet.history(did)
    dev = h["device"]
    assert (dev["status"], dev["revoked_by"], dev["revoked_reason"]) == (
        "revoked",
        operator(),
        "stolen from warehouse 3",
    )
    assert dev["revoked_at"] is not None
    assert h["actions"][-1] | {"id": 0, "occurred_at": ""} == {
        "id": 0,
        "seq": 2,
        "occurred_at": "",
        "action_type": "revoked",
        "metadata": {"reason": "stolen from warehouse 3"},
        "ip": None,
        "actor": operator(),
    }
    text_out = fleet.run_cli("history", did).stdout
    assert f"by {operator()}: stolen from warehouse 3" in text_out


def test_revoking_twice_or_without_a_reason_is_refused(fleet: Fleet) -> None:
    did = fleet.did(fleet.serials[0])
    blank = fleet.run_cli("revoke", did, "--reason", "   ")
    assert blank.exit_code == 1
    assert blank.stderr == "Error: --reason must say why the device is revoked\n"
    assert fleet.device(fleet.serials[0])["status"] == "pending"
    assert fleet.run_cli("revoke", did, "--reason", "lost").exit_code == 0
    again = fleet.run_cli("revoke", did, "--reason", "lost again")
    assert again.exit_code == 1
    assert again.stderr == f"Error: device {did} is already revoked\n"
    assert [a["action_type"] for a in fleet.history(did)["actions"]] == ["revoked"]


def test_unrevoke_gives_the_device_back_its_state_and_keeps_both_in_history(fleet: Fleet) -> None:
    active, pending = fleet.serials[0], fleet.serials[1]
    fleet.activate(active)
    for s in (active, pending):
        assert fleet.run_cli("revoke", fleet.did(s), "--reason", "stolen").exit_code == 0
    result = fleet.run_cli("unrevoke", fleet.did(active), "--reason", "found", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "device_id": fleet.did(active),
        "status": "activated",
        "unrevoked_by": operator(),
        "reason": "found",
    }
    h = fleet.history(fleet.did(active))
    assert h["device"]["status"] == "activated" and h["device"]["revoked_at"] is None
    assert h["device"]["user"] is not None
    assert [a["action_type"] for a in h["actions"]][-2:] == ["revoked", "unrevoked"]
    assert h["actions"][-1]["metadata"]["revoked_reason"] == "stolen"
    text_out = fleet.run_cli("unrevoke", fleet.did(pending), "--reason", "arrived").stdout
    assert (
        text_out
        == f"Device {fleet.did(pending)} un-revoked by {operator()} (now pending): arrived\n"
    )
    again = fleet.run_cli("unrevoke", fleet.did(pending), "--reason", "twice")
    assert again.exit_code == 1
    assert again.stderr == f"Error: device {fleet.did(pending)} is not revoked\n"
    blank = fleet.run_cli("unrevoke", fleet.did(pending), "--reason", " ")
    assert blank.stderr == "Error: --reason must say why the revocation is undone\n"
    assert fleet.run_cli("audit", "verify").exit_code == 0


# -- log ---------------------------------------------------------------------------------------


def test_log_returns_the_action_id_and_the_action_shows_in_history(fleet: Fleet) -> None:
    s = fleet.serials[0]
    did = fleet.did(s)
    fleet.activate(s)
    out = ok_json(
        fleet.run_cli(
            "log",
            did,
            "firmware_update",
            "--meta",
            "version=2.4.1",
            "--meta",
            "channel=beta",
            "--ip",
            "203.0.113.9",
            "--json",
        )
    )
    assert set(out) == {"device_id", "action_id", "seq", "action_type"}
    assert (out["device_id"], out["seq"], out["action_type"]) == (did, 2, "firmware_update")
    assert isinstance(out["action_id"], int)
    last = fleet.history(did)["actions"][-1]
    assert last | {"occurred_at": ""} == {
        "id": out["action_id"],
        "seq": 2,
        "occurred_at": "",
        "action_type": "firmware_update",
        "metadata": {"channel": "beta", "version": "2.4.1"},
        "ip": "203.0.113.9",
        "actor": operator(),
    }
    text_out = fleet.run_cli("log", did, "reboot")
    assert text_out.stdout == f"Logged reboot for device {did} (entry #3).\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("Firmware Update",),
            1,
            "Error: action type 'Firmware Update': use 1-64 lower-case letters, digits, '_', "
            "'.', ':' or '-', starting with a letter\n",
        ),
        (
            ("reboot", "--meta", "novalue"),
            2,
            "Error: Invalid value for --meta: 'novalue' is not KEY=VALUE\n",
        ),
    ],
)
def test_log_refuses_bad_action_types_and_metadata(
    fleet: Fleet, args: tuple[str, ...], code: int, message: str
) -> None:
    result = fleet.run_cli("log", fleet.did(fleet.serials[0]), *args)
    assert result.exit_code == code
    assert result.stderr.endswith(message)
    assert fleet.device(fleet.serials[0])["action_count"] == 0


# -- the tamper-evident log ----------------------------------------------------------------------


def test_audit_verify_passes_on_an_intact_log(fleet: Fleet) -> None:
    chained(fleet)
    fleet.run_cli("revoke", fleet.did(fleet.serials[2]), "--reason", "scrapped")
    result = fleet.audit()
    assert result.exit_code == 0, result.stdout
    assert result.stdout == (
        "3 devices, 9 entries, 2 pairing events checked: all chains and seals intact\n"
    )
    assert ok_json(fleet.audit("--json")) == {
        "ok": True,
        "devices_checked": 3,
        "entries_checked": 9,
        "pairing_events_checked": 2,
        "checkpoint": None,
        "problems": [],
    }


def test_audit_verify_on_an_empty_log_passes(fleet: Fleet) -> None:
    result = fleet.audit()
    assert (result.exit_code, result.stdout) == (
        0,
        "3 devices, 0 entries, 0 pairing events checked: all chains and seals intact\n",
    )


TAMPERED = {
    "metadata_json": '{"version":"9.9.9"}',
    "action_type": "reboot",
    "ip": "10.0.0.1",
    "actor": "mallory",
    "occurred_at": datetime(2020, 1, 1),
}


def test_an_updated_entry_is_detected_and_named(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    did, pk, row_id = fleet.did(a), fleet.device(a)["id"], fleet.entry_id(a, 2)
    where = "WHERE device_pk = :pk AND seq = 2"
    for column, value in TAMPERED.items():
        with fleet.registry.engine.connect() as conn:
            original = conn.execute(
                text(f"SELECT {column} FROM device_action_log {where}"), {"pk": pk}
            ).scalar_one()
        set_to = f"UPDATE device_action_log SET {column} = :v {where}"
        assert fleet.sql(set_to, v=value, pk=pk) == 1
        result = fleet.audit()
        assert result.exit_code == 1, column
        assert result.stdout == (
            f"BROKEN device {did} entry #2 (row id {row_id}): "
            "content changed after it was written\n"
            "3 devices, 8 entries, 2 pairing events checked: 1 broken\n"
        ), column
        fleet.sql(set_to, v=original, pk=pk)  # put back: the chain is whole again
        assert fleet.audit().exit_code == 0, column


def test_an_updated_entry_with_a_recomputed_unkeyed_hash_is_still_detected(
    fleet: Fleet,
) -> None:
    a, _b = chained(fleet)
    forged = hashlib.sha256(b'{"version":"9.9.9"}').hexdigest()
    fleet.sql(
        "UPDATE device_action_log SET metadata_json = :m, entry_hash = :h "
        "WHERE device_pk = :pk AND seq = 4",
        m='{"rma":"RMA-0000"}',
        h=forged,
        pk=fleet.device(a)["id"],
    )
    fleet.sql(
        "UPDATE devices SET action_head = :h WHERE id = :pk", h=forged, pk=fleet.device(a)["id"]
    )
    report = ok_json_fail(fleet.audit("--json"))
    assert report["problems"] == [
        seal_broken(fleet.did(a)),  # the head is part of the sealed state
        {
            "device_id": fleet.did(a),
            "chain": "actions",
            "seq": 4,
            "entry_id": fleet.entry_id(a, 4),
            "problem": "content changed after it was written",
        },
    ]


def test_a_deleted_middle_entry_is_detected_and_named(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    did = fleet.did(a)
    assert (
        fleet.sql(
            "DELETE FROM device_action_log WHERE device_pk = :pk AND seq = 2",
            pk=fleet.device(a)["id"],
        )
        == 1
    )
    result = fleet.audit()
    assert result.exit_code == 1
    assert result.stdout == (
        f"BROKEN device {did} entry #2: entry missing (deleted?): the log jumps to #3\n"
        "3 devices, 7 entries, 2 pairing events checked: 1 broken\n"
    )


def test_a_deleted_first_entry_is_detected_and_named(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    pk = fleet.device(a)["id"]
    fleet.sql("DELETE FROM device_action_log WHERE device_pk = :pk AND seq = 1", pk=pk)
    report = ok_json_fail(fleet.audit("--json"))
    assert [(p["device_id"], p["seq"]) for p in report["problems"]] == [(fleet.did(a), 1)]


def test_a_deleted_and_renumbered_entry_is_detected_and_named(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    pk = fleet.device(a)["id"]
    fleet.sql("DELETE FROM device_action_log WHERE device_pk = :pk AND seq = 2", pk=pk)
    for seq in (3, 4):
        fleet.sql(
            "UPDATE device_action_log SET seq = :new WHERE device_pk = :pk AND seq = :old",
            new=seq - 1,
            old=seq,
            pk=pk,
        )
    fleet.sql("UPDATE devices SET action_count = 3 WHERE id = :pk", pk=pk)
    report = ok_json_fail(fleet.audit("--json"))
    assert report["problems"] == [
        seal_broken(fleet.did(a)),
        {
            "device_id": fleet.did(a),
            "chain": "actions",
            "seq": 2,
            "entry_id": fleet.entry_id(a, 2),
            "problem": "link to the previous entry is broken (entry deleted or replaced)",
        },
    ]


def test_a_deleted_newest_entry_is_detected_and_named(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    did = fleet.did(a)
    fleet.sql(
        "DELETE FROM device_action_log WHERE device_pk = :pk AND seq = 4", pk=fleet.device(a)["id"]
    )
    result = fleet.audit()
    assert result.exit_code == 1
    assert result.stdout == (
        f"BROKEN device {did} entry #4: the device records 4 entries, the log holds 3 "
        "(newest entries deleted or head altered)\n"
        "3 devices, 7 entries, 2 pairing events checked: 1 broken\n"
    )


def test_an_inserted_entry_is_detected_and_named(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    dev = fleet.device(a)
    # The attacker links the forged entry to the newest real one, as the chain expects.
    with fleet.registry.engine.connect() as conn:
        last_hash = conn.execute(
            text("SELECT entry_hash FROM device_action_log WHERE device_pk = :pk AND seq = 4"),
            {"pk": dev["id"]},
        ).scalar_one()
    fleet.sql(
        "INSERT INTO device_action_log (device_pk, seq, occurred_at, action_type, metadata_json,"
        " ip, actor, prev_hash, entry_hash) VALUES (:pk, 5, :at, 'reboot', '{}', NULL, NULL,"
        " :prev, :h)",
        pk=dev["id"],
        at=datetime(2026, 1, 1),
        prev=last_hash,
        h="0" * 64,
    )
    report = ok_json_fail(fleet.audit("--json"))
    assert [(p["device_id"], p["seq"], p["problem"]) for p in report["problems"]] == [
        (fleet.did(a), 5, "content changed after it was written")
    ]


def test_only_the_first_broken_entry_of_each_device_is_named(fleet: Fleet) -> None:
    a, b = chained(fleet)
    pa, pb = fleet.device(a)["id"], fleet.device(b)["id"]
    fleet.sql("UPDATE device_action_log SET ip = 'x' WHERE device_pk = :pk AND seq >= 2", pk=pa)
    fleet.sql("DELETE FROM device_action_log WHERE device_pk = :pk AND seq = 3", pk=pb)
    report = ok_json_fail(fleet.audit("--json"))
    assert [(p["device_id"], p["seq"]) for p in report["problems"]] == [
        (fleet.did(a), 2),
        (fleet.did(b), 3),
    ]
    assert (report["ok"], report["devices_checked"], report["entries_checked"]) == (False, 3, 7)


def test_audit_verify_device_id_checks_just_that_device(fleet: Fleet) -> None:
    a, b = chained(fleet)
    fleet.sql(
        "UPDATE device_action_log SET metadata_json = :m WHERE device_pk = :pk AND seq = 3",
        m='{"x":1}',
        pk=fleet.device(a)["id"],
    )
    clean = fleet.audit(fleet.did(b))
    assert (clean.exit_code, clean.stdout) == (
        0,
        "1 device, 4 entries, 1 pairing event checked: all chains and seals intact\n",
    )
    broken = fleet.audit(fleet.did(a), "--json")
    report = ok_json_fail(broken)
    assert (report["devices_checked"], report["entries_checked"]) == (1, 4)
    assert [(p["device_id"], p["seq"]) for p in report["problems"]] == [(fleet.did(a), 3)]
    pending = fleet.audit(fleet.did(fleet.serials[2]))
    assert (pending.exit_code, pending.stdout) == (
        0,
        "1 device, 0 entries, 0 pairing events checked: all chains and seals intact\n",
    )


def test_audit_verify_accepts_an_upper_case_device_id(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    result = fleet.audit(fleet.did(a).upper())
    assert (result.exit_code, result.stdout) == (
        0,
        "1 device, 4 entries, 1 pairing event checked: all chains and seals intact\n",
    )


def test_audit_verify_of_an_unknown_device_is_an_error(fleet: Fleet) -> None:
    result = fleet.audit("0000000000000000")
    assert result.exit_code == 1
    assert result.stderr == "Error: no device with id '0000000000000000'\n"


def test_a_log_checked_with_another_keyring_is_reported_broken(
    fleet: Fleet, tmp_path: Path
) -> None:
    chained(fleet)
    stranger = init_keyring(tmp_path / "other" / "keyring.json")
    report = verify_chains(fleet.registry, stranger)
    assert not report.ok
    # Every seal, and the first entry of every chain: 3 devices, 2 of them activated.
    assert sorted((p.chain, p.seq) for p in report.problems) == [
        ("actions", 1),
        ("actions", 1),
        ("pairing", 1),
        ("pairing", 1),
        ("seal", None),
        ("seal", None),
        ("seal", None),
    ]
    assert {p.problem for p in report.problems if p.chain != "seal"} == {
        "content changed after it was written"
    }


def test_deleting_the_newest_entry_and_rewinding_the_head_is_detected(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    pk = fleet.device(a)["id"]
    # Without the keyring, the best an attacker can do is point the head at entry #3's hash.
    fleet.sql("DELETE FROM device_action_log WHERE device_pk = :pk AND seq = 4", pk=pk)
    fleet.sql(
        "UPDATE devices SET action_count = 3, action_head = (SELECT entry_hash FROM"
        " device_action_log WHERE device_pk = :pk AND seq = 3) WHERE id = :pk",
        pk=pk,
    )
    report = ok_json_fail(fleet.audit("--json"))
    assert [(p["device_id"], p["seq"]) for p in report["problems"]] == [
        (fleet.did(a), None),  # the seal: count and head changed by hand
        (fleet.did(a), 4),
    ]
    assert "sealed chain head" in report["problems"][1]["problem"]


def test_emptying_an_activated_devices_log_is_detected(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    pk = fleet.device(a)["id"]
    fleet.sql("DELETE FROM device_action_log WHERE device_pk = :pk", pk=pk)
    fleet.sql("UPDATE devices SET action_count = 0, action_head = NULL WHERE id = :pk", pk=pk)
    report = ok_json_fail(fleet.audit("--json"))
    assert [(p["device_id"], p["seq"], p["problem"]) for p in report["problems"][1:]] == [
        (fleet.did(a), 1, "the device is activated but its action log is empty")
    ]
    assert report["problems"][0] == seal_broken(fleet.did(a))


def test_appending_to_a_broken_chain_is_refused(fleet: Fleet) -> None:
    a, _b = chained(fleet)
    pk = fleet.device(a)["id"]
    fleet.sql("DELETE FROM device_action_log WHERE device_pk = :pk AND seq = 4", pk=pk)
    with pytest.raises(ProvisionError, match=r"broken at entry #4; nothing appended"):
        fleet.log(a, "reboot")
