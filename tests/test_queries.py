"""Ask the registry: batches, devices (filtered, keyset-paged, streamed), and find."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result

from provision.activation import activate
from provision.keys import Keyring, load_keyring
from provision.payload import payload_url, sign_token
from provision.pipeline import register_batch
from provision.registry import Registry
from provision.serials import device_id
from tests.conftest import RunCLI
from tests.helpers import with_payload, write_csv

BASE = "http://localhost:5001"


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class Fleet:
    """Two batches of devices with components; some activated, one revoked."""

    def __init__(self, registry: Registry, keyring_path: Path, tmp: Path) -> None:
        self.registry = registry
        self.keyring_path = keyring_path
        keyring = self.keyring
        rows = [
            ["TH-1", "thermostat", "Acme", "TH-200", "line-1"],
            ["TH-2", "thermostat", "Acme", "TH-200", "line-2"],
            ["TH-3", "thermostat", "Acme", "=cmd|calc", "line-1"],
            ["GW-1", "gateway", "Acme", "GW-9", "line-2"],
        ]
        a = write_csv(
            tmp / "a.csv", ["serial", "device_type", "manufacturer", "model", "line"], rows
        )
        comps = write_csv(
            tmp / "c.csv",
            ["serial", "component_type", "component_spec", "component_serial", "supplier", "lot"],
            [
                ["TH-1", "mcu", "STM32", "MCU-0001", "ST", "L42"],
                ["TH-2", "mcu", "STM32", "MCU-0002", "ST", "L42"],
            ],
        )
        register_batch(registry, keyring, a, components_path=comps, batch="a")
        b = write_csv(
            tmp / "b.csv",
            ["serial", "device_type", "model"],
            [[f"S-{i}", "sensor", "S1"] for i in range(6)],
        )
        register_batch(registry, keyring, b, batch="b")
        self.when = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
        self.activate("TH-1", "Alice@Example.com", self.when)
        self.activate("GW-1", "bob@example.com", self.when + timedelta(days=10))
        self.activate("S-0", "alice@example.com", self.when - timedelta(days=10))

    @property
    def keyring(self) -> Keyring:
        return load_keyring(self.keyring_path)

    def did(self, serial: str) -> str:
        return device_id(self.keyring.pepper, serial)

    def payload(self, serial: str) -> str:
        dev = self.registry.devices.get(self.did(serial))
        return payload_url(BASE, with_payload(self.keyring, dev)["payload"])

    def activate(self, serial: str, user: str, when: datetime) -> None:
        activate(self.registry, self.keyring, self.payload(serial), user, now=when)


@pytest.fixture
def fleet(registry: Registry, keyring_path: Path, tmp_path: Path) -> Fleet:
    return Fleet(registry, keyring_path, tmp_path)


# -- batches ------------------------------------------------------------------------------


def test_batches_lists_counts_by_status_rejects_labels_and_keys(
    fleet: Fleet, run_cli: RunCLI, tmp_path: Path
) -> None:
    assert run_cli("labels", "a").exit_code == 0
    bad = write_csv(
        tmp_path / "bad.csv", ["serial", "device_type"], [["OK-9", "x"], ["BAD 9", "x"]]
    )
    ok_json(run_cli("keys", "rotate", "--json"))
    r = run_cli("register", str(bad), "--batch", "c", "--reject-file", str(tmp_path / "r.csv"))
    assert r.exit_code == 4
    data = ok_json(run_cli("batches", "--json"))["batches"]
    assert [b["batch"] for b in data] == ["a", "b", "c"]
    a, b, c = data
    assert (a["devices"], a["by_status"]) == (4, {"pending": 2, "activated": 2, "revoked": 0})
    assert (a["label_revision"], a["key_ids"], a["rejected_rows"]) == (1, [1], 0)
    assert (b["devices"], b["by_status"]["activated"], b["label_revision"]) == (6, 1, None)
    assert (c["devices"], c["rejected_rows"], c["key_ids"]) == (1, 1, [2])
    shown = ok_json(run_cli("batches", "show", "a", "--json"))
    assert shown == a
    text = run_cli("batches").stdout.splitlines()
    assert text[0].startswith("BATCH") and text[1].startswith("a ")
    missing = run_cli("batches", "show", "nope")
    assert missing.exit_code == 1 and "no batch named 'nope'" in missing.stderr


# -- devices ------------------------------------------------------------------------------


def device_ids(result: Result) -> list[str]:
    return [d["device_id"] for d in ok_json(result)["devices"]]


@pytest.mark.parametrize(
    "args, serials",
    [
        (["--batch", "a"], ["TH-1", "TH-2", "TH-3", "GW-1"]),
        (["--status", "activated"], ["TH-1", "GW-1", "S-0"]),
        (["--type", "gateway"], ["GW-1"]),
        (["--model", "TH-200"], ["TH-1", "TH-2"]),
        (["--line", "line-2"], ["TH-2", "GW-1"]),
        (["--user", "ALICE@example.COM"], ["TH-1", "S-0"]),
        (["--activated-since", "2026-11-15"], ["TH-1", "GW-1"]),
        (["--activated-until", "2026-11-15"], ["TH-1", "S-0"]),
        (["--activated-since", "2026-11-16", "--activated-until", "2026-11-30"], ["GW-1"]),
        (["--batch", "a", "--status", "pending", "--line", "line-1"], ["TH-3"]),
        (["--batch", "nope"], []),
    ],
)
def test_devices_filters(
    fleet: Fleet, run_cli: RunCLI, args: list[str], serials: list[str]
) -> None:
    assert device_ids(run_cli("devices", *args, "--format", "json")) == [
        fleet.did(s) for s in serials
    ]


def test_devices_pages_by_cursor_in_a_stable_order(fleet: Fleet, run_cli: RunCLI) -> None:
    everything = device_ids(run_cli("devices", "--format", "json", "--limit", "100"))
    assert len(everything) == 10
    seen: list[str] = []
    cursor = None
    while True:
        args = ["devices", "--format", "json", "--limit", "3"] + (
            ["--after", cursor] if cursor else []
        )
        page = ok_json(run_cli(*args))
        seen += [d["device_id"] for d in page["devices"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == everything
    bad = run_cli("devices", "--after", "not-a-cursor")
    assert bad.exit_code == 2 and "--after 'not-a-cursor': not a cursor" in bad.stderr


def test_devices_csv_streams_every_row_formula_safe(fleet: Fleet, run_cli: RunCLI) -> None:
    result = run_cli("devices", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 10
    assert [r["model"] for r in rows if r["device_id"] == fleet.did("TH-3")] == ["'=cmd|calc"]
    assert {r["user"] for r in rows if r["user"]} == {
        "Alice@Example.com",
        "bob@example.com",
        "alice@example.com",
    }


def test_devices_listing_is_keyset_paged_in_the_library(fleet: Fleet) -> None:
    from provision.queries import DeviceFilter, iter_devices, list_devices

    first = list_devices(fleet.registry, DeviceFilter(), limit=4)
    second = list_devices(fleet.registry, DeviceFilter(), after=first.next_cursor, limit=4)
    assert [d.id for d in first.devices] + [d.id for d in second.devices] == [
        d.id for d in iter_devices(fleet.registry, DeviceFilter(), chunk=3)
    ][:8]


# -- find ---------------------------------------------------------------------------------


def hits(run_cli: RunCLI, text: str) -> list[tuple[str, str]]:
    return [
        (h["matched_on"], h["device_id"]) for h in ok_json(run_cli("find", text, "--json"))["hits"]
    ]


def test_find_by_device_id_prefix_and_as_printed(fleet: Fleet, run_cli: RunCLI) -> None:
    did = fleet.did("TH-2")
    assert hits(run_cli, did) == [("device_id", did)]
    assert hits(run_cli, f"ID {did.upper()}") == [("device_id", did)]
    assert ("device_id_prefix", did) in hits(run_cli, did[:8])


def test_find_by_qr_url_or_token_even_when_it_no_longer_verifies(
    fleet: Fleet, run_cli: RunCLI
) -> None:
    url = fleet.payload("TH-2")
    did = fleet.did("TH-2")
    assert hits(run_cli, url) == [("payload", did)]
    assert hits(run_cli, url.rsplit("/", 1)[1].lower()) == [("payload", did)]
    expired = sign_token(9, b"k" * 32, did, int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()))
    data = ok_json(run_cli("find", expired, "--json"))
    assert [(h["matched_on"], h["device_id"], h["detail"]) for h in data["hits"]] == [
        ("payload", did, "not valid: unknown_key")
    ]


def test_find_by_serial_with_the_case_hint(fleet: Fleet, run_cli: RunCLI) -> None:
    assert hits(run_cli, "TH-1") == [("serial", fleet.did("TH-1"))]
    data = ok_json(run_cli("find", "th-1", "--json"))
    assert [(h["matched_on"], h["detail"]) for h in data["hits"]] == [
        ("serial_variant", "did you mean 'TH-1'? (case or spaces differ)")
    ]


def test_find_by_user_in_any_case_and_by_component_serial(fleet: Fleet, run_cli: RunCLI) -> None:
    assert sorted(hits(run_cli, "alice@EXAMPLE.com")) == sorted(
        [("user", fleet.did("TH-1")), ("user", fleet.did("S-0"))]
    )
    assert hits(run_cli, "MCU-0002") == [("component_serial", fleet.did("TH-2"))]


def test_find_with_nothing_found_exits_1(fleet: Fleet, run_cli: RunCLI) -> None:
    result = run_cli("find", "nobody@nowhere.example")
    assert result.exit_code == 1
    assert result.stdout == "nothing found for 'nobody@nowhere.example'\n"


def test_component_serials_are_stored_hashed_and_encrypted_never_in_clear(fleet: Fleet) -> None:
    with fleet.registry.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM device_components")).all()
    assert len(rows) == 2
    flat = repr(rows)
    assert "MCU-0001" not in flat and "MCU-0002" not in flat
    assert all(r._mapping["component_serial_hash"] for r in rows)


def test_an_upgrade_hashes_the_component_serials_already_registered(
    db_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    from provision.errors import ConfigError
    from provision.migrations import downgrade_to
    from provision.queries import find

    keyring = load_keyring(keyring_path)
    registry = Registry(db_url, keyring=keyring)
    comps = write_csv(
        tmp_path / "c.csv",
        ["serial", "component_type", "component_spec", "component_serial"],
        [["OLD-1", "mcu", "STM32", "MCU-OLD-1"]],
    )
    serials = write_csv(tmp_path / "s.csv", ["serial", "device_type"], [["OLD-1", "sensor"]])
    register_batch(registry, keyring, serials, components_path=comps, batch="old")
    downgrade_to(registry.engine, "0003")  # back to the registry as revision 0003 had it
    registry.close()
    with pytest.raises(ConfigError, match=r"\(0004\) hashes the component serials"):
        Registry(db_url)
    upgraded = Registry(db_url, keyring=keyring)
    try:
        found = find(upgraded, keyring, "MCU-OLD-1")
        assert [(h.matched_on, h.device.device_id) for h in found.hits] == [
            ("component_serial", device_id(keyring.pepper, "OLD-1"))
        ]
    finally:
        upgraded.close()
