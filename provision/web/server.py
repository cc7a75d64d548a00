"""Running a web app: waitress in one process or several (pre-forked), stopped gracefully.

`serve` binds the port once; with several processes each is forked from this one after that
and serves the same listening socket (the kernel hands each new connection to one of them),
and each builds its own app (its own database connections) after the fork. The parent only
supervises: a worker that dies is replaced; SIGTERM (or SIGINT) is passed on to every worker.

A worker told to stop stops accepting, lets every request it has begun finish and its answer
go out (up to GRACE_SECONDS), closes its idle keep-alive connections, and exits 0.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from provision.errors import ConfigError

log = logging.getLogger("provision.web")
GRACE_SECONDS = 30.0  # the longest a stopping worker waits for requests in flight
# A request waits on the database and Redis several times; each time its answer is in, its
# thread waits for the interpreter lock, by default up to 5 ms while another thread computes.
SWITCH_INTERVAL = 0.001
_TICK = 0.2  # seconds between two looks at the connections of a stopping worker
QUEUE_REPORT_SECONDS = 60.0  # the longest a worker stays silent about requests kept waiting
_CRASH_WINDOW = 5.0  # a worker that dies this soon after starting counts as a crash loop
_MAX_QUICK_DEATHS = 5


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The listening socket, or a one-line ConfigError (port in use, no permission, ...)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} is in use") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"port {port}: permission denied") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class QueueReport:
    """Stands in for waitress's queue logger, which warns "Task queue depth is N" every time a
    request waits for a free thread: under load that is every request, thousands of lines a
    second that bury everything else in the log (and cost each request a log line). This says
    it at most once every INTERVAL seconds: how many requests waited since it last said so,
    and the longest queue they met. waitress calls it under its dispatcher's lock."""

    def __init__(self, interval: float = QUEUE_REPORT_SECONDS) -> None:
        self.interval = interval
        self._waited = 0
        self._deepest = 0
        self._next = 0.0
        self._logger = logging.getLogger("waitress.queue")

    def warning(self, message: str, depth: int, *args: Any) -> None:
        self._waited += 1
        self._deepest = max(self._deepest, depth)
        now = time.monotonic()
        if now >= self._next:
            self.flush()
            self._next = now + self.interval

    def flush(self) -> None:
        """Report the requests that waited since the last report, if any (and at the stop)."""
        if not self._waited:
            return
        log.warning(
            "%d %s waited for a free thread since the last report (longest queue %d); "
            "when this persists, add --processes",
            self._waited,
            "request" if self._waited == 1 else "requests",
            self._deepest,
        )
        self._waited = self._deepest = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)  # any other call waitress may make: its own logger


def _busy(channel: Any) -> bool:
    """A connection with a request being read, run or answered."""
    return bool(
        getattr(channel, "requests", None)
        or getattr(channel, "request", None) is not None
        or getattr(channel, "total_outbufs_len", 0)
    )


def run_worker(app: Any, sock: socket.socket, threads: int, proxy_headers: bool = False) -> None:
    """Serve APP on SOCK with waitress until SIGTERM or SIGINT, then stop gracefully.

    waitress drops X-Forwarded-* headers by default; PROXY_HEADERS keeps them for the app,
    which believes only as many of their entries as --trusted-proxies says (ProxyFix)."""
    from waitress import wasyncore
    from waitress.channel import HTTPChannel
    from waitress.server import create_server

    sys.setswitchinterval(SWITCH_INTERVAL)

    server: Any = create_server(
        app,
        sockets=[sock],
        threads=threads,
        ident="provision",
        clear_untrusted_proxy_headers=not proxy_headers,
    )
    queue_report = server.task_dispatcher.queue_logger = QueueReport()
    stopping: list[float] = []

    def stop(signum: int, frame: Any) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            server.accepting = False  # new connections go to another worker, or wait

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Its app is built: from here on it takes connections (until now the others took them).
    log.info("worker %d serving", os.getpid())
    # waitress's own map: the listening socket, the wake-up pipe (its trigger, which a thread
    # pulls when an answer is ready; closing it would lose the answers still to come) and
    # every connection.
    channels = server._map
    while True:
        wasyncore.loop(timeout=_TICK, use_poll=True, map=channels, count=1)
        if not stopping:
            continue
        open_ = [c for c in list(channels.values()) if isinstance(c, HTTPChannel)]
        for channel in open_:
            if not _busy(channel):
                channel.handle_close()  # an idle keep-alive connection
        if not any(_busy(c) for c in open_):
            break
        if time.monotonic() - stopping[0] > GRACE_SECONDS:
            log.warning(
                "stopping with %d connections unfinished after %.0f s",
                sum(_busy(c) for c in open_),
                GRACE_SECONDS,
            )
            break
    # The threads first: one that has just handed its answer over still pulls the trigger,
    # which server.close() closes.
    server.task_dispatcher.shutdown(cancel_pending=False, timeout=5)
    server.close()
    queue_report.flush()


def serve(
    make_app: Callable[[], Any],
    host: str,
    port: int,
    threads: int,
    processes: int = 1,
    on_listening: Callable[[], None] | None = None,
    metrics_port: int | None = None,
    proxy_headers: bool = False,
) -> None:
    """Serve the app MAKE_APP builds on HOST:PORT: in this process, or in PROCESSES forked
    workers, each with THREADS threads; with METRICS_PORT, their metrics on 127.0.0.1 there.
    Returns when stopped (SIGTERM, SIGINT)."""
    import provision.web.metrics as metrics

    sock = listen(host, port)
    if metrics_port is not None:
        try:
            metrics.serve_metrics(metrics_port)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"--metrics-port {metrics_port}: {exc.strerror}") from None
    if on_listening is not None:
        on_listening()
    if processes == 1:
        run_worker(make_app(), sock, threads, proxy_headers)
        return
    workers: dict[int, float] = {}  # pid -> when it started
    stopping: list[bool] = []

    def start() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                run_worker(make_app(), sock, threads, proxy_headers)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        workers[pid] = time.monotonic()

    def stop(signum: int, frame: Any) -> None:
        stopping.append(True)
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):  # gone already
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(processes):
        start()
    quick_deaths = 0
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = workers.pop(pid, None)
        metrics.worker_gone(pid)
        if stopping or started is None:
            continue
        log.warning("worker %d ended (status %d); starting another", pid, status)
        quick_deaths = quick_deaths + 1 if time.monotonic() - started < _CRASH_WINDOW else 0
        if quick_deaths >= _MAX_QUICK_DEATHS:
            stop(signal.SIGTERM, None)
            raise ConfigError(f"workers keep failing at start ({quick_deaths} in a row); stopped")
        start()
    sock.close()
