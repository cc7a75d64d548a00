"""Fixtures: a real SQLite file and a real PostgreSQL server for every registry test."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from provision.cli import cli
from provision.keys import Keyring, init_keyring
from provision.registry import Registry
from tests.pgcluster import PostgresCluster, postgres_available

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    ok, why = postgres_available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {why}")
        pytest.skip(f"PostgreSQL not available: {why}")
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each registry test runs twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = f"t{os.getpid()}_{next(_db_counter)}"
    url = cluster.create_database(name)
    yield url
    cluster.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keyring.json"
    init_keyring(path)
    return path


@pytest.fixture
def keyring(keyring_path: Path) -> Keyring:
    from provision.keys import load_keyring

    return load_keyring(keyring_path)


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    reg = Registry(db_url)
    yield reg
    reg.close()


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    return tmp_path / "output"


RunCLI = Callable[..., Result]


@pytest.fixture
def run_cli(db_url: str, keyring_path: Path, output_dir: Path) -> RunCLI:
    """Invoke `provision ...` in-process with this test's database, keyring and output folder."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        base = {
            "PROVISION_DB_URL": db_url,
            "PROVISION_KEYRING": str(keyring_path),
            "PROVISION_OUTPUT": str(output_dir),
            "PROVISION_BASE_URL": "http://localhost:5001",
        }
        return CliRunner().invoke(
            cli, list(args), input=input, env=base | (env or {}), catch_exceptions=False
        )

    return run


@pytest.fixture(autouse=True)
def _own_templates_folder(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test sees the built-in templates only: a developer's own user templates
    (~/.config/provision/templates) must not leak in."""
    monkeypatch.setenv("PROVISION_TEMPLATES", str(tmp_path_factory.mktemp("user-templates")))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway Redis on 127.0.0.1 (no persistence), stopped at the end of the session."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: `make test` installs Debian's redis-server"
    from tests.helpers import free_port

    port = free_port()
    work = tempfile.mkdtemp(prefix="provision-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", work, "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
