"""The console's fleet-wide figures: computed apart, cached, served stale while renewed.

At millions of devices the aggregates (devices by status, activations per day, per-batch
counts, the stats page's groups) cost seconds, more than a page may take. So each is:

- computed in a worker process of its own (one, so at most one core), never in the thread that
  answers a page: a computation in a thread would hold the interpreter lock for long
  stretches (building the stats' percentiles) and slow every page meanwhile;
- cached in each console process for its TTL (STATS_TTL for the stats page, FIGURES_TTL for the
  rest), and each page says as of when;
- served stale after its TTL while one renewal runs behind it (stale-while-revalidate), so only
  the first request after a start could wait, and `warm` computes them all at start.

A change made through the console (a revoke) clears the cache, so the pages show it at once.
Without a worker (figures_process=False, for tests and small registries), the figures are
computed in the answering thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, date, datetime, timedelta
from typing import Any

from provision import queries
from provision.registry import Registry
from provision.registry import stats as registry_stats

FIGURES_TTL = 30.0
STATS_TTL = 300.0
DAYS_CHARTED = 90
STATS_GROUPINGS = ("batch", "model", "line", "week")
log = logging.getLogger("provision.web.console")


def first_day(today: date | None = None) -> date:
    """The first of the DAYS_CHARTED days the overview's chart shows (UTC)."""
    return (today or datetime.now(UTC).date()) - timedelta(days=DAYS_CHARTED - 1)


def keys() -> list[str]:
    """Every figure's key (today's `days:` key)."""
    return ["status", f"days:{first_day()}", "batches", *(f"stats:{b}" for b in STATS_GROUPINGS)]


def compute(registry: Registry, key: str) -> Any:
    """The figure KEY of REGISTRY now."""
    name, _, arg = key.partition(":")
    if name == "status":
        return registry_stats.status_counts(registry.store)
    if name == "days":
        first = date.fromisoformat(arg)
        since = datetime(first.year, first.month, first.day, tzinfo=UTC)
        return registry_stats.activations_per_day(registry.store, since)
    if name == "batches":
        return queries.batches_overview(registry)
    if name == "stats" and arg in STATS_GROUPINGS:
        from provision.stats import fleet_stats

        # As JSON: its percentiles computed once, here, not at every page (and a small pickle
        # instead of every device's days to activation).
        return fleet_stats(registry, arg).to_json()
    raise KeyError(key)


_worker_registry: Registry | None = None


def _open_worker(db_url: str) -> None:
    global _worker_registry
    _worker_registry = Registry(db_url, migrate=False, create=False)


def _compute_in_worker(key: str) -> Any:
    assert _worker_registry is not None
    return compute(_worker_registry, key)


class Worker:
    """One process that computes figures, with its own connection to the registry.

    A worker that ended (the OOM killer, kill -9) is replaced at the next figure: the figure
    it was computing fails once (a renewal keeps the old value), the next is computed by a
    new process. Without that, every figure would fail until the console restarted."""

    def __init__(self, db_url: str) -> None:
        self._db_url = db_url
        self._lock = threading.Lock()
        self._closed = False
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_open_worker,
            initargs=(self._db_url,),
        )

    def submit(self, key: str) -> Future[Any]:
        with self._lock:
            try:
                return self._pool.submit(_compute_in_worker, key)
            except BrokenProcessPool:
                if self._closed:
                    raise
                log.warning("console figures: the worker process ended; starting another")
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                return self._pool.submit(_compute_in_worker, key)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)


class Figures:
    """The cache (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        worker: Worker | None = None,
        ttl: float = FIGURES_TTL,
        stats_ttl: float = STATS_TTL,
    ) -> None:
        self.registry, self.worker = registry, worker
        self.ttl, self.stats_ttl = ttl, stats_ttl
        self._values: dict[str, tuple[float, datetime, Any]] = {}
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def _ttl(self, key: str) -> float:
        return self.stats_ttl if key.startswith("stats:") else self.ttl

    def get(self, key: str) -> tuple[Any, datetime]:
        """The figure KEY and when it was computed."""
        with self._lock:
            hit = self._values.get(key)
            stale = hit is None or time.monotonic() - hit[0] >= self._ttl(key)
            renew = hit is not None and stale and key not in self._busy
            if renew:
                self._busy.add(key)
        if hit is None:
            return self._compute(key)
        if renew:
            threading.Thread(target=self._renew, args=(key,), daemon=True).start()
        return hit[2], hit[1]

    def _compute(self, key: str) -> tuple[Any, datetime]:
        started = time.monotonic()
        if self.worker is not None:
            value = self.worker.submit(key).result()
        else:
            value = compute(self.registry, key)
        at = datetime.now(UTC)
        with self._lock:
            self._values[key] = (started, at, value)
        return value, at

    def _renew(self, key: str) -> None:
        try:
            self._compute(key)
        except Exception:
            log.exception("console figures %s: renewal failed; the old value stays", key)
        finally:
            with self._lock:
                self._busy.discard(key)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def warm(self) -> threading.Thread:
        """Compute every figure in a background thread."""

        def run() -> None:
            for key in keys():
                try:
                    self.get(key)
                except Exception:
                    log.exception("console figures %s: warm-up failed", key)

        thread = threading.Thread(target=run, name="console-figures", daemon=True)
        thread.start()
        return thread
