"""What every provision web app shares: settings, services, headers, errors, the limiter.

The public activation service (provision.web.activation) and the staff console
(provision.web.console) are built from these, each an app of its own sharing none of the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError
from limits import RateLimitItem, parse_many
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from provision.errors import ConfigError, KeyringError
from provision.keys import Keyring, KeyringWatcher
from provision.registry import Registry

log = logging.getLogger("provision.web")
DEFAULT_RATE_LIMIT = "10 per minute"
KEYRING_CHECK_SECONDS = 0.5
MAX_CONTENT_LENGTH = 64 * 1024
_SECRET_DOMAIN = b"provision/web-session/v1\x00"
# Request paths carry the payload token; it never reaches a log line in full.
_REDACT = re.compile(r"(?i)(/a/)[^/?#]+")
# A GS1 Digital Link path holds the serial in clear (`labels --payload digital-link`).
_REDACT_SERIAL = re.compile(r"(/01/\d+/21/)[^?#]+")
# The machine-readable reason of each HTTP error status a route can answer with.
HTTP_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal",
    503: "unavailable",
}
# Every answer's CSP: scripts from this origin only, and inline ones only with the nonce of
# the page that asked for one (csp_nonce).
_CSP = (
    "default-src 'none'; {scripts}; style-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_CSP_WITHOUT_NONCE = _CSP.format(scripts="script-src 'self'")
_FIXED_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
_HTTP_MESSAGES = {
    404: "Nothing here.",
    405: "That method is not allowed here.",
    413: f"The request body is larger than {MAX_CONTENT_LENGTH} bytes.",
}


@dataclass(frozen=True)
class WebSettings:
    """What an app needs; the CLI (`provision serve`) builds it from its options."""

    db_url: str
    keyring_path: str | None
    base_url: str
    trusted_proxies: int = 0
    rate_limit: str = DEFAULT_RATE_LIMIT
    # Where the rate limit's counters are kept: this process's memory, or a store every process
    # and host shares (redis://HOST:PORT), so that a limit holds across them.
    rate_limit_storage: str = "memory://"


@dataclass(frozen=True)
class Services:
    """What every request uses: the registry, and the keyring as the file holds it now.

    The keyring is watched, not loaded once: a revoked or rotated key takes effect within
    KEYRING_CHECK_SECONDS (plus one request), in every process, without a restart.
    """

    registry: Registry
    keyrings: KeyringWatcher
    settings: WebSettings

    def keyring(self) -> Keyring:
        return self.keyrings.current()

    @classmethod
    def open(
        cls, settings: WebSettings, registry: Registry | None, keyring: Keyring | None
    ) -> Services:
        if keyring is not None:
            keyrings = KeyringWatcher(keyring.path, KEYRING_CHECK_SECONDS, initial=keyring)
        else:
            if not settings.keyring_path:
                raise KeyringError("no keyring given: set PROVISION_KEYRING (or --keyring)")
            keyrings = KeyringWatcher(settings.keyring_path, KEYRING_CHECK_SECONDS)
        first = keyrings.current()
        registry = registry or Registry(settings.db_url, keyring=first, create=False)
        return cls(registry, keyrings, settings)


def services() -> Services:
    """The running app's services."""
    found: Services = current_app.extensions["provision"]
    return found


