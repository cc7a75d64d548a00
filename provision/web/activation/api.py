"""The JSON API: activate, log a device's actions, read its history (owner's view)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify, request

from provision.activation import ActivationRejected, activate, authenticate, device_of_token
from provision.audit import log_action, owner_history, record_refused_action
from provision.errors import DeviceError, ProvisionError, RegistryError
from provision.registry import DeviceRecord
from provision.states import DeviceStatus, Reason
from provision.web.activation.reasons import refused_api
from provision.web.common import api_error, bounded_int, services
from provision.web.metrics import activation as count_activation

MAX_HISTORY_LIMIT = 10_000


def api_activate() -> Any:
    svc = services()
    body = request.get_json(silent=True)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("payload"), str)
        or not isinstance(body.get("user"), str)
    ):
        return api_error(
            Reason.MALFORMED,
            400,
            'send JSON {"payload": "<QR URL or token>", "user": "<user id>"}',
        )
    keyring = svc.keyring()  # outside the try: a keyring error is a 503, not a 400
    fingerprint = body.get("fingerprint")
    try:
        result = activate(
            svc.registry,
            keyring,
            body["payload"],
            body["user"],
            ip=request.remote_addr,
            user_agent=request.headers.get("User-Agent"),
            fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        )
    except ActivationRejected as exc:
        count_activation(exc.reason)
        return refused_api(exc.reason)
    except RegistryError:
        raise  # the database failed: a 500, not the client's mistake
    except ProvisionError as exc:
        count_activation(Reason.MALFORMED)
        return api_error(Reason.MALFORMED, 400, str(exc))
    count_activation(None)
    data = result.to_json()
    return jsonify(
        {k: data[k] for k in ("device_id", "device_type", "activation_token")}
        | {"activated_at": data["activated_at"]}
    ), 201


def bearer_token() -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, else None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def bearer_device(device_id: str, *, revoked: bool = False) -> DeviceRecord | None:
    token = bearer_token()
    if token is None:
        return None
    return authenticate(services().registry, device_id, token, revoked=revoked)


def unauthorized() -> Any:
    resp, code = api_error("unauthorized", 401, "a valid activation token is required")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="provision"'
    return resp, code


def api_log_action(device_id: str) -> Any:
    device = bearer_device(device_id, revoked=True)
    if device is None:
        return unauthorized()
    body = request.get_json(silent=True)
    if device.status == DeviceStatus.REVOKED:
        # Its token is genuine, its device revoked: refused as any bad token is, and recorded
        # in the device's chain (the revoked_device_activity alert).
        svc = services()
        tried = body.get("action_type") if isinstance(body, dict) else None
        record_refused_action(svc.registry, svc.keyring(), device, tried, ip=request.remote_addr)
        return unauthorized()
    if not isinstance(body, dict) or not isinstance(body.get("action_type"), str):
        return api_error("bad_request", 400, 'send JSON {"action_type": "...", "metadata": {...}}')
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        return api_error("bad_request", 400, "metadata must be a JSON object")
    svc = services()
    keyring = svc.keyring()  # outside the try: a keyring error is a 503, not a 400
    try:
        entry = log_action(
            svc.registry,
            keyring,
            device,
            body["action_type"],
            metadata,
            ip=request.remote_addr,
            actor=device.user_id,
        )
    except RegistryError:
        raise
    except DeviceError as exc:
        if exc.reason == Reason.REVOKED_DEVICE:  # revoked meanwhile: refused and recorded
            return unauthorized()
        return api_error("bad_request", 400, str(exc))
    except ProvisionError as exc:
        return api_error("bad_request", 400, str(exc))
    return jsonify({"action_id": entry.id, "seq": entry.seq, "device_id": device.device_id}), 201


def api_device() -> Any:
    """The device the bearer token belongs to: how a device app learns its own id."""
    device = device_of_token(services().registry, bearer_token())
    if device is None:
        return unauthorized()
    return jsonify(
        {
            "device_id": device.device_id,
            "device_type": device.device_type,
            "model": device.model,
            "status": device.status,
            "activated_at": device.activated_at.isoformat() if device.activated_at else None,
        }
    )


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
    return jsonify(owner_history(services().registry, device, limit))


def blueprint(activation_limit: Callable[..., Any]) -> Blueprint:
    """The API; ACTIVATION_LIMIT is the app's shared limit on activating POSTs."""
    bp = Blueprint("api", __name__, url_prefix="/api/v1")
    bp.add_url_rule("/activations", "activate", activation_limit(api_activate), methods=["POST"])
    bp.add_url_rule("/devices/<device_id>/actions", "log_action", api_log_action, methods=["POST"])
    bp.add_url_rule("/devices/<device_id>/history", "history", api_history, methods=["GET"])
    bp.add_url_rule("/device", "device", api_device, methods=["GET"])
    return bp
