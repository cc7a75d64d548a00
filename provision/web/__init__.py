"""The web layer: the only package that knows HTTP.

common.py     settings, services, headers, errors, limiter (shared by every app)
activation/   the public activation service: scan pages and the device API
server.py     waitress in one process or several, graceful SIGTERM
metrics.py    Prometheus metrics (serve --metrics-port)
"""

from __future__ import annotations

from provision.web.activation import create_app
from provision.web.common import DEFAULT_RATE_LIMIT, Services, WebSettings, redact_path

__all__ = ["DEFAULT_RATE_LIMIT", "Services", "WebSettings", "create_app", "redact_path"]
