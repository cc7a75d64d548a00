"""GS1 identity: GTINs (check digit), a device's EPC as a GS1 Digital Link URI, locations.

A device with a GTIN is named by the GS1 Digital Link URI `{DOMAIN}/01/{GTIN-14}/21/{SERIAL}`
(GS1 Digital Link 1.2: the serial percent-encoded outside RFC 3986's unreserved characters);
the canonical form, which GS1's event hash is computed over, always uses `https://id.gs1.org`.
A device without one is named by the private URN `urn:provision:device:{device_id}`, which
reveals no serial.
"""

from __future__ import annotations

import re
from urllib.parse import quote

CANONICAL_DOMAIN = "https://id.gs1.org"
PRIVATE_DEVICE = "urn:provision:device:"
PRIVATE_COMPONENT = "urn:provision:component:"
GTIN_LENGTHS = (8, 12, 13, 14)
MAX_GS1_SERIAL = 20  # GS1 AI 21 (serial number) holds at most 20 characters
SERIAL_TOO_LONG_FOR_GTIN = (
    f"a serial with a gtin is a GS1 AI 21 serial number: at most {MAX_GS1_SERIAL} characters"
)
_PLAIN_SERIAL = re.compile(r"[A-Za-z0-9._-]{1,20}")
_SGLN = re.compile(r"urn:epc:id:sgln:(\d+)\.(\d*)\.(.+)")
_GLN_URI = re.compile(r"https?://[^/]+/414/(\d{13})(?:/254/([^/?#]+))?")


def check_digit(body: str) -> int:
    """The GS1 mod-10 check digit of BODY (all digits but the last)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def gtin_problem(value: str) -> str | None:
    """Why VALUE is not a GTIN-8, -12, -13 or -14, or None when it is one."""
    if not value.isdigit() or not value.isascii():
        return "a GTIN has digits only"
    if len(value) not in GTIN_LENGTHS:
        return f"a GTIN has 8, 12, 13 or 14 digits, not {len(value)}"
    want = check_digit(value[:-1])
    if int(value[-1]) != want:
        return f"check digit is {value[-1]}, should be {want}"
    return None


def gtin14(value: str) -> str:
    """A valid GTIN of any length as the 14 digits GS1 Digital Link carries (AI 01)."""
    return value.zfill(14)


def encode_serial(serial: str) -> str:
    """A serial (GS1 AI 82 characters) as a Digital Link path segment."""
    return quote(serial, safe="-._~")


def device_epc(
    gtin: str | None, serial: str, device_id: str, domain: str = CANONICAL_DOMAIN
) -> str:
    """The device's EPC: its GS1 Digital Link URI under DOMAIN, or its private URN."""
    if gtin is None:
        return PRIVATE_DEVICE + device_id
    return f"{domain.rstrip('/')}/01/{gtin14(gtin)}/21/{encode_serial(serial)}"


def canonical_epc(epc: str, domain: str) -> str:
    """EPC as GS1's event hash reads it: a Digital Link URI under DOMAIN moved to id.gs1.org,
    when its serial is one GS1's reference normaliser takes (at most 20 of A-Z a-z 0-9 . _ -);
    any other EPC as written."""
    prefix = domain.rstrip("/") + "/01/"
    if epc.startswith(prefix):
        rest = epc[len(prefix) :]
        if _PLAIN_SERIAL.fullmatch(rest.partition("/21/")[2]):
            return CANONICAL_DOMAIN + "/01/" + rest
    return epc


def component_epc(component_type: str, serial: str) -> str:
    """A component's EPC: a private URN of its type and own serial (it has no GTIN)."""
    return f"{PRIVATE_COMPONENT}{quote(component_type, safe='')}:{quote(serial, safe='')}"


def location_problem(uri: str) -> str | None:
    """Why URI is not a location a read point or business location can name, or None."""
    if not uri:
        return None
    m = _SGLN.fullmatch(uri)
    if m:
        if len(m.group(1) + m.group(2)) != 12:
            return "an SGLN's company prefix and location reference have 12 digits together"
        return None
    m = _GLN_URI.fullmatch(uri)
    if m:
        return gtin_problem(m.group(1)) and "its GLN's " + str(gtin_problem(m.group(1)))
    if re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*:\S+", uri):
        return None
    return "not a URI (give an SGLN urn:epc:id:sgln:... or a Digital Link .../414/GLN)"


def canonical_location(uri: str) -> str:
    """A location as GS1's event hash reads it: an SGLN as the Digital Link of its GLN
    (`https://id.gs1.org/414/{GLN}`, the extension as `/254/{ext}` unless it is "0")."""
    m = _SGLN.fullmatch(uri)
    if m:
        body = m.group(1) + m.group(2)
        gln = body + str(check_digit(body))
        ext = m.group(3)
        return f"{CANONICAL_DOMAIN}/414/{gln}" + (f"/254/{ext}" if ext != "0" else "")
    m = _GLN_URI.fullmatch(uri)
    if m:
        return f"{CANONICAL_DOMAIN}/414/{m.group(1)}" + (f"/254/{m.group(2)}" if m.group(2) else "")
    return uri


__all__ = [
    "canonical_epc",
    "canonical_location",
    "check_digit",
    "component_epc",
    "device_epc",
    "encode_serial",
    "gtin14",
    "gtin_problem",
    "location_problem",
]
