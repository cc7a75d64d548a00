"""Each refusal's HTTP status, and its error page or JSON (activation.py knows no HTTP)."""

from __future__ import annotations

from typing import Any

from provision.activation import REASONS
from provision.states import Reason
from provision.web.common import api_error, page_error

# The HTTP status of each refusal (activation.py knows no HTTP).
REASON_STATUS: dict[Reason, int] = {
    Reason.MALFORMED: 400,
    Reason.FORGED: 403,
    Reason.UNKNOWN_KEY: 403,
    Reason.REVOKED_KEY: 403,
    Reason.EXPIRED: 410,
    Reason.UNKNOWN_DEVICE: 404,
    Reason.REVOKED_DEVICE: 403,
    Reason.ALREADY_ACTIVATED: 409,
    # Forbidden for now, not gone: the hold ends when the recall releases the device.
    Reason.RECALLED: 403,
}


def refused_page(reason: Reason) -> Any:
    return page_error(reason, REASON_STATUS[reason], REASONS[reason])


def refused_api(reason: Reason) -> Any:
    return api_error(reason, REASON_STATUS[reason], REASONS[reason])
