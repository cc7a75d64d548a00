"""The device's own client for the public HTTP API (standard library only).

    from provision.client import DeviceClient, activate

    done = activate("https://act.example.com", scanned_url, "ann@example.com")
    device = DeviceClient("https://act.example.com", done.activation_token)
    device.log("voice_recording", {"recording_id": 42})
    for action in device.history(limit=10).actions:
        print(action["seq"], action["action_type"])

Reads that fail with 429, a 5xx or a network error are retried with exponential backoff
(honouring Retry-After, up to MAX_RETRY_AFTER seconds); writes (an activation, an action) only
when the service certainly did not act on them: 429, 503, or a refused connection. Each request
has a timeout. The
API's refusals become exceptions carrying its reason code: `ApiError.reason`, and a subclass for
each kind (Unauthorized, ActivationRefused, RateLimited, ...). Nothing here imports the rest of
provision, so a device app can vendor this one file.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import Any

__all__ = [
    "Activated",
    "ActivationRefused",
    "ApiError",
    "BadRequest",
    "DeviceClient",
    "DeviceHistory",
    "LoggedAction",
    "NotFound",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "Unreachable",
    "activate",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
MAX_RETRY_AFTER = 60.0
USER_AGENT = "provision-client/1"


class ApiError(Exception):
    """The service refused the request: `status` (HTTP), `reason` (the API's code), message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")


class BadRequest(ApiError):
    """400: the request was malformed (`bad_request`, `malformed`)."""


class Unauthorized(ApiError):
    """401: no valid activation token (or the device has been revoked since)."""


class ActivationRefused(ApiError):
    """The activation was refused (403, 404, 409 or 410); `.reason` says why.

    forged, unknown_key, revoked_key, revoked_device, recalled (403), unknown_device (404),
    already_activated (409), expired (410)."""


class NotFound(ApiError):
    """404 on anything but an activation."""


class RateLimited(ApiError):
    """429, still after every retry; `retry_after` is the server's advice in seconds."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float | None) -> None:
        super().__init__(status, reason, message)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx, still after every retry."""


class Unreachable(ApiError):
    """The server could not be reached (or timed out), still after every retry."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


@dataclass(frozen=True)
class Activated:
    """The device a scan activated, and its activation token (shown once: keep it)."""

    device_id: str
    device_type: str
    activation_token: str = field(repr=False)


@dataclass(frozen=True)
class LoggedAction:
    """An action the service stored: its id and its place in the device's chain."""

    id: int
    seq: int
    device_id: str


@dataclass(frozen=True)
class DeviceHistory:
    """The owner's view of a device's history, as the service sends it.

    The device, its components, its own actions and its own activation; everybody else's
    attempts only as counts (`other_attempts`)."""

    device: dict[str, Any]
    components: list[dict[str, Any]]
    pairing_events: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    other_attempts: dict[str, Any]


class _Http:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        sleep: Callable[[float], None],
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url: give http(s)://host[:port]")
        self.base = base_url.rstrip("/")
        # For messages: never a user or password the URL may carry.
        self.shown = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.sleep = sleep

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # A read may be repeated whatever went wrong. A write (an activation, an action) only
        # when the service certainly did not act on it: 429 and 503 (it refused before doing
        # anything), or a connection that was never made. After a timeout, a dropped
        # connection or another 5xx the write may have happened: retrying could activate
        # twice (and lose the token) or log an action twice, so the error is raised instead.
        safe = method == "GET"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            req = urllib.request.Request(self.base + path, data, headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.status, _json(resp.read())
            except urllib.error.HTTPError as exc:
                status, doc = exc.code, _json(exc.read())
                wait = _retry_after(exc.headers.get("Retry-After"))
                again = status in (429, 503) or (safe and status >= 500)
                if again and not last:
                    self.sleep(self._delay(attempt, wait))
                    continue
                raise _error(status, doc, path, wait) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                # Refused, or the name did not resolve: the request never left.
                never_sent = isinstance(reason, ConnectionRefusedError | socket.gaierror)
                if (safe or never_sent) and not last:
                    self.sleep(self._delay(attempt, None))
                    continue
                raise Unreachable(f"{self.shown}: {reason}") from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        # Exponential with jitter: many devices retrying after one outage do not come back
        # in step.
        return self.backoff * (2**attempt) * (0.5 + random.random() / 2)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error(status: int, doc: Any, path: str, retry_after: float | None) -> ApiError:
    err = doc.get("error") if isinstance(doc, dict) else None
    reason = str(err.get("reason", "")) if isinstance(err, dict) else ""
    message = str(err.get("message", "")) if isinstance(err, dict) else ""
    reason = reason or f"http_{status}"
    if status == 429:
        return RateLimited(status, reason, message, retry_after)
    if status >= 500:
        return ServerError(status, reason, message)
    if status == 401:
        return Unauthorized(status, reason, message)
    if path.endswith("/activations") and status in (403, 404, 409, 410):
        return ActivationRefused(status, reason, message)
    if status == 404:
        return NotFound(status, reason, message)
    if status == 400:
        return BadRequest(status, reason, message)
    return ApiError(status, reason, message)


def activate(
    base_url: str,
    payload: str,
    user: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> Activated:
    """Activate the device whose QR payload (or whole QR URL) was scanned, for USER."""
    http = _Http(base_url, timeout=timeout, retries=retries, backoff=backoff, sleep=sleep)
    body: dict[str, Any] = {"payload": payload}
    if user is not None:
        body["user"] = user
    _, doc = http.request("POST", "/api/v1/activations", body)
    return Activated(doc["device_id"], doc["device_type"], doc["activation_token"])


class DeviceClient:
    """A device's session with the service, under its activation token."""

    def __init__(
        self,
        base_url: str,
        activation_token: str,
        *,
        device_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """BASE_URL of the activation service; the device id is asked of it when not given."""
        self._http = _Http(base_url, timeout=timeout, retries=retries, backoff=backoff, sleep=sleep)
        self._token = activation_token
        self._device_id = device_id

    @property
    def device_id(self) -> str:
        """The device this token belongs to (asked of the service once)."""
        if self._device_id is None:
            _, doc = self._http.request("GET", "/api/v1/device", token=self._token)
            self._device_id = str(doc["device_id"])
        return self._device_id

    def log(self, action_type: str, metadata: Mapping[str, Any] | None = None) -> LoggedAction:
        """Append an action (1-64 of a-z 0-9 _ . : -) with JSON metadata to the device's log."""
        _, doc = self._http.request(
            "POST",
            f"/api/v1/devices/{self.device_id}/actions",
            {"action_type": action_type, "metadata": dict(metadata or {})},
            token=self._token,
        )
        return LoggedAction(int(doc["action_id"]), int(doc["seq"]), str(doc["device_id"]))

    def history(self, limit: int | None = None) -> DeviceHistory:
        """The owner's view of the device's history, oldest first (LIMIT: 1-10,000)."""
        query = f"?limit={int(limit)}" if limit is not None else ""
        _, doc = self._http.request(
            "GET", f"/api/v1/devices/{self.device_id}/history{query}", token=self._token
        )
        return DeviceHistory(
            doc["device"],
            doc.get("components", []),
            doc.get("pairing_events", []),
            doc.get("actions", []),
            doc.get("other_attempts", {}),
        )
