"""Throwaway PostgreSQL server for the test session.

``PostgresCluster`` runs ``initdb`` into a fresh temporary directory, starts the server on a
free TCP port bound to 127.0.0.1 only (durability switched off for speed), and hands out
SQLAlchemy URLs for per-test databases. ``stop()`` kills the server and deletes everything.

PostgreSQL refuses to run as root, so when the effective uid is 0 every server command is run
as the ``postgres`` system user (via ``runuser`` or ``su``) and the temporary directory is
chowned to that user. Otherwise the server runs as the current user.

Typical use from a session fixture::

    ok, why = postgres_available()
    if not ok:
        pytest.skip(why)
    cluster = PostgresCluster(Path(tempfile.gettempdir()))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

PG_SYSTEM_USER = "postgres"
PG_SUPERUSER = "postgres"
_PG_LIB_ROOT = Path("/usr/lib/postgresql")
_REQUIRED_BINS = ("initdb", "pg_ctl", "postgres")
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3
_START_TIMEOUT_S = 60

# Environment variables that would make libpq-based tools or the server itself pick up
# settings from the developer's shell instead of ours.
_SCRUBBED_ENV = (
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGSERVICE",
    "PGOPTIONS",
)


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>`` directories (``15`` > ``9.6``)."""
    parts = re.findall(r"\d+", path.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def find_pg_bin(name: str) -> str | None:
    """Absolute path of a PostgreSQL program: ``PATH`` first, then the newest
    ``/usr/lib/postgresql/*/bin``. ``None`` when it cannot be found."""
    found = shutil.which(name)
    if found:
        return found
    if _PG_LIB_ROOT.is_dir():
        for version_dir in sorted(_PG_LIB_ROOT.iterdir(), key=_version_key, reverse=True):
            candidate = version_dir / "bin" / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def _is_root() -> bool:
    return os.geteuid() == 0


def _switch_user_prefix() -> list[str] | None:
    """Command prefix that runs the rest of the argv as the postgres system user, when root.

    Returns ``[]`` when not root (run as ourselves) and ``None`` when root but neither
    ``runuser`` nor ``su`` is available.
    """
    if not _is_root():
        return []
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", PG_SYSTEM_USER, "--"]
    su = shutil.which("su")
    if su:
        # Marker: the argv after the prefix is joined into a single ``-c`` string.
        return [su, PG_SYSTEM_USER, "-s", "/bin/sh", "-c"]
    return None


def postgres_available() -> tuple[bool, str]:
    """``(True, "")`` if a throwaway cluster can be started here, else ``(False, why)``."""
    missing = [name for name in _REQUIRED_BINS if find_pg_bin(name) is None]
    if missing:
        return False, f"PostgreSQL server binaries not found: {', '.join(missing)}"
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        return False, f"psycopg (v3) is not importable: {exc}"
    if _is_root():
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            return False, (
                f"running as root but there is no {PG_SYSTEM_USER!r} system user to run "
                "PostgreSQL as (it refuses to run as root)"
            )
        if _switch_user_prefix() is None:
            return False, "running as root but neither 'runuser' nor 'su' is available"
    return True, ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conf_quote(value: str) -> str:
    """Quote a string for postgresql.conf."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _traversable_by_others(path: Path) -> bool:
    """True if every directory from ``/`` down to ``path`` has the o+x bit set."""
    try:
        for part in [path, *path.parents]:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


class PostgresCluster:
    """A private PostgreSQL server living in a fresh temp directory.

    ``base_dir`` is the parent under which a ``provision-pg-*`` directory is created. When
    running as root and ``base_dir`` is not traversable by the postgres user (e.g. pytest's
    0700 ``/tmp/pytest-of-root``), the system temp dir (normally ``/tmp``) is used instead.
    ``None`` means the system temp dir.
    """

    def __init__(self, base_dir: Path | None = None, *, keep_at: Path | None = None) -> None:
        self.base_dir = Path(base_dir) if base_dir is not None else None
        # KEEP_AT: a cluster that outlives this process (benchmarks reuse a built registry):
        # made there once, started again later, stopped cleanly and never deleted.
        self.keep_at = Path(keep_at).resolve() if keep_at is not None else None
        self.root: Path | None = None
        self.data_dir: Path | None = None
        self.socket_dir: Path | None = None
        self.log_file: Path | None = None
        self.port: int | None = None
        self._running = False
        self._atexit_registered = False

    # ----------------------------------------------------------------- helpers

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        env.pop("LANGUAGE", None)
        return env

    def _run(self, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server program as the right user, capturing output (never raises on rc)."""
        prefix = _switch_user_prefix()
        if prefix is None:
            raise RuntimeError("running as root but neither 'runuser' nor 'su' is available")
        cmd = [*prefix, shlex.join(argv)] if prefix and prefix[-1] == "-c" else [*prefix, *argv]
        return subprocess.run(
            cmd,
            cwd=str(self.root) if self.root else None,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self.log_file is None or not self.log_file.exists():
            return "(no server log)"
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"(could not read server log {self.log_file}: {exc})"
        tail = text.splitlines()[-lines:]
        return "\n".join(tail) if tail else "(server log is empty)"

    def _pick_parent(self) -> Path:
        parent = self.base_dir if self.base_dir is not None else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        if _is_root() and not _traversable_by_others(parent.resolve()):
            fallback = Path(tempfile.gettempdir())
            parent = fallback if _traversable_by_others(fallback.resolve()) else Path("/tmp")
        return parent

    def _make_dirs(self) -> None:
        if self.keep_at is not None:
            self.root = self.keep_at
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root = Path(tempfile.mkdtemp(prefix="provision-pg-", dir=self._pick_parent()))
        self.root.chmod(0o755)
        self.data_dir = self.root / "data"
        self.socket_dir = self.root
        self.log_file = self.root / "server.log"
        if _is_root():
            pw = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    @staticmethod
    def _bin(name: str) -> str:
        path = find_pg_bin(name)
        if path is None:
            raise RuntimeError(
                f"PostgreSQL program {name!r} not found on PATH or under {_PG_LIB_ROOT}/*/bin"
            )
        return path

    def _write_config(self) -> None:
        assert self.data_dir is not None and self.socket_dir is not None
        settings = {
            "listen_addresses": _conf_quote("127.0.0.1"),
            "unix_socket_directories": _conf_quote(str(self.socket_dir)),
            "max_connections": "100",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "shared_buffers": _conf_quote("32MB"),
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        block = "\n# --- provision test cluster ---\n" + "".join(
            f"{key} = {value}\n" for key, value in settings.items()
        )
        # Appending as root keeps the file's owner (postgres) and mode (0600).
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write(block)

    # --------------------------------------------------------------------- API

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` maintenance database (superuser, trust auth)."""
        return self.url_for("postgres")

    def url_for(self, name: str) -> str:
        if self.port is None:
            raise RuntimeError("PostgresCluster is not started")
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        """initdb + start on a free 127.0.0.1 port; blocks until the server accepts connections."""
        if self._running:
            return
        ok, why = postgres_available()
        if not ok:
            raise RuntimeError(f"cannot start PostgreSQL: {why}")
        initdb, pg_ctl = self._bin("initdb"), self._bin("pg_ctl")
        self._make_dirs()
        assert self.data_dir is not None and self.log_file is not None
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

        try:
            if self.keep_at is not None and (self.data_dir / "PG_VERSION").exists():
                self._start(pg_ctl)
                return
            result = self._run(
                [
                    initdb,
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    PG_SUPERUSER,
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
                )
            self._write_config()
            self._start(pg_ctl)
        except BaseException:
            self.stop()
            raise

    def _start(self, pg_ctl: str) -> None:
        assert self.data_dir is not None and self.log_file is not None
        last_error = ""
        for _attempt in range(_START_ATTEMPTS):
            self.port = _free_port()
            result = self._run(
                [
                    pg_ctl,
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "start",
                ],
                timeout=_START_TIMEOUT_S + 30,
            )
            if result.returncode == 0:
                self._running = True
                return
            last_error = (
                f"pg_ctl start failed (exit {result.returncode}) on port {self.port}:\n"
                f"{result.stdout}{result.stderr}\n"
                f"--- server log tail ({self.log_file}) ---\n{self._log_tail()}"
            )
            # Only a lost race for the port is worth retrying.
            if "could not bind" not in self._log_tail() and "in use" not in last_error:
                break
            self._kill_leftover()
        raise RuntimeError(last_error)

    def _kill_leftover(self) -> None:
        """Last resort: SIGQUIT the postmaster named in postmaster.pid, if any."""
        if self.data_dir is None:
            return
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0].strip())
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Immediate shutdown, then delete the temp directory. Safe to call more than once."""
        if self._running and self.data_dir is not None:
            self._running = False
            try:
                result = self._run(
                    [
                        self._bin("pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-m",
                        # A kept cluster (fsync off) must reach its disk before it stops.
                        "fast" if self.keep_at is not None else "immediate",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ],
                    timeout=60,
                )
                if result.returncode != 0:
                    self._kill_leftover()
            except (OSError, subprocess.SubprocessError, RuntimeError):
                self._kill_leftover()
        elif self.data_dir is not None and (self.data_dir / "postmaster.pid").exists():
            self._kill_leftover()
        if self.root is not None and self.keep_at is None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = self.data_dir = self.socket_dir = self.log_file = None
        self.port = None

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        if not self._running or self.port is None:
            raise RuntimeError("PostgresCluster is not started")
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its SQLAlchemy URL."""
        from psycopg import sql

        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def has_database(self, name: str) -> bool:
        with self._connect() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return found is not None

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ``name`` WITH (FORCE), terminating any open connections."""
        from psycopg import sql

        with self._connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
