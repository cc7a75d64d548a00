"""Demo only: customers scan and activate a share of the demo devices, as they would.

`make demo` runs this after the nightly job so that `provision reconcile` has something to
find. Activation times are set relative to each device's shipping date (the library takes
`now=`), so the report looks the same whatever day the demo runs; the real CLI and web
service always use the current time.
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from provision.activation import activate
from provision.audit import log_action, revoke
from provision.config import DEFAULT_BASE_URL, DEFAULT_DB_URL
from provision.keys import load_keyring
from provision.payload import device_token, payload_url
from provision.registry import Registry
from provision.serials import device_id
from provision.states import DeviceStatus

HERE = Path(__file__).parent
LAST_DAY = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
PHONES = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 19_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 16; Pixel 10) AppleWebKit/537.36 Chrome/156.0 Mobile Safari",
)


def shipped_at(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main() -> None:
    keyring = load_keyring(os.environ.get("PROVISION_KEYRING"))
    registry = Registry(os.environ.get("PROVISION_DB_URL", DEFAULT_DB_URL))
    base_url = os.environ.get("PROVISION_BASE_URL", DEFAULT_BASE_URL)
    with (HERE / "serials.csv").open(newline="") as fh:
        serials = [row["serial"] for row in csv.DictReader(fh)]
    with (HERE / "shipments.csv").open(newline="") as fh:
        shipped: dict[str, datetime] = {}
        for row in csv.DictReader(fh):
            shipped.setdefault(row["serial"], shipped_at(row["shipped_at"]))

    plan: list[tuple[str, str, datetime]] = []  # (serial, what, when)
    for i, serial in enumerate(serials):
        when = shipped.get(serial)
        if when is not None and i % 20 in (3, 13) and i < 100:
            plan.append((serial, "activate", when - timedelta(days=2, hours=i % 7)))
        elif when is not None and i % 20 == 4 and i < 70:
            plan.append((serial, "revoke", when + timedelta(days=3)))
        elif when is not None and i % 5 in (0, 1, 2):
            delay = timedelta(days=(i * 7) % 45, hours=i % 11)
            plan.append((serial, "activate", min(when + delay, LAST_DAY)))
        elif when is None and i % 10 == 0:
            plan.append((serial, "activate", LAST_DAY - timedelta(days=i % 30)))

    done = {"activate": 0, "revoke": 0}
    for n, (serial, what, when) in enumerate(plan):
        device = registry.devices.get(device_id(keyring.pepper, serial))
        if device is None or device.status != DeviceStatus.PENDING:
            continue  # the demo ran before: nothing to do
        if what == "revoke":
            revoke(
                registry, keyring, device, "reported stolen in transit", "demo-security", now=when
            )
        else:
            # The label's payload, signed again as `labels` does: the registry never stores it.
            token = device_token(keyring, device.key_id, device.device_id, device.expires_at)
            url = payload_url(base_url, token)
            activate(
                registry,
                keyring,
                url,
                f"customer{n:03d}@example.com",
                ip=f"198.51.100.{n % 250 + 1}",
                user_agent=PHONES[n % 2],
                fingerprint=f"sha256:{n:064x}",
                now=when,
            )
            device = registry.devices.get(device.device_id)
            assert device is not None
            log_action(
                registry,
                keyring,
                device,
                "firmware_update",
                {"from": "1.0.0", "to": "1.2.0"},
                ip=f"198.51.100.{n % 250 + 1}",
                actor="device",
                now=when + timedelta(hours=1),
            )
        done[what] += 1
    print(f"Demo customers: {done['activate']} devices activated, {done['revoke']} revoked.")


if __name__ == "__main__":
    main()
