"""What the benchmarks share: bulk rows straight into a registry, and the registry they build.

Not part of provision: a benchmark builds millions of rows as provision itself would write
them (hashed, chained, sealed), but through the driver (executemany on SQLite, COPY on
PostgreSQL), since timing the set-up is not the point.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from provision.keys import Keyring, init_keyring, load_keyring
from provision.registry import Registry


class Writer:
    """Bulk rows into the registry: executemany on SQLite, COPY on PostgreSQL."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.pg = registry.is_postgresql
        self.raw = registry.engine.raw_connection()

    def stamp(self, when: datetime | None) -> Any:
        """WHEN as the driver takes it: a datetime, or SQLAlchemy's SQLite text form."""
        if when is None or self.pg:
            return when
        return when.strftime("%Y-%m-%d %H:%M:%S.%f")

    def rows(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        cur = self.raw.cursor()
        if self.pg:
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
        else:
            marks = ", ".join("?" * len(columns))
            cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        cur.close()

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        """One statement with `?` placeholders (made `%s` for PostgreSQL)."""
        cur = self.raw.cursor()
        cur.execute(statement.replace("?", "%s") if self.pg else statement, params)
        cur.close()

    def execute(self, statement: str, params: list[tuple[Any, ...]]) -> None:
        """One statement, executed for each of PARAMS."""
        cur = self.raw.cursor()
        cur.executemany(statement.replace("?", "%s") if self.pg else statement, params)
        cur.close()

    def commit(self) -> None:
        self.raw.commit()

    def close(self) -> None:
        self.raw.close()


@dataclass
class BenchRegistry:
    registry: Registry
    keyring: Keyring
    fresh: bool  # to be built (a kept SQLite registry is reused)
    work: Path
    db: str  # "SQLite" or "PostgreSQL", for the report


@contextlib.contextmanager
def bench_registry(postgres: bool, keep: Path | None, name: str) -> Iterator[BenchRegistry]:
    """A registry to build or reuse: SQLite in KEEP (or a temporary folder), or a PostgreSQL
    server (tests.pgcluster): throwaway, or with KEEP one kept in KEEP/pg and started again
    next time; stopped at the end. A fresh registry gets a new keyring; a reused one, the
    keyring kept beside it."""
    work = keep or Path(tempfile.mkdtemp(prefix=f"provision-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    keyring_path = work / "keyring.json"
    cluster = None
    if postgres:
        from tests.pgcluster import PostgresCluster

        cluster = PostgresCluster(keep_at=keep / "pg" if keep else None)
        cluster.start()
        fresh = not cluster.has_database(name)
        url = cluster.create_database(name) if fresh else cluster.url_for(name)
    else:
        db = work / "registry.db"
        url, fresh = f"sqlite:///{db}", not db.exists()
    try:
        if fresh and keyring_path.exists():
            keyring_path.unlink()
        if not keyring_path.exists():
            init_keyring(keyring_path)
        keyring = load_keyring(keyring_path)
        registry = Registry(url, keyring=keyring)
        yield BenchRegistry(registry, keyring, fresh, work, "PostgreSQL" if postgres else "SQLite")
    finally:
        if cluster is not None:
            cluster.stop()
