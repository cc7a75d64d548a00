"""The activation service: scan landing page, JSON API. The only module that knows HTTP."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, jsonify, render_template, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from provision.activation import REASONS, ActivationRejected, activate, authenticate
from provision.audit import log_action, owner_history
from provision.audit import make_sealer as _make_sealer
from provision.errors import KeyringError, ProvisionError
from provision.keys import Keyring, KeyringWatcher
from provision.payload import extract_token, verify_payload
from provision.registry import PENDING, Registry

log = logging.getLogger("provision.web")
DEFAULT_RATE_LIMIT = "10 per minute"
MAX_HISTORY_LIMIT = 10_000
KEYRING_CHECK_SECONDS = 0.5
# The machine-readable reason of each HTTP error status an /api/ route can answer with.
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
_SECRET_DOMAIN = b"provision/web-session/v1\x00"
# Request paths carry the payload token; it never reaches a log line in full.
_REDACT = re.compile(r"(?i)(/a/)[^/?#]+")


class _App(Flask):
    """Flask, except that an unexpected error is logged without the token in the path."""

    def log_exception(self, exc_info: Any) -> None:
        self.logger.error(
            "Exception on %s [%s]", redact_path(request.path), request.method, exc_info=exc_info
        )


@dataclass(frozen=True)
class WebSettings:
    """What the app needs; the CLI (`provision serve`) builds it from its options."""

    db_url: str
    keyring_path: str | None
    base_url: str
    trusted_proxies: int = 0
    rate_limit: str = DEFAULT_RATE_LIMIT


def bounded_int(text: str, low: int, high: int) -> int | None:
    """TEXT as a whole number in LOW..HIGH, or None: a query parameter never reaches a query
    unbounded (a 25-digit limit overflows every database integer)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(high)):
        return None
    value = int(text)
    return value if low <= value <= high else None


def redact_path(path: str) -> str:
    return _REDACT.sub(r"\1<token>", path)


@dataclass(frozen=True)
class Services:
    """What every request uses: the registry, and the keyring as the file holds it now."""

    registry: Registry
    keyrings: KeyringWatcher
    settings: WebSettings

    def keyring(self) -> Keyring:
        return self.keyrings.current()


