"""The staff console (`provision console`): STAFF ONLY, never part of the activation service.

`create_console_app` builds a Flask app of its own from the shared pieces of
provision.web.common (headers and CSP, error pages, services): the login (auth), the pages
(pages), and the staff JSON API (api). The session cookie is its own (its own name and key,
SameSite=Strict) and every form carries a CSRF token.

    auth.py     Flask-Login over provision.staff; roles; the staff audit log
    pages.py    the HTML pages and their forms
    api.py      /api/v1/staff/...: bearer staff tokens
    charts.py   SVG charts drawn on the server
    figures.py  the fleet-wide figures: a worker process, a cache served stale while renewed
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from provision.keys import Keyring
from provision.registry import Registry
from provision.web.common import Services, WebSettings, make_app
from provision.web.console import api, auth, figures, pages

IDLE_TIMEOUT = timedelta(minutes=30)
_SECRET_DOMAIN = b"provision/console-session/v1\x00"

__all__ = ["IDLE_TIMEOUT", "create_console_app"]


def create_console_app(
    settings: WebSettings,
    output_dir: str | Path,
    *,
    registry: Registry | None = None,
    keyring: Keyring | None = None,
    idle_timeout: timedelta = IDLE_TIMEOUT,
    figures_ttl: float = figures.FIGURES_TTL,
    stats_ttl: float = figures.STATS_TTL,
    figures_process: bool = False,
    secure_cookie: bool = False,
) -> Flask:
    """The console's Flask app; `provision console` runs it under waitress.

    FIGURES_PROCESS computes the fleet-wide figures in a worker process of their own (what
    `provision console` does); without it they are computed in the answering thread.
    SECURE_COOKIE marks the session cookie Secure: staff reach the console over https."""
    svc = Services.open(settings, registry, keyring)
    app = make_app(svc)
    app.config.update(
        # Its own key and cookie: an activation-service cookie means nothing here.
        SECRET_KEY=hmac.new(svc.keyring().pepper, _SECRET_DOMAIN, hashlib.sha256).digest(),
        SESSION_COOKIE_NAME="provision_console",
        SESSION_COOKIE_SAMESITE="Strict",
        # The console's own scheme decides, not the activation service's base URL.
        SESSION_COOKIE_SECURE=secure_cookie,
        PROVISION_IDLE_TIMEOUT=idle_timeout,
        REMEMBER_COOKIE_DURATION=timedelta(0),
        PROVISION_OUTPUT=str(Path(output_dir).resolve()),
        PROVISION_FIGURES_TTL=figures_ttl,
        PROVISION_STATS_TTL=stats_ttl,
        PROVISION_ERROR_TEMPLATE="console/error.html",
    )
    worker = figures.Worker(svc.registry.url) if figures_process else None
    app.extensions["provision.figures"] = figures.Figures(
        svc.registry, worker, figures_ttl, stats_ttl
    )
    app.jinja_env.filters["datetime"] = _timestamp
    app.jinja_env.filters["stamp"] = _stamp
    csrf = CSRFProtect(app)
    auth.install(app)
    app.register_blueprint(auth.blueprint())
    app.register_blueprint(pages.blueprint())
    staff_api = api.blueprint()
    csrf.exempt(staff_api)  # bearer tokens, not cookies: no cross-site form can use them
    app.register_blueprint(staff_api)
    app.after_request(_no_store)
    return app


def _no_store(resp: Any) -> Any:
    """Nothing of the console in a browser's cache: label files hold activation payloads,
    pages and reports hold customers' data (send_file's own no-cache would allow it)."""
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _stamp(iso: str | None) -> str:
    """An ISO 8601 time from a history (UTC) as the pages show times, to the second."""
    return iso[:19].replace("T", " ") if iso else ""


def _timestamp(seconds: float) -> str:
    """A file's modification time (seconds since the epoch) as the pages show times."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")
