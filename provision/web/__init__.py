"""The web layer: the only package that knows HTTP.

common.py     settings, services, headers, errors, limiter (shared by every app)
activation/   the public activation service: scan pages and the device API
"""

from __future__ import annotations

from flask import Flask

from provision.web.activation import create_app
from provision.web.common import DEFAULT_RATE_LIMIT, Services, WebSettings, redact_path

__all__ = ["DEFAULT_RATE_LIMIT", "Services", "WebSettings", "create_app", "redact_path", "serve"]


def serve(app: Flask, host: str, port: int, threads: int) -> None:
    """Run APP under waitress in this process until SIGTERM (provision.web.server)."""
    from provision.web.server import serve as run

    run(lambda: app, host, port, threads)
