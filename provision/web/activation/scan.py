"""The scan pages: what a phone opens from the QR (`/A/<token>`), and the activation form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, render_template, request

from provision.activation import ActivationRejected, activate, recalled
from provision.errors import ProvisionError, RegistryError
from provision.payload import extract_token, verify_payload
from provision.states import DeviceStatus, Reason
from provision.web.activation.reasons import refused_page
from provision.web.common import page_error, services
from provision.web.metrics import activation as count_activation


def scan_page(token: str) -> Any:
    svc = services()
    check = verify_payload(token, svc.keyring())
    if not check.valid:
        assert check.reason is not None
        return refused_page(check.reason)
    device = svc.registry.devices.get(check.device_id or "")
    if device is None:
        return refused_page(Reason.UNKNOWN_DEVICE)
    if device.status == DeviceStatus.PENDING and recalled(svc.registry, device):
        return refused_page(Reason.RECALLED)  # say so now, not after the customer types
    return render_template(
        "scan.html",
        device=device,
        pending=device.status == DeviceStatus.PENDING,
        DeviceStatus=DeviceStatus,
        token=extract_token(token),
    )


def scan_post(token: str) -> Any:
    svc = services()
    user = (request.form.get("user") or "").strip()
    if not user:
        return page_error("missing_user", 400, "Enter your e-mail address or user name.")
    keyring = svc.keyring()  # outside the try: a keyring error is a 503, not a 400
    try:
        result = activate(
            svc.registry,
            keyring,
            token,
            user,
            ip=request.remote_addr,
            user_agent=request.headers.get("User-Agent"),
            fingerprint=request.form.get("fingerprint") or None,
        )
    except ActivationRejected as exc:
        count_activation(exc.reason)
        return refused_page(exc.reason)
    except RegistryError:
        raise  # the database failed: a 500, not the customer's mistake
    except ProvisionError as exc:
        count_activation(Reason.MALFORMED)
        return page_error("bad_request", 400, str(exc))
    count_activation(None)
    return render_template("activated.html", result=result, user=user), 200


def _linked_payload(gtin: str, serial: str) -> str:
    """A GS1 Digital Link scan's payload, from its path (decoded by the router: each serial
    character encoded again as the label had it) and its signature parameter."""
    from provision.gs1 import encode_serial

    return f"/01/{gtin}/21/{encode_serial(serial)}?s={request.args.get('s', '')}"


def linked_page(gtin: str, serial: str) -> Any:
    return scan_page(_linked_payload(gtin, serial))


def linked_post(gtin: str, serial: str) -> Any:
    return scan_post(_linked_payload(gtin, serial))


def blueprint(activation_limit: Callable[..., Any]) -> Blueprint:
    """The scan pages; ACTIVATION_LIMIT is the app's shared limit on activating POSTs."""
    bp = Blueprint("scan", __name__)
    # The QR holds an uppercase URL; browsers keep the path's case, so accept both.
    for prefix in ("A", "a"):
        bp.add_url_rule(f"/{prefix}/<token>", f"page_{prefix}", scan_page, methods=["GET"])
        bp.add_url_rule(
            f"/{prefix}/<token>",
            f"post_{prefix}",
            activation_limit(scan_post),
            methods=["POST"],
        )
    # A GS1 Digital Link label (`labels --payload digital-link`): /01/GTIN/21/SERIAL?s=SIG.
    rule = "/01/<gtin>/21/<path:serial>"
    bp.add_url_rule(rule, "linked_page", linked_page, methods=["GET"])
    bp.add_url_rule(rule, "linked_post", activation_limit(linked_post), methods=["POST"])
    return bp