def create_app(
    settings: WebSettings, *, registry: Registry | None = None, keyring: Keyring | None = None
) -> Flask:
    """The Flask application; `provision serve` runs it under waitress.

    The keyring is watched, not loaded once: a revoked or rotated key takes effect within
    KEYRING_CHECK_SECONDS (plus one request), in every process, without a restart.
    """
    app = _App(__name__)
    if keyring is not None:
        keyrings = KeyringWatcher(keyring.path, KEYRING_CHECK_SECONDS, initial=keyring)
    else:
        if not settings.keyring_path:
            raise KeyringError("no keyring given: set PROVISION_KEYRING (or --keyring)")
        keyrings = KeyringWatcher(settings.keyring_path, KEYRING_CHECK_SECONDS)
    keyring = keyrings.current()
    registry = registry or Registry(settings.db_url, sealer=_make_sealer(keyring))
    services = Services(registry, keyrings, settings)
    app.config.update(
        SECRET_KEY=hmac.new(keyring.pepper, _SECRET_DOMAIN, hashlib.sha256).digest(),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.lower().startswith("https://"),
        WTF_CSRF_TIME_LIMIT=3600,
        WTF_CSRF_SSL_STRICT=False,  # the Referer is suppressed by our own Referrer-Policy
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.extensions["provision"] = services
    if settings.trusted_proxies > 0:
        # Only behind a proxy we run does X-Forwarded-For say who the client is.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    csrf = CSRFProtect(app)
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", headers_enabled=True)
    # One budget per client address for every route that activates (/A/, /a/ and the API):
    # a per-route limit would let a client triple it by switching the path's case or the route.
    activation_limit = limiter.shared_limit(
        settings.rate_limit, scope="activation", methods=["POST"]
    )

    @app.before_request
    def _nonce() -> None:
        g.csp_nonce = secrets.token_urlsafe(16)

    @app.after_request
    def _headers(resp: Response) -> Response:
        nonce = getattr(g, "csp_nonce", "")
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self' 'nonce-" + nonce + "'; style-src 'self'; "
            "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers.setdefault("Cache-Control", "no-store")
        log.info(
            "%s %s %s %s",
            request.remote_addr,
            request.method,
            redact_path(request.path),
            resp.status_code,
        )
        return resp

    def page_error(reason: str, status: int | None = None, message: str | None = None) -> Any:
        code = status or REASONS.get(reason, (400, ""))[0]
        text = message or REASONS.get(reason, (0, reason))[1]
        return render_template("error.html", reason=reason, message=text), code

    def api_error(reason: str, status: int | None = None, message: str | None = None) -> Any:
        code = status or REASONS.get(reason, (400, ""))[0]
        text = message or REASONS.get(reason, (0, reason))[1]
        return jsonify({"error": {"reason": reason, "message": text}}), code

    def wants_json() -> bool:
        return request.path.startswith("/api/")

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> Any:
        msg = "Too many activation attempts from your address; try again in a minute."
        return (api_error if wants_json() else page_error)("rate_limited", 429, msg)

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Any:
        return page_error(
            "csrf",
            400,
            "The form expired or did not come from this page; reload the page and try again.",
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        # Every error status has a body of the route's kind: JSON under /api/, a page elsewhere
        # (a 413 from MAX_CONTENT_LENGTH included, which Flask would answer with HTML).
        code = exc.code or 500
        reason = HTTP_REASONS.get(code, "bad_request" if code < 500 else "internal")
        messages = {
            404: "Nothing here.",
            405: "That method is not allowed here.",
            413: f"The request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes.",
        }
        message = messages.get(code) or exc.description or reason
        return (api_error if wants_json() else page_error)(reason, code, message)

    @app.errorhandler(500)
    def _internal(exc: Exception) -> Any:
        return (api_error if wants_json() else page_error)(
            "internal", 500, "Something went wrong on our side; please try again later."
        )

    @app.errorhandler(KeyringError)
    def _no_keyring(exc: KeyringError) -> Any:
        # The keyring file changed and does not load: refuse rather than use stale keys.
        log.error("keyring unavailable: %s", exc)
        return (api_error if wants_json() else page_error)(
            "unavailable", 503, "The service cannot check activation codes right now."
        )

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"ok": True})

    def scan_page(token: str) -> Any:
        check = verify_payload(token, services.keyring())
        if not check.valid:
            assert check.reason is not None
            return page_error(check.reason)
        device = registry.device(check.device_id or "")
        if device is None:
            return page_error("unknown_device")
        return render_template(
            "scan.html",
            device=device,
            pending=device["status"] == PENDING,
            token=extract_token(token),
        )

    def scan_post(token: str) -> Any:
        user = (request.form.get("user") or "").strip()
        if not user:
            return page_error("missing_user", 400, "Enter your e-mail address or user name.")
        keyring = services.keyring()  # outside the try: a keyring error is a 503, not a 400
        try:
            result = activate(
                registry,
                keyring,
                token,
                user,
                ip=request.remote_addr,
                user_agent=request.headers.get("User-Agent"),
                fingerprint=request.form.get("fingerprint") or None,
            )
        except ActivationRejected as exc:
            return page_error(exc.reason)
        except ProvisionError as exc:
            return page_error("bad_request", 400, str(exc))
        return render_template("activated.html", result=result, user=user), 200

    # The QR holds an uppercase URL; browsers keep the path's case, so accept both.
    for prefix in ("A", "a"):
        app.add_url_rule(f"/{prefix}/<token>", f"scan_{prefix}", scan_page, methods=["GET"])
        app.add_url_rule(
            f"/{prefix}/<token>",
            f"scan_post_{prefix}",
            activation_limit(scan_post),
            methods=["POST"],
        )

    @app.post("/api/v1/activations")
    @csrf.exempt
    @activation_limit
    def api_activate() -> Any:
        body = request.get_json(silent=True)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("payload"), str)
            or not isinstance(body.get("user"), str)
        ):
            return api_error(
                "malformed", 400, 'send JSON {"payload": "<QR URL or token>", "user": "<user id>"}'
            )
        keyring = services.keyring()  # outside the try: a keyring error is a 503, not a 400
        try:
            result = activate(
                registry,
                keyring,
                body["payload"],
                body["user"],
                ip=request.remote_addr,
                user_agent=request.headers.get("User-Agent"),
                fingerprint=body.get("fingerprint")
                if isinstance(body.get("fingerprint"), str)
                else None,
            )
        except ActivationRejected as exc:
            return api_error(exc.reason)
        except ProvisionError as exc:
            return api_error("malformed", 400, str(exc))
        data = result.to_json()
        return jsonify(
            {k: data[k] for k in ("device_id", "device_type", "activation_token")}
            | {"activated_at": data["activated_at"]}
        ), 201

    def bearer_device(device_id: str) -> dict[str, Any] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return authenticate(registry, device_id, token.strip())

    def unauthorized() -> Any:
        resp, code = api_error("unauthorized", 401, "a valid activation token is required")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="provision"'
        return resp, code

    @app.post("/api/v1/devices/<device_id>/actions")
    @csrf.exempt
    def api_log_action(device_id: str) -> Any:
        device = bearer_device(device_id)
        if device is None:
            return unauthorized()
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("action_type"), str):
            return api_error(
                "bad_request", 400, 'send JSON {"action_type": "...", "metadata": {...}}'
            )
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            return api_error("bad_request", 400, "metadata must be a JSON object")
        keyring = services.keyring()  # outside the try: a keyring error is a 503, not a 400
        try:
            entry = log_action(
                registry,
                keyring,
                device,
                body["action_type"],
                metadata,
                ip=request.remote_addr,
                actor=device["user_id"],
            )
        except ProvisionError as exc:
            return api_error("bad_request", 400, str(exc))
        return jsonify(
            {"action_id": entry["id"], "seq": entry["seq"], "device_id": device["device_id"]}
        ), 201

    @app.get("/api/v1/devices/<device_id>/history")
    def api_history(device_id: str) -> Any:
        device = bearer_device(device_id)
        if device is None:
            return unauthorized()
        raw = request.args.get("limit")
        limit = bounded_int(raw, 1, MAX_HISTORY_LIMIT) if raw is not None else None
        if raw is not None and limit is None:
            return api_error(
                "bad_request", 400, f"limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}"
            )
        # The owner's view: its own actions and activation; other people's attempts as counts.
        return jsonify(owner_history(registry, device, limit))

    return app


def serve(app: Flask, host: str, port: int, threads: int) -> None:
    """Run under waitress, a production WSGI server (not Flask's development server)."""
    from waitress import serve as waitress_serve

    waitress_serve(app, host=host, port=port, threads=threads, ident="provision")
