"""Serial rules (GS1 AI 82), the keyed serial hash, the device id and serials kept encrypted."""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_SERIAL_LENGTH = 64
# GS1 General Specifications, figure 7.11-1 (AI encodable character set 82).
GS1_AI82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
GS1_AI82_RE = re.compile("[" + re.escape(GS1_AI82) + "]+")

# Domain separation: the same pepper yields unrelated values for each purpose.
_HASH_DOMAIN = b"provision/serial-hash/v1\x00"
_ID_DOMAIN = b"provision/device-id/v1\x00"
_NONCE_BYTES = 12


def serial_problem(serial: str) -> str | None:
    """Why a (trimmed) serial is not acceptable, or None when it is."""
    if not serial:
        return "empty serial"
    if len(serial) > MAX_SERIAL_LENGTH:
        return f"serial is {len(serial)} characters long; at most {MAX_SERIAL_LENGTH} allowed"
    if GS1_AI82_RE.fullmatch(serial):
        return None
    bad = next(c for c in serial if c not in GS1_AI82)
    return f"serial contains {describe_char(bad)}, outside the GS1 AI 82 character set"


def serial_variants(serial: str) -> list[str]:
    """What SERIAL might have been meant as: other case, no white space; valid serials only."""
    squeezed = "".join(serial.split())
    variants = {v for s in (serial.strip(), squeezed) for v in (s, s.upper(), s.lower())}
    return sorted(v for v in variants - {serial} if serial_problem(v) is None)


def describe_char(c: str) -> str:
    """Name a character so an engineer can find it, invisible ones included."""
    names = {" ": "a space", "\t": "a tab", "\n": "a line break", "\r": "a carriage return"}
    if c in names:
        return names[c]
    if ord(c) < 32 or ord(c) == 127:
        return f"control character U+{ord(c):04X}"
    if "\udc80" <= c <= "\udcff":
        return f"an undecodable byte 0x{ord(c) - 0xDC00:02X}"
    return f"{c!r} (U+{ord(c):04X})"


def serial_hash(pepper: bytes, serial: str) -> str:
    """HMAC-SHA256 of the serial under the keyring pepper, as 64 hex characters."""
    return hmac.new(pepper, _HASH_DOMAIN + serial.encode(), hashlib.sha256).hexdigest()


def device_id(pepper: bytes, serial: str) -> str:
    """The public device id: 8 bytes of a second, domain-separated HMAC, as 16 hex chars."""
    return hmac.new(pepper, _ID_DOMAIN + serial.encode(), hashlib.sha256).digest()[:8].hex()


def encrypt_serial(data_key: bytes, device_id_: str, serial: str) -> bytes:
    """AES-GCM encrypt a serial, bound to its device id; nonce || ciphertext."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, serial.encode(), device_id_.encode())


def decrypt_serial(data_key: bytes, device_id_: str, blob: bytes) -> str:
    """Inverse of encrypt_serial; raises cryptography's InvalidTag on a wrong key or id."""
    nonce, ct = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
    return AESGCM(data_key).decrypt(nonce, ct, device_id_.encode()).decode()


_SHIPMENT_DOMAIN = b"provision/shipment-row/v1\x00"


def shipment_row_hash(pepper: bytes, serial_hash_: str, *values: str) -> str:
    """Keyed hash of a shipment row (its serial's hash and every other field, as text): the
    same row imported twice, from one file or two, has the same hash and is stored once."""
    msg = _SHIPMENT_DOMAIN + "\x1f".join((serial_hash_, *values)).encode()
    return hmac.new(pepper, msg, hashlib.sha256).hexdigest()


_COMPONENT_DOMAIN = b"provision/component-row/v1\x00"
_COMPONENT_SERIAL_DOMAIN = b"provision/component-serial/v1\x00"


def component_serial_hash(pepper: bytes, serial: str) -> str:
    """HMAC-SHA256 of a component's own serial under the pepper: what `find` looks up."""
    return hmac.new(pepper, _COMPONENT_SERIAL_DOMAIN + serial.encode(), hashlib.sha256).hexdigest()


def component_row_hash(pepper: bytes, serial_hash_: str, *values: str) -> str:
    """Identity of one component row, keyed (its component serial may be sensitive too)."""
    msg = _COMPONENT_DOMAIN + "\x1f".join((serial_hash_, *values)).encode()
    return hmac.new(pepper, msg, hashlib.sha256).hexdigest()
