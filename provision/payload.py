"""Compact signed payload: the token in the QR URL `BASE_URL/A/TOKEN`.

TOKEN is RFC 4648 base32 (no padding) of 30 bytes, so exactly 48 characters:

    version (1) | key id (1) | device id (8) | expiry, unix seconds (4) | tag (16)

tag = HMAC-SHA256(key, PURPOSE || the 14 bytes before it), truncated to 16 bytes. The purpose
string means a tag made for activation payloads is useless anywhere else. Uppercase base32 and an
uppercased base URL keep the whole URL in QR alphanumeric mode (version 4 at ECC M).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import struct
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from provision.errors import KeyringError, UsageError
from provision.keys import Keyring
from provision.states import KeyState, Reason

VERSION = 1
PURPOSE = b"provision/activation-payload/v1\x00"
TAG_BYTES = 16
TOKEN_CHARS = 48
_HEADER = struct.Struct(">BB8sI")
_TOKEN_RE = re.compile(rf"[A-Z2-7]{{{TOKEN_CHARS}}}")
_URL_SPLIT = re.compile(r"/[Aa]/")
# ASCII-only uppercasing: str.upper() maps e.g. "ı" (U+0131) to "I" and "ſ" (U+017F) to "S", which
# would let a non-base32 character stand in for a token character and still verify.
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Verification:
    """The outcome of verifying one payload; `reason` is set exactly when not valid."""

    valid: bool
    reason: Reason | None = None
    device_id: str | None = None
    key_id: int | None = None
    expires_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        if not self.valid:
            return {"valid": False, "reason": self.reason}
        assert self.expires_at is not None
        return {
            "valid": True,
            "device_id": self.device_id,
            "key_id": self.key_id,
            "expires_at": self.expires_at.isoformat(),
        }


def sign_token(key_id: int, secret: bytes, device_id: str, expires_at: int) -> str:
    """Build the 48-character token for one device."""
    header = _HEADER.pack(VERSION, key_id, bytes.fromhex(device_id), expires_at)
    tag = hmac.new(secret, PURPOSE + header, hashlib.sha256).digest()[:TAG_BYTES]
    return base64.b32encode(header + tag).decode("ascii")


def device_token(keyring: Keyring, key_id: int, device_id: str, expires_at: datetime) -> str:
    """Sign a device's payload again from its stored key id and expiry (it is never stored).

    HMAC is deterministic: the same bytes as when the device was registered.
    """
    key = keyring.get(key_id)
    if key is None or key.secret is None:
        state = "not in the keyring" if key is None else KeyState.REVOKED
        raise KeyringError(
            f"device {device_id}: its payload is signed with key {key_id}, which is {state}; "
            "it cannot be signed again"
        )
    return sign_token(key.id, key.secret, device_id, int(expires_at.timestamp()))


def check_base_url(url: str) -> str:
    """The activation service's base URL, as labels carry it: http(s)://HOST[:PORT][/PATH].

    A label printed with a base URL a phone cannot open is a batch to print again, so a value
    without scheme or host (`act.example.com`) is refused, not printed.
    """
    text = url.strip()
    parts = urllib.parse.urlsplit(text)
    problem = None
    if parts.scheme.lower() not in ("http", "https"):
        problem = "it needs http:// or https:// and a host, like https://act.example.com"
    elif not parts.hostname:
        problem = "it has no host"
    elif parts.query or parts.fragment or "@" in parts.netloc:
        problem = "it may not hold a query, a fragment or a user name"
    elif any(c.isspace() for c in text):
        problem = "it holds white space"
    else:
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            problem = "its port is not a number from 0 to 65535"
    if problem:
        raise UsageError(f"--base-url {text!r}: {problem}")
    return text.rstrip("/")


def is_loopback(url: str) -> bool:
    """True when URL's host is this machine (localhost, 127.x, ::1): no phone can open it."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def payload_url(base_url: str, token: str) -> str:
    """The QR content: uppercase so the whole URL stays in QR alphanumeric mode."""
    return f"{base_url.rstrip('/')}/A/{token}".upper()


def extract_token(payload_or_url: str) -> str:
    """The token part of a scanned URL, or the argument itself when it is a bare token."""
    text = payload_or_url.strip()
    parts = _URL_SPLIT.split(text)
    token = parts[-1].strip("/") if len(parts) > 1 else text
    return token.translate(_ASCII_UPPER)


def token_header(token: str) -> tuple[int, str, int] | None:
    """(key id, device id, expiry) as a well-formed token states them, signature unchecked:
    for support, who want the device a label names even when the label no longer verifies."""
    if not _TOKEN_RE.fullmatch(token):
        return None
    try:
        raw = base64.b32decode(token)
    except binascii.Error:
        return None
    version, key_id, dev, expiry = _HEADER.unpack(raw[: _HEADER.size])
    return (key_id, dev.hex(), expiry) if version == VERSION else None


def verify_payload(
    payload_or_url: str, keyring: Keyring, now: datetime | None = None
) -> Verification:
    """Check format, key, signature and expiry; no database involved."""
    token = extract_token(payload_or_url)
    if not _TOKEN_RE.fullmatch(token):
        return Verification(False, Reason.MALFORMED)
    try:
        raw = base64.b32decode(token)
    except binascii.Error:
        return Verification(False, Reason.MALFORMED)
    header, tag = raw[: _HEADER.size], raw[_HEADER.size :]
    version, key_id, dev, expiry = _HEADER.unpack(header)
    if version != VERSION:
        return Verification(False, Reason.MALFORMED)
    key = keyring.get(key_id)
    if key is None:
        return Verification(False, Reason.UNKNOWN_KEY, key_id=key_id)
    if key.state == KeyState.REVOKED or key.secret is None:
        return Verification(False, Reason.REVOKED_KEY, key_id=key_id)
    expected = hmac.new(key.secret, PURPOSE + header, hashlib.sha256).digest()[:TAG_BYTES]
    if not hmac.compare_digest(expected, tag):
        return Verification(False, Reason.FORGED, key_id=key_id)
    expires_at = datetime.fromtimestamp(expiry, UTC)
    if (now or datetime.now(UTC)) >= expires_at:
        return Verification(
            False, Reason.EXPIRED, device_id=dev.hex(), key_id=key_id, expires_at=expires_at
        )
    return Verification(True, None, dev.hex(), key_id, expires_at)
