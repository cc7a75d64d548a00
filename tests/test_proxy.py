"""The activation service behind a real nginx (Debian's), as the README deploys it: the nginx
server block and the systemd unit's ExecStart are read from the README and run here, with
only ports, paths and TLS swapped for the test's. The address stored and rate-limited is the
real client's; an X-Forwarded-For the client makes up is not believed."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.registry import Registry
from tests.helpers import flush, free_port, serials_csv, with_payload

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, f"the README should hold one ```{language} block"
    return str(blocks[0])


def unit_command(upstream: int, metrics: int) -> tuple[list[str], dict[str, str]]:
    """The systemd unit's ExecStart (this interpreter for the installed script, the test's
    ports) and its Environment lines."""
    unit = readme_block("ini")
    env = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in unit.splitlines()
        if line.startswith("Environment=")
    )
    [start] = [
        ln.removeprefix("ExecStart=") for ln in unit.splitlines() if ln.startswith("ExecStart=")
    ]
    argv = shlex.split(start)
    assert argv[0].endswith("/bin/provision")
    argv = [sys.executable, "-m", "provision", *argv[1:]]
    argv[argv.index("--port") + 1] = str(upstream)
    argv[argv.index("--metrics-port") + 1] = str(metrics)
    return argv, env


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Any]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "nginx is missing: `make test` installs Debian's nginx"
    started: list[subprocess.Popen[bytes]] = []

    def start(upstream: int) -> int:
        port = free_port()
        server = readme_block("nginx")
        server = server.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")  # no TLS here
        server = server.replace("http://127.0.0.1:5001", f"http://127.0.0.1:{upstream}")
        work = Path(tempfile.mkdtemp(dir=tmp_path, prefix="nginx-"))
        temps = "\n".join(
            f"  {kind}_temp_path {work}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = work / "nginx.conf"
        conf.write_text(
            f"user root;\nworker_processes 1;\ndaemon off;\npid {work}/nginx.pid;\n"
            f"error_log {work}/error.log;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log off;\n{temps}\n{server}\n}}\n"
        )
        proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)])
        started.append(proc)
        deadline = time.monotonic() + 20
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return port
            except OSError:
                pass
            assert proc.poll() is None, (work / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)

    yield start
    for proc in started:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(20)


def post(
    port: int, client: str, body: dict[str, str], headers: dict[str, str] | None = None
) -> int:
    """POST from the loopback address CLIENT (127.0.0.x: each a different client to nginx)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(client, 0))
    c.request(
        "POST", "/api/v1/activations", json.dumps(body),
        {"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    status = c.getresponse().status
    c.close()
    return status


def test_behind_nginx_the_real_client_is_stored_and_limited(
    db_url: str,
    registry: Registry,
    keyring_path: Path,
    tmp_path: Path,
    redis_url: str,
    nginx: Any,
) -> None:
    from provision.keys import load_keyring
    from provision.pipeline import register_batch
    from provision.registry.records import DeviceFilter

    flush(redis_url)
    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 2), batch="proxy")
    first, second = registry.devices.page(DeviceFilter(), None, None, 2)
    upstream, metrics = free_port(), free_port()
    argv, unit_env = unit_command(upstream, metrics)
    assert unit_env["PROVISION_RATE_LIMIT_STORAGE"].startswith("redis://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env |= {
        "PROVISION_DB_URL": db_url,
        "PROVISION_KEYRING": str(keyring_path),
        "PROVISION_RATE_LIMIT_STORAGE": redis_url,
        "PROVISION_RATE_LIMIT": "3 per minute",
    }
    service = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", upstream, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert service.poll() is None, service.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        port = nginx(upstream)
        spoof = {"X-Forwarded-For": "203.0.113.9"}
        ok = post(port, "127.0.0.7", {"payload": with_payload(keyring, first)["payload"],
                                     "user": "ada@example.com"}, spoof)  # fmt: skip
        assert ok == 201
        [event] = registry.events.pairing_events_of(first.id)
        assert event.ip == "127.0.0.7"  # the client nginx saw, not nginx, not the header
        # The limit counts per real client: 127.0.0.7 has 2 more, 127.0.0.8 its own 3.
        bad = {"payload": "NOT-A-PAYLOAD", "user": "x"}
        assert [post(port, "127.0.0.7", bad, spoof) for _ in range(3)] == [400, 400, 429]
        other = {"payload": with_payload(keyring, second)["payload"], "user": "bob@example.com"}
        assert post(port, "127.0.0.8", other, {"X-Forwarded-For": "127.0.0.7"}) == 201
        assert registry.events.pairing_events_of(second.id)[0].ip == "127.0.0.8"
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
