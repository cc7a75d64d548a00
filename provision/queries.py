"""Questions support and line engineers ask: which batches, which devices, and find anything.

Library functions the CLI and the staff console share; each returns records or plain data
and takes what a user typed as it was typed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from provision.errors import DeviceError, UsageError
from provision.keys import Keyring
from provision.payload import extract_token, token_header, verify_payload
from provision.periods import moment
from provision.registry import BatchRecord, DeviceFilter, DeviceRecord, Registry
from provision.serials import (
    component_serial_hash,
    serial_hash,
    serial_problem,
    serial_variants,
)

MAX_PAGE = 10_000
DEFAULT_PAGE = 50
_CURSOR_PREFIX = "d1."


# -- batches -----------------------------------------------------------------------------------


def batches_overview(registry: Registry) -> list[BatchRecord]:
    """Every batch, oldest first, with its devices by status, rejects, labels and keys."""
    return registry.batches.overview()


def batch_overview(registry: Registry, name: str) -> BatchRecord:
    found = registry.batches.overview(name)
    if not found:
        recent = registry.batches.names()[-5:]
        hint = f"; recent batches: {', '.join(recent)}" if recent else "; no batch registered yet"
        raise DeviceError(f"no batch named {name!r}{hint}")
    return found[0]


def batch_json(b: BatchRecord) -> dict[str, Any]:
    return {
        "batch": b.name,
        "created_at": _iso(b.created_at),
        "updated_at": _iso(b.updated_at),
        "devices": b.devices,
        "by_status": b.by_status,
        "rejected_rows": b.rejected_rows,
        "label_revision": b.label_revision,
        "labels_rendered_at": _iso(b.labels_rendered_at),
        "key_ids": list(b.key_ids),
        "manifest_sha256": b.manifest_sha256,
        "components_sha256": b.components_sha256,
    }


# -- devices -----------------------------------------------------------------------------------


@dataclass
class DevicePage:
    devices: list[DeviceRecord]
    next_cursor: str | None
    batch_names: dict[int, str] = field(default_factory=dict)


def list_devices(
    registry: Registry, flt: DeviceFilter, *, after: str | None = None, limit: int = DEFAULT_PAGE
) -> DevicePage:
    """One page of the devices FLT selects, in a stable order (registration order), and the
    cursor of the next page (None on the last). Keyset pagination: no OFFSET scan."""
    if not 1 <= limit <= MAX_PAGE:
        raise UsageError(f"--limit must be 1 to {MAX_PAGE}, not {limit}")
    batch_id = _batch_id(registry, flt)
    if batch_id is False:
        return DevicePage([], None)
    start = parse_cursor(after) if after else None
    rows = registry.devices.page(flt, batch_id, start, limit + 1)  # type: ignore[arg-type]
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = make_cursor(rows[-1].id) if more and rows else None
    return DevicePage(rows, cursor, _batch_names(registry))


def matches(device: DeviceRecord, flt: DeviceFilter, batch_names: dict[int, str]) -> bool:
    """Whether DEVICE is one FLT selects (as `registry.devices.page` would): the `devices`
    filters applied to devices found another way (`find`'s hits)."""
    if flt.batch is not None and batch_names.get(device.batch_id) != flt.batch:
        return False
    checks = (
        (flt.status, device.status),
        (flt.device_type, device.device_type),
        (flt.model, device.model),
        (flt.line, device.production_line),
    )
    if any(want is not None and have != want for want, have in checks):
        return False
    if flt.user is not None and (device.user_id or "").lower() != flt.user.lower():
        return False
    start, end = moment(flt.activated_since), moment(flt.activated_until, end=True)
    if start is not None or end is not None:
        at = device.activated_at
        if at is None or (start is not None and at < start) or (end is not None and at >= end):
            return False
    return True


def iter_devices(
    registry: Registry, flt: DeviceFilter, chunk: int = 5000
) -> Iterator[DeviceRecord]:
    """Every device FLT selects, a page at a time (flat memory for millions of rows)."""
    batch_id = _batch_id(registry, flt)
    if batch_id is False:
        return
    after: int | None = None
    while True:
        rows = registry.devices.page(flt, batch_id, after, chunk)  # type: ignore[arg-type]
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1].id


def device_row(device: DeviceRecord, batch_names: dict[int, str]) -> dict[str, Any]:
    """A device as a row of `provision devices` (table, CSV and JSON share these keys)."""
    return {
        "device_id": device.device_id,
        "batch": batch_names.get(device.batch_id, str(device.batch_id)),
        "status": device.status,
        "device_type": device.device_type,
        "model": device.model,
        "manufacturer": device.manufacturer,
        "line": device.production_line,
        "registered_at": _iso(device.created_at),
        "activated_at": _iso(device.activated_at),
        "user": device.user_id,
        "revoked_at": _iso(device.revoked_at),
        "key_id": device.key_id,
        "actions": device.action_count,
    }


