"""The public Python API (`from provision import Provision`) on both databases, and the device
client (`provision.client`) against a real running `provision serve`."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import provision
import provision.api as api
import provision.client as client
from provision import Provision
from provision.activation import ActivationRejected
from provision.errors import DeviceError, ProvisionError
from tests.helpers import write_csv
from tests.test_web import OPEN_LIMIT, provision_server


@pytest.fixture
def p(db_url: str, keyring_path: Path, tmp_path: Path) -> Any:
    with Provision(db_url, keyring_path, output=tmp_path / "out") as facade:
        yield facade


def test_the_facade_does_the_original_apps_round_trip(p: Provision, tmp_path: Path) -> None:
    made = p.generate("SN-000123", "sensor", components={"battery": "CR2032", "mcu": "STM32"})
    assert made.created and made.png.exists() and made.pdf.exists()
    assert made.url.startswith("HTTP://LOCALHOST:5001/A/")
    done = p.activate(made.url, user="ann@example.com", ip="192.168.1.87", user_agent="phone")
    assert (done.device_id, done.device_type) == (made.device_id, "sensor")
    assert len(done.activation_token) >= 40
    with pytest.raises(ActivationRejected) as refused:
        p.activate(made.url, user="eve@example.com")
    assert refused.value.reason == "already_activated"
    assert isinstance(refused.value, ProvisionError)

    logged = [
        p.log_action(
            made.device_id, "voice_recording", metadata={"recording_id": n}, ip_address="10.0.0.9"
        )
        for n in range(3)
    ]
    assert [a.seq for a in logged] == [2, 3, 4]  # 1 is the activation
    assert len({a.id for a in logged}) == 3

    hist = p.history(made.device_id)
    assert isinstance(hist, api.History) and dataclasses.is_dataclass(hist.device)
    assert hist.device.status == "activated" and hist.device.user_id == "ann@example.com"
    assert sorted((c.component_type, c.component_spec) for c in hist.components) == [
        ("battery", "CR2032"),
        ("mcu", "STM32"),
    ]
    assert [(e.result, e.reason, e.user_id) for e in hist.pairing_events] == [
        ("accepted", None, "ann@example.com"),
        ("rejected", "already_activated", "eve@example.com"),
    ]
    assert [a.action_type for a in hist.actions] == ["activated"] + ["voice_recording"] * 3
    assert [a.metadata for a in hist.actions[1:]] == [{"recording_id": n} for n in range(3)]
    assert hist.actions[1].ip == "10.0.0.9" and isinstance(hist.actions[1].occurred_at, datetime)
    assert len(p.history(made.device_id, limit=2).actions) == 2

    hits = p.find("sn-000123")  # a serial in the wrong case: a variant, with its hint
    assert [(h.matched_on, h.device.device_id) for h in hits] == [
        ("serial_variant", made.device_id)
    ]
    assert [h.matched_on for h in p.find("ANN@example.com")] == ["user"]
    assert p.device(f"ID {made.device_id[:8].upper()}").device_id == made.device_id

    revoked = p.revoke(made.device_id, "returned to the shop", by="support")
    assert (revoked.status, revoked.revoked_by) == ("revoked", "support")
    with pytest.raises(DeviceError, match="already revoked"):
        p.revoke(made.device_id, "again", by="support")
    with pytest.raises(DeviceError, match="is revoked: its log takes no more actions"):
        p.log_action(made.device_id, "voice_recording", metadata={"recording_id": 9})
    refused = p.history(made.device_id).actions[-1]
    assert (refused.action_type, refused.metadata) == (
        "action.refused",
        {"action_type": "voice_recording", "reason": "revoked_device"},
    )
    with pytest.raises(DeviceError, match="no device"):
        p.history("00112233445566ff")


def test_register_and_trace_through_the_facade(p: Provision, tmp_path: Path) -> None:
    serials = write_csv(
        tmp_path / "s.csv", ["serial", "device_type"], [[f"TR{i}", "gateway"] for i in range(4)]
    )
    comps = write_csv(
        tmp_path / "c.csv",
        ["serial", "component_type", "component_spec", "supplier", "lot"],
        [[f"TR{i}", "psu", "12V", "Acme", "L1" if i < 3 else "L2"] for i in range(4)],
    )
    result = p.register(serials, components_csv=comps, batch="tr")
    assert (result.batch, result.registered, result.components) == ("tr", 4, 4)
    trace = p.trace(lot="L1", supplier="Acme")
    assert trace.query == {"lot": "L1", "supplier": "Acme"}
    assert len(trace.devices) == 3 and {d.batch for d in trace.devices} == {"tr"}
    assert (trace.by_status, trace.by_batch) == ({"pending": 3}, {"tr": 3})
    with pytest.raises(ProvisionError, match="give at least one"):
        p.trace()


def test_from_env_reads_the_settings_the_cli_reads(db_url: str, keyring_path: Path) -> None:
    env = {"PROVISION_DB_URL": db_url, "PROVISION_KEYRING": str(keyring_path)}
    with Provision.from_env(env) as facade:
        assert facade.find("nothing-here") == []
    with pytest.raises(ProvisionError, match="keyring"):
        Provision.from_env({"PROVISION_DB_URL": db_url})


def summary_line(obj: object) -> str:
    """The docstring's first paragraph, which must be one line."""
    doc = inspect.getdoc(obj) or ""
    first = doc.split("\n\n")[0]
    assert first.strip() and "\n" not in first, f"{obj!r}: {first!r}"
    return first


