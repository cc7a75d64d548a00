"""The web layer: the only package that knows HTTP.

common.py     settings, services, headers, errors, limiter (shared by every app)
activation/   the public activation service: scan pages and the device API
"""

from __future__ import annotations

import errno

from flask import Flask

from provision.errors import ConfigError
from provision.web.activation import create_app
from provision.web.common import DEFAULT_RATE_LIMIT, Services, WebSettings, redact_path

__all__ = ["DEFAULT_RATE_LIMIT", "Services", "WebSettings", "create_app", "redact_path", "serve"]


def serve(app: Flask, host: str, port: int, threads: int) -> None:
    """Run under waitress, a production WSGI server (not Flask's development server)."""
    from waitress.server import create_server

    try:
        server = create_server(app, host=host, port=port, threads=threads, ident="provision")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} is in use") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"port {port}: permission denied") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    server.print_listen("Serving on http://{}:{}")
    server.run()
