"""`provision stats`: every figure of a registry built with known numbers, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision.activation import ActivationRejected, activate
from provision.audit import log_action, revoke
from provision.keys import Keyring, load_keyring
from provision.payload import payload_url, sign_token
from provision.pipeline import register_batch
from provision.registry import Registry
from provision.serials import device_id
from provision.stats import fleet_stats
from tests.helpers import with_payload, write_csv

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday: ISO week 2026-W45
T1 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # ISO week 2026-W47
NOW = datetime(2026, 12, 1, tzinfo=UTC)
BASE = "http://localhost:5001"


class Known:
    """Batch a: A1..A4 on T0 (A1 activated a day later, A2 three days, A4 revoked); batch b:
    B1, B2 on T1 (B1 activated ten days later). Scans, actions and junk as the test says."""

    def __init__(self, registry: Registry, keyring_path: Path, tmp: Path) -> None:
        self.registry = registry
        self.keyring: Keyring = load_keyring(keyring_path)
        header = ["serial", "device_type", "model", "line"]
        a = write_csv(
            tmp / "a.csv", header, [[f"A{i}", "thermostat", "TH-200", "l1"] for i in (1, 2, 3, 4)]
        )
        b = write_csv(tmp / "b.csv", header, [[f"B{i}", "sensor", "S1", "l2"] for i in (1, 2)])
        register_batch(registry, self.keyring, a, batch="a", now=T0)
        register_batch(registry, self.keyring, b, batch="b", now=T1)
        self.activate("A1", T0 + timedelta(days=1))
        self.activate("A2", T0 + timedelta(days=3))
        self.activate("B1", T1 + timedelta(days=10))
        with pytest.raises(ActivationRejected):  # a second scan of A1: already_activated
            self.activate("A1", T0 + timedelta(days=5))
        dev = self.device("A3")  # a valid tag under another expiry: forged, on A3's chain
        key = self.keyring.active
        assert key.secret is not None
        superseded = sign_token(
            key.id, key.secret, dev.device_id, int(dev.expires_at.timestamp()) + 1
        )
        with pytest.raises(ActivationRejected):
            activate(registry, self.keyring, payload_url(BASE, superseded), "eve", now=T0)
        for junk in ("not a code", "HTTP://X/A/nope"):  # unattached: named no device
            with pytest.raises(ActivationRejected):
                activate(registry, self.keyring, junk, "eve", now=T0)
        revoke(registry, self.keyring, self.device("A4"), "lost in transit", "ops", now=T0)
        self.log("A1", "reboot", NOW - timedelta(days=2))
        self.log("A1", "reboot", NOW - timedelta(days=10))
        self.log("A2", "config", NOW - timedelta(days=20))
        self.log("B1", "reboot", NOW - timedelta(days=1))
        self.log("B1", "sync", NOW - timedelta(days=40))  # outside the 30 days

    def device(self, serial: str) -> Any:
        dev = self.registry.devices.get(device_id(self.keyring.pepper, serial))
        assert dev is not None
        return dev

    def activate(self, serial: str, when: datetime) -> None:
        url = payload_url(BASE, with_payload(self.keyring, self.device(serial))["payload"])
        activate(self.registry, self.keyring, url, f"{serial.lower()}@example.com", now=when)

    def log(self, serial: str, action: str, when: datetime) -> None:
        log_action(self.registry, self.keyring, self.device(serial), action, now=when)


@pytest.fixture
def known(registry: Registry, keyring_path: Path, tmp_path: Path) -> Known:
    return Known(registry, keyring_path, tmp_path)


A = {
    "registered": 4,
    "activated": 2,
    "revoked": 1,
    "activation_rate": 0.5,
    "days_to_activation": {"p50": 2.0, "p90": 2.8},
    "scans": {
        "by_result": {"accepted": 2, "rejected": 2},
        "by_reason": {"already_activated": 1, "forged": 1},
    },
    "usage": {
        "active_7d": 1,
        "active_30d": 2,
        "actions_30d": 3,
        "actions_per_active_device_per_day": 0.05,
        "top_action_types": [
            {"action_type": "reboot", "actions": 2},
            {"action_type": "config", "actions": 1},
        ],
    },
}
B = {
    "registered": 2,
    "activated": 1,
    "revoked": 0,
    "activation_rate": 0.5,
    "days_to_activation": {"p50": 10.0, "p90": 10.0},
    "scans": {"by_result": {"accepted": 1}, "by_reason": {}},
    "usage": {
        "active_7d": 1,
        "active_30d": 1,
        "actions_30d": 1,
        "actions_per_active_device_per_day": 0.0333,
        "top_action_types": [{"action_type": "reboot", "actions": 1}],
    },
}
ALL = {
    "registered": 6,
    "activated": 3,
    "revoked": 1,
    "activation_rate": 0.5,
    "days_to_activation": {"p50": 3.0, "p90": 8.6},
    "scans": {
        "by_result": {"accepted": 3, "rejected": 2},
        "by_reason": {"already_activated": 1, "forged": 1},
    },
    "usage": {
        "active_7d": 2,
        "active_30d": 3,
        "actions_30d": 4,
        "actions_per_active_device_per_day": 0.0444,
        "top_action_types": [
            {"action_type": "reboot", "actions": 3},
            {"action_type": "config", "actions": 1},
        ],
    },
}


def figures(stats: Any) -> dict[str, Any]:
    data = stats.to_json()
    return {g["group"]: {k: v for k, v in g.items() if k != "group"} for g in data["groups"]}


@pytest.mark.parametrize(
    "by, expected",
    [
        ("batch", {"a": A, "b": B}),
        ("model", {"TH-200": A, "S1": B}),
        ("type", {"thermostat": A, "sensor": B}),
        ("line", {"l1": A, "l2": B}),
        ("manufacturer", {"(none)": ALL}),
        ("week", {"2026-W45": A, "2026-W47": B}),
        ("month", {"2026-11": ALL}),
    ],
)
def test_every_figure_of_every_grouping_is_exact(known: Known, by: str, expected: dict) -> None:
    stats = fleet_stats(known.registry, by, now=NOW)
    assert figures(stats) == expected
    totals = stats.to_json()["totals"]
    assert {k: v for k, v in totals.items() if k != "group"} == ALL
    assert stats.to_json()["unattached_scans"] == {"malformed": 2}


def test_the_period_selects_devices_by_registration(known: Known) -> None:
    later = fleet_stats(known.registry, "batch", since=datetime(2026, 11, 10).date(), now=NOW)
    assert figures(later) == {"b": B}
    earlier = fleet_stats(known.registry, "batch", until=datetime(2026, 11, 2).date(), now=NOW)
    assert figures(earlier) == {"a": A}  # an until-date includes its whole day