DEVICE_COLUMNS = (
    "device_id",
    "batch",
    "status",
    "device_type",
    "model",
    "manufacturer",
    "line",
    "registered_at",
    "activated_at",
    "user",
    "revoked_at",
    "key_id",
    "actions",
)


def batch_names(registry: Registry) -> dict[int, str]:
    return _batch_names(registry)


def make_cursor(pk: int) -> str:
    """An opaque page cursor (the last row's place in the order)."""
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(str(pk).encode()).decode().rstrip("=")


def parse_cursor(cursor: str) -> int:
    try:
        if not cursor.startswith(_CURSOR_PREFIX):
            raise ValueError
        body = cursor[len(_CURSOR_PREFIX) :]
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
        if not text.isdigit() or len(text) > 19:
            raise ValueError
        return int(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise UsageError(
            f"--after {cursor!r}: not a cursor (give the `next` value a previous page printed)"
        ) from None


def _batch_id(registry: Registry, flt: DeviceFilter) -> int | bool | None:
    """The batch FLT names as an id; None for no batch filter; False for an unknown batch."""
    if flt.batch is None:
        return None
    found = registry.batches.id_of(flt.batch)
    return False if found is None else found


def _batch_names(registry: Registry) -> dict[int, str]:
    return registry.batches.names_by_id()


# -- find --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindHit:
    """One device a search found, and what of the text it matched on."""

    matched_on: str
    detail: str
    device: DeviceRecord


@dataclass
class FindResult:
    query: str
    hits: list[FindHit]
    hints: list[str] = field(default_factory=list)


_HEX_ID = re.compile(r"(?i)(?:id\s+)?([0-9a-f]{6,16})")
MAX_USER_HITS = 100


def find(registry: Registry, keyring: Keyring, text: str) -> FindResult:
    """Whatever a customer reads out or a scanner gives: a device id (or a unique prefix of 6
    or more, or `ID xxxx` as the label prints it), a QR URL or token, a serial (through the
    keyed hash, with a hint when only case or spaces differ), a user name or e-mail (exact,
    any case), or a component serial. Every way it matches is a hit, saying which."""
    query = text.strip()
    result = FindResult(query, [])
    if not query:
        raise UsageError("find: give the text to look for")
    seen: set[tuple[str, int]] = set()

    def hit(on: str, detail: str, device: DeviceRecord | None) -> None:
        if device is not None and (on, device.id) not in seen:
            seen.add((on, device.id))
            result.hits.append(FindHit(on, detail, device))

    _find_payload(registry, keyring, query, hit)
    if m := _HEX_ID.fullmatch(query):
        wanted = m.group(1).lower()
        if len(wanted) == 16:
            hit("device_id", wanted, registry.devices.get(wanted))
        else:
            found = registry.devices.ids_starting(wanted, limit=2)
            if len(found) == 1:
                hit("device_id_prefix", wanted, registry.devices.get(found[0]))
            elif found:
                result.hints.append(
                    f"{wanted} starts several device ids; give more of its characters"
                )
    if serial_problem(query) is None:
        hit(
            "serial",
            "keyed hash",
            registry.devices.by_serial_hash(serial_hash(keyring.pepper, query)),
        )
        for device in registry.devices.by_component_serial(
            component_serial_hash(keyring.pepper, query)
        ):
            hit("component_serial", "keyed hash", device)
    if not any(h.matched_on == "serial" for h in result.hits):
        for variant in serial_variants(query):
            meant = registry.devices.by_serial_hash(serial_hash(keyring.pepper, variant))
            hint = f"did you mean {variant!r}? (case or spaces differ)"
            hit("serial_variant", hint, meant)
    if len(query) <= 256:
        for device in registry.devices.by_user(query, limit=MAX_USER_HITS):
            hit("user", "case-insensitive", device)
    return result


def _find_payload(registry: Registry, keyring: Keyring, query: str, hit: Any) -> None:
    token = extract_token(query)
    if len(token) != 48:
        return
    check = verify_payload(query, keyring)
    if check.valid:
        hit("payload", "valid signature", registry.devices.get(check.device_id or ""))
        return
    header = token_header(token)
    if header is not None:
        # Not valid (expired, revoked key, forged...), yet it names a device: support wants it.
        hit("payload", f"not valid: {check.reason}", registry.devices.get(header[1]))


def find_json(result: FindResult, batch_names: dict[int, str]) -> dict[str, Any]:
    return {
        "query": result.query,
        "hits": [
            {"matched_on": h.matched_on, "detail": h.detail} | device_row(h.device, batch_names)
            for h in result.hits
        ],
        "hints": result.hints,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
