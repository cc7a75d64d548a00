"""Prometheus metrics of the activation service (prometheus-client, in multiprocess mode).

`provision serve --metrics-port P` turns them on: every worker process writes its samples to
files in a private folder (PROMETHEUS_MULTIPROC_DIR, made before any worker starts), and the
supervising process serves their sum on http://127.0.0.1:P/metrics only. The public port has
no /metrics. Without the option nothing here is imported and nothing is counted.

- provision_activations_total{result, reason}: result `activated` or `refused`, reason the
  refusal's code (`already_activated`, `forged`, ...; empty when activated);
- provision_request_duration_seconds{endpoint}: a latency histogram of every request;
- provision_rate_limited_total: requests refused by the rate limit (429).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from flask import Flask, g, request

from provision.states import DeviceStatus

_state: dict[str, Any] = {}
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> str:
    """Make the folder the workers write their samples to (mode 0700), before any starts."""
    folder = tempfile.mkdtemp(prefix="provision-metrics-")
    os.environ[ENV] = folder
    return folder


def enabled() -> bool:
    return ENV in os.environ and bool(_state or _start())


def _start() -> bool:
    from prometheus_client import Counter, Histogram

    _state["activations"] = Counter(
        "provision_activations", "Activation attempts by result and reason", ["result", "reason"]
    )
    _state["latency"] = Histogram(
        "provision_request_duration_seconds", "Request latency", ["endpoint"], buckets=BUCKETS
    )
    _state["limited"] = Counter("provision_rate_limited", "Requests refused by the rate limit")
    return True


def activation(reason: str | None) -> None:
    """Count one activation attempt: REASON None when it activated."""
    if _state:
        result = DeviceStatus.ACTIVATED.value if reason is None else "refused"
        _state["activations"].labels(result, reason or "").inc()


def rate_limited() -> None:
    if _state:
        _state["limited"].inc()


def install(app: Flask) -> None:
    """Time every request of APP (when metrics are on)."""
    if not enabled():
        return

    def started() -> None:
        g.metrics_started = time.perf_counter()

    def finished(response: Any) -> Any:
        begun = g.get("metrics_started")
        if begun is not None:
            endpoint = request.endpoint or "unmatched"
            _state["latency"].labels(endpoint).observe(time.perf_counter() - begun)
        return response

    app.before_request(started)
    app.after_request(finished)


def serve_metrics(port: int) -> Any:
    """Serve the sum of every worker's samples on 127.0.0.1:PORT/metrics (a thread)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return start_http_server(port, addr="127.0.0.1", registry=registry)


def worker_gone(pid: int) -> None:
    """A worker ended: its live samples go (counters and histograms stay in the sum)."""
    if ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
