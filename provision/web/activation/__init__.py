"""The public activation service: the scan pages and the device API (`provision serve`).

`create_app` builds it from two blueprints, scan (the pages a phone opens from the QR) and
api (JSON for apps), on the shared pieces of provision.web.common. Nothing of a staff console
is part of it.
"""

from __future__ import annotations

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from provision.keys import Keyring
from provision.registry import Registry
from provision.web.activation import api, scan
from provision.web.activation.reasons import REASON_STATUS
from provision.web.common import RateLimit, Services, WebSettings, make_app
from provision.web.metrics import install as install_metrics

__all__ = ["REASON_STATUS", "activation_limit", "create_app"]


def activation_limit(settings: WebSettings) -> RateLimit:
    """One budget per client address for every route that activates (/A/, /a/ and the API):
    a per-route limit would let a client triple it by switching the path's case or the route.
    A bad --rate-limit or --rate-limit-storage is a ConfigError here."""
    return RateLimit(settings.rate_limit, settings.rate_limit_storage, "activation")


def create_app(
    settings: WebSettings, *, registry: Registry | None = None, keyring: Keyring | None = None
) -> Flask:
    """The activation service's Flask app; `provision serve` runs it under waitress."""
    app = make_app(Services.open(settings, registry, keyring))
    install_metrics(app)  # when `serve --metrics-port` turned them on
    csrf = CSRFProtect(app)
    limit = activation_limit(settings)
    app.register_blueprint(scan.blueprint(limit))
    api_bp = api.blueprint(limit)
    csrf.exempt(api_bp)  # bearer tokens and JSON bodies, not cookies: no cross-site form
    app.register_blueprint(api_bp)
    return app