def test_everything_public_is_listed_and_documented_in_one_line() -> None:
    for module in (api, client):
        for name in module.__all__:
            summary_line(getattr(module, name))
        public = {n for n, v in vars(module).items() if not n.startswith("_")}
        defined_here = {
            n for n in public if getattr(vars(module)[n], "__module__", None) == module.__name__
        }
        assert defined_here <= set(module.__all__), defined_here - set(module.__all__)
    for cls in (api.Provision, client.DeviceClient):
        for name, member in vars(cls).items():
            if not name.startswith("_") or name in ("__init__", "__enter__", "__exit__"):
                summary_line(member.fget if isinstance(member, property) else member)
    assert provision.Provision is api.Provision


def test_importing_provision_loads_no_database_library() -> None:
    code = "import sys, provision; print('sqlalchemy' in sys.modules, 'flask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    code = (
        "import sys, provision.client; "
        "print(sorted(m for m in sys.modules if m[:9] == 'provision'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['provision', 'provision.client']"


def test_the_client_against_a_real_server(
    p: Provision, db_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    made = p.generate("SN-CLIENT-1", "thermostat")
    with provision_server(
        db_url, keyring_path, tmp_path / "srv", "--rate-limit", OPEN_LIMIT
    ) as srv:
        done = client.activate(srv.base, made.url, "ann@example.com")
        assert (done.device_id, done.device_type) == (made.device_id, "thermostat")
        with pytest.raises(client.ActivationRefused) as again:
            client.activate(srv.base, made.url, "eve@example.com")
        assert (again.value.status, again.value.reason) == (409, "already_activated")
        with pytest.raises(client.ActivationRefused) as forged:
            client.activate(srv.base, made.url[:-4] + "AAAA", "eve@example.com")
        assert forged.value.reason == "forged"

        device = client.DeviceClient(srv.base, done.activation_token)
        assert device.device_id == made.device_id  # asked of the service: GET /api/v1/device
        logged = [device.log("voice_recording", {"recording_id": n}) for n in range(100)]
        assert [a.seq for a in logged] == list(range(2, 102))
        hist = device.history(limit=200)
        assert [a["metadata"] for a in hist.actions[1:]] == [
            {"recording_id": n} for n in range(100)
        ]
        assert [a["seq"] for a in hist.actions] == list(range(1, 102))
        # The forged payload names the device but proves nothing: it is not the device's.
        assert hist.other_attempts == {"total": 1, "by_reason": {"already_activated": 1}}
        assert hist.device["device_id"] == made.device_id
        with pytest.raises(client.BadRequest) as bad:
            device.log("Not A Type")
        assert bad.value.reason == "bad_request"

        p.revoke(made.device_id, "stolen", by="support")
        with pytest.raises(client.Unauthorized):
            device.log("voice_recording", {"recording_id": 100})
        with pytest.raises(client.Unauthorized):
            print(client.DeviceClient(srv.base, done.activation_token).device_id)
        with pytest.raises(client.Unauthorized):
            client.DeviceClient(srv.base, "not-a-token", device_id=made.device_id).history()
    # The refused action was recorded (revoked_device_activity reads it).
    assert p.history(made.device_id).actions[-1].action_type == "action.refused"


class Flaky:
    """A real HTTP server that answers 503, then 429 with Retry-After, then what it is given."""

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.answers = answers
        self.seen: list[str] = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                flaky.seen.append(self.path)
                status, headers, body = flaky.answers.pop(0)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_client_retries_5xx_and_429_honouring_retry_after() -> None:
    ok = b'{"device_id": "00112233445566ff", "device_type": "t", "activation_token": "x"}'
    flaky = Flaky(
        [
            (503, {}, b""),
            (
                429,
                {"Retry-After": "2"},
                b'{"error": {"reason": "rate_limited", "message": "slow"}}',
            ),
            (201, {"Content-Type": "application/json"}, ok),
        ]
    )
    waits: list[float] = []
    try:
        done = client.activate(flaky.base, "HTTP://X/A/Y", "u", sleep=waits.append, backoff=0.1)
        assert done.device_id == "00112233445566ff" and len(flaky.seen) == 3
        assert 0.05 <= waits[0] <= 0.1 and waits[1] == 2.0  # backoff, then Retry-After
        flaky.answers = [(429, {"Retry-After": "1"}, b"")] * 2
        with pytest.raises(client.RateLimited) as limited:
            client.activate(flaky.base, "p", retries=1, sleep=waits.append)
        assert limited.value.retry_after == 1.0
        flaky.answers = [(500, {}, b""), (201, {}, ok)]
        seen = len(flaky.seen)
        with pytest.raises(client.ServerError):  # a write that may have happened: not again
            client.activate(flaky.base, "p", sleep=waits.append)
        assert len(flaky.seen) == seen + 1
        flaky.answers = [(503, {}, b"")] * 4
        with pytest.raises(client.ServerError):
            client.activate(flaky.base, "p", sleep=waits.append)
        assert len(flaky.seen) == seen + 5  # 503: refused before acting, tried 4 times
        assert "SECRET" not in repr(client.Activated("d", "t", "SECRET"))
    finally:
        flaky.close()
    waits.clear()
    with pytest.raises(client.Unreachable):  # a refused connection was never sent: retried
        client.activate(flaky.base, "p", retries=1, sleep=waits.append)
    assert len(waits) == 1
    with pytest.raises(client.Unreachable) as down:
        client.activate(flaky.base.replace("//", "//user:pw@"), "p", sleep=waits.append)
    assert "pw" not in str(down.value)
    with pytest.raises(ValueError, match="base_url"):
        client.DeviceClient("act.example.com", "t")
