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
    gtin: str | None = None  # a GS1 Digital Link payload's GTIN-14 (the device must have it)

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
    secret = _signing_secret(keyring, key_id, f"device {device_id}: its payload")
    return sign_token(key_id, secret, device_id, int(expires_at.timestamp()))


def _signing_secret(keyring: Keyring, key_id: int, what: str) -> bytes:
    """The secret of key KEY_ID, which signed WHAT; KeyringError if it cannot sign."""
    key = keyring.get(key_id)
    if key is None or key.secret is None:
        state = "not in the keyring" if key is None else KeyState.REVOKED
        raise KeyringError(
            f"{what} is signed with key {key_id}, which is {state}; it cannot be signed again"
        )
    return key.secret


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


# -- GS1 Digital Link payloads ---------------------------------------------------------------------
#
# `labels --payload digital-link` puts `{BASE_URL}/01/{GTIN-14}/21/{SERIAL}?s={SIG}` in the QR:
# a GS1 Digital Link URI (a retail scanner reads the GTIN and serial off it; GS1 Digital Link
# lets a URI carry attributes of its own in the query string, which a resolver passes on) that
# a phone opens on the activation service. SIG is base32 (no padding) of 22 bytes:
#
#     version 2 (1) | key id (1) | expiry, unix seconds (4) | tag (16)
#
# tag = HMAC-SHA256(key, DL_PURPOSE || GTIN-14 || 0x1F || serial || the 6 bytes before it): the
# signature covers the GTIN, the serial, the key id and the expiry. The device id is the keyed
# hash of the serial, as for every device, so verifying needs the keyring, not the database.

DL_VERSION = 2
DL_PURPOSE = b"provision/digital-link-payload/v1\x00"
_DL_HEADER = struct.Struct(">BBI")
DL_SIG_CHARS = 36  # 22 bytes in base32, without its padding
_DL_PATH = re.compile(r"/01/(\d{8}|\d{12,14})/21/([^/?#]+)/?(?:\?([^#]*))?(?:#.*)?")
_DL_SIG_RE = re.compile(rf"[A-Z2-7]{{{DL_SIG_CHARS}}}")


def _dl_tag(secret: bytes, gtin14: str, serial: str, header: bytes) -> bytes:
    message = DL_PURPOSE + gtin14.encode() + b"\x1f" + serial.encode() + header
    return hmac.new(secret, message, hashlib.sha256).digest()[:TAG_BYTES]


def sign_digital_link(key_id: int, secret: bytes, gtin14: str, serial: str, expires_at: int) -> str:
    """The SIG query value of a device's Digital Link payload."""
    header = _DL_HEADER.pack(DL_VERSION, key_id, expires_at)
    raw = header + _dl_tag(secret, gtin14, serial, header)
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def digital_link_url(
    base_url: str, keyring: Keyring, key_id: int, gtin14: str, serial: str, expires_at: datetime
) -> str:
    """A device's Digital Link payload, signed again from its key id and expiry."""
    from provision.gs1 import encode_serial

    secret = _signing_secret(keyring, key_id, f"the Digital Link payload of GTIN {gtin14}")
    sig = sign_digital_link(key_id, secret, gtin14, serial, int(expires_at.timestamp()))
    return f"{base_url.rstrip('/')}/01/{gtin14}/21/{encode_serial(serial)}?s={sig}"


def is_digital_link(payload_or_url: str) -> bool:
    return _DL_PATH.search(payload_or_url.strip()) is not None


def _verify_digital_link(text: str, keyring: Keyring, now: datetime | None) -> Verification:
    from provision.serials import device_id, serial_problem

    found = _DL_PATH.search(text)
    assert found is not None
    gtin, segment, query = found.group(1).zfill(14), found.group(2), found.group(3) or ""
    serial = urllib.parse.unquote(segment)
    sigs = urllib.parse.parse_qs(query).get("s", [])
    if serial_problem(serial) is not None or len(sigs) != 1:
        return Verification(False, Reason.MALFORMED)
    sig = sigs[0].translate(_ASCII_UPPER)
    if not _DL_SIG_RE.fullmatch(sig):
        return Verification(False, Reason.MALFORMED)
    raw = base64.b32decode(sig + "====")
    header, tag = raw[: _DL_HEADER.size], raw[_DL_HEADER.size :]
    version, key_id, expiry = _DL_HEADER.unpack(header)
    if version != DL_VERSION:
        return Verification(False, Reason.MALFORMED)
    secret, refused = _verifying_secret(keyring, key_id)
    if refused is not None:
        return refused
    if not hmac.compare_digest(_dl_tag(secret, gtin, serial, header), tag):
        return Verification(False, Reason.FORGED, key_id=key_id)
    return _unexpired(device_id(keyring.pepper, serial), key_id, expiry, now, gtin)


def _verifying_secret(keyring: Keyring, key_id: int) -> tuple[bytes, Verification | None]:
    """Key KEY_ID's secret, or the refusal of a payload it signed (unknown, revoked)."""
    key = keyring.get(key_id)
    if key is None:
        return b"", Verification(False, Reason.UNKNOWN_KEY, key_id=key_id)
    if key.state == KeyState.REVOKED or key.secret is None:
        return b"", Verification(False, Reason.REVOKED_KEY, key_id=key_id)
    return key.secret, None


def _unexpired(
    device: str, key_id: int, expiry: int, now: datetime | None, gtin: str | None = None
) -> Verification:
    """A payload whose signature holds: valid until EXPIRY (unix seconds)."""
    expires_at = datetime.fromtimestamp(expiry, UTC)
    if (now or datetime.now(UTC)) >= expires_at:
        return Verification(
            False, Reason.EXPIRED, device_id=device, key_id=key_id, expires_at=expires_at
        )
    return Verification(True, None, device, key_id, expires_at, gtin)


def verify_payload(
    payload_or_url: str, keyring: Keyring, now: datetime | None = None
) -> Verification:
    """Check format, key, signature and expiry; no database involved. A compact payload
    (`.../A/TOKEN`) or a GS1 Digital Link one (`.../01/GTIN/21/SERIAL?s=SIG`)."""
    if is_digital_link(payload_or_url):
        return _verify_digital_link(payload_or_url.strip(), keyring, now)
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
    secret, refused = _verifying_secret(keyring, key_id)
    if refused is not None:
        return refused
    expected = hmac.new(secret, PURPOSE + header, hashlib.sha256).digest()[:TAG_BYTES]
    if not hmac.compare_digest(expected, tag):
        return Verification(False, Reason.FORGED, key_id=key_id)
    return _unexpired(dev.hex(), key_id, expiry, now)