class _Sessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request without the cookie (every API
    call, a phone's first scan) gets its empty session without the signing serializer being
    built first: that cost an activation 30-60 us of CPU here. Flask hands such a request
    the same empty session once it has built the serializer. (Without a secret key Flask's
    own answer stands: no session.)"""

    def open_session(self, app: Flask, request: Any) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


class _App(Flask):
    """Flask, except that an unexpected error is logged without the token in the path."""

    def log_exception(self, exc_info: Any) -> None:
        self.logger.error(
            "Exception on %s [%s]", redact_path(request.path), request.method, exc_info=exc_info
        )


def make_app(svc: Services) -> Flask:
    """A Flask app with provision's configuration, headers, access log and error pages."""
    app = _App("provision.web")  # templates and static files of provision/web
    app.session_interface = _Sessions()
    settings = svc.settings
    app.config.update(
        SECRET_KEY=hmac.new(svc.keyring().pepper, _SECRET_DOMAIN, hashlib.sha256).digest(),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.lower().startswith("https://"),
        WTF_CSRF_TIME_LIMIT=3600,
        WTF_CSRF_SSL_STRICT=False,  # the Referer is suppressed by our own Referrer-Policy
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
    )
    app.extensions["provision"] = svc
    if settings.trusted_proxies > 0:
        # Only behind a proxy we run does X-Forwarded-For say who the client is.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.after_request(_headers)
    app.register_error_handler(RateLimited, _too_many)
    app.register_error_handler(CSRFError, _csrf)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(500, _internal)
    app.register_error_handler(KeyringError, _no_keyring)
    app.add_url_rule("/healthz", "healthz", _healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", _readyz, methods=["GET"])
    return app


class RateLimited(Exception):
    """A request over its rate limit: answered 429 with Retry-After (see _too_many)."""

    def __init__(self, limit: RateLimitItem) -> None:
        super().__init__(str(limit))
        self.limit = limit


class RateLimit:
    """One budget per client address, shared by every view it wraps (SPEC: "10 per minute",
    or several separated by ";"), counted by `limits` in a fixed window in STORAGE_URI:
    memory:// in this process, or redis://HOST:PORT, which every process and host shares.

    `limits` is the library Flask-Limiter counts with, on the same storage URIs. It is called
    directly: Flask-Limiter resolved and evaluated its limits twice for each request (in its
    before_request and in its decorator), which cost an activation more than the Redis round
    trip itself. One call to the storage a request; no X-RateLimit-* headers (each would cost
    a second call, for the window's reset time); a refusal says when to come back."""

    def __init__(self, spec: str, storage_uri: str, scope: str) -> None:
        try:
            self.limits = parse_many(spec)
        except ValueError:
            raise ConfigError(
                f"--rate-limit {spec!r}: give a rate such as '10 per minute'"
            ) from None
        try:
            storage = storage_from_string(storage_uri)
        except (ConfigurationError, ValueError) as exc:
            # Neither the URI nor the library's message (which repeats it) may show a password.
            shown = _without_password(storage_uri)
            why = "unknown storage scheme" if isinstance(exc, ConfigurationError) else "bad URI"
            raise ConfigError(
                f"--rate-limit-storage {shown}: {why} (give memory:// or redis://HOST:PORT)"
            ) from None
        self.scope = scope
        self._window = FixedWindowRateLimiter(storage)

    def hit(self, client: str) -> None:
        """Count one request of CLIENT; RateLimited if it is over a limit."""
        for limit in self.limits:
            if not self._window.hit(limit, self.scope, client):
                raise RateLimited(limit)

    def __call__(self, view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            # No address (a WSGI server that gives none): counted as Flask-Limiter did.
            self.hit(request.remote_addr or "127.0.0.1")
            return view(*args, **kwargs)

        return limited


def _without_password(uri: str) -> str:
    """URI without its user part (which may hold a password), shown as ***."""
    scheme, sep, rest = uri.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}://***@{host}" if sep and at else uri


def page_error(reason: str, status: int, message: str) -> Any:
    template = current_app.config.get("PROVISION_ERROR_TEMPLATE", "error.html")
    return render_template(template, reason=reason, message=message, status=status), status


def api_error(reason: str, status: int, message: str) -> Any:
    return jsonify({"error": {"reason": reason, "message": message}}), status


def error(reason: str, status: int, message: str) -> Any:
    """An error in the route's kind: JSON under /api/, a page elsewhere."""
    return (api_error if request.path.startswith("/api/") else page_error)(reason, status, message)


def bounded_int(text: str, low: int, high: int) -> int | None:
    """TEXT as a whole number in LOW..HIGH, or None: a query parameter never reaches a query
    unbounded (a 25-digit limit overflows every database integer)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(high)):
        return None
    value = int(text)
    return value if low <= value <= high else None


def redact_path(path: str) -> str:
    """PATH as a log line may show it: no payload token, no serial."""
    return _REDACT_SERIAL.sub(r"\1<serial>", _REDACT.sub(r"\1<token>", path))


def csp_nonce() -> str:
    """This answer's CSP nonce, made when a page first asks for one (a page with a script):
    JSON answers and pages without scripts need none, and spare the random bytes."""
    nonce: str | None = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return nonce


def _headers(resp: Response) -> Response:
    nonce = g.get("csp_nonce")
    headers = resp.headers
    headers["Content-Security-Policy"] = (
        _CSP.format(scripts=f"script-src 'self' 'nonce-{nonce}'") if nonce else _CSP_WITHOUT_NONCE
    )
    for name, value in _FIXED_HEADERS:
        headers[name] = value
    headers.setdefault("Cache-Control", "no-store")
    if log.isEnabledFor(logging.INFO):  # the access log (serve turns it on)
        log.info(
            "%s %s %s %s",
            request.remote_addr,
            request.method,
            redact_path(request.path),
            resp.status_code,
        )
    return resp


def _too_many(exc: RateLimited) -> Any:
    from provision.web.metrics import rate_limited

    rate_limited()
    msg = "Too many activation attempts from your address; try again in a minute."
    resp, status = error("rate_limited", 429, msg)
    # The window's length: when the oldest of the counted attempts is forgotten at the latest.
    resp = current_app.make_response((resp, status))
    resp.headers["Retry-After"] = str(max(1, int(exc.limit.get_expiry())))
    return resp


def _csrf(exc: CSRFError) -> Any:
    return page_error(
        "csrf",
        400,
        "The form expired or did not come from this page; reload the page and try again.",
    )


def _http_error(exc: HTTPException) -> Any:
    # Every error status has a body of the route's kind: JSON under /api/, a page elsewhere
    # (a 413 from MAX_CONTENT_LENGTH included, which Flask would answer with HTML).
    code = exc.code or 500
    reason = HTTP_REASONS.get(code, "bad_request" if code < 500 else "internal")
    return error(reason, code, _HTTP_MESSAGES.get(code) or exc.description or reason)


def _internal(exc: Exception) -> Any:
    return error("internal", 500, "Something went wrong on our side; please try again later.")


def _no_keyring(exc: KeyringError) -> Any:
    # The keyring file changed and does not load: refuse rather than use stale keys.
    log.error("keyring unavailable: %s", exc)
    return error("unavailable", 503, "The service cannot check activation codes right now.")


def _healthz() -> Any:
    """Alive: the process answers (nothing else is looked at)."""
    return jsonify({"ok": True})


def _readyz() -> Any:
    """Ready: the registry answers a query and the keyring file reads; 503 naming what is not."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.registry.ping()
        checks["registry"] = "ok"
    except Exception as exc:
        checks["registry"] = type(exc).__name__
    try:
        svc.keyring()
        checks["keyring"] = "ok"
    except Exception as exc:
        checks["keyring"] = type(exc).__name__
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"ready": ready, "checks": checks}), 200 if ready else 503
