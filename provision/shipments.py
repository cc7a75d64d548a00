"""Shipments as a stored feed: `shipments import` (idempotent, all or nothing) and `list`.

The ERP sends shipments every day or month. Each file is validated whole first (the
manifest reader: `FILE:LINE: column: reason`); then every good row is stored in one
transaction, with its serial as the keyed hash (to match devices) and AES-GCM ciphertext (for
the analyst's follow-up), never as plaintext. A row's keyed row hash covers the serial and every
other field, so a row sent twice, in one file or in two, is stored once, and importing the same
file again stores nothing (and its summary says so).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from provision.errors import UsageError
from provision.keys import Keyring
from provision.manifests import LINE, SHIPMENTS, read_manifest, write_rejects
from provision.periods import moment
from provision.registry import Registry, utcnow
from provision.registry.shipments import ImportRecord, ShipmentRecord
from provision.serials import decrypt_serial, encrypt_serial, serial_hash, shipment_row_hash
from provision.text import plural

DEFAULT_SOURCE = "erp"
SOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
DELIMITERS = {",": ",", ";": ";", "tab": "\t", "\\t": "\t", "\t": "\t", "|": "|"}
CHUNK = 5000
_FIELDS = ("order_id", "customer", "destination", "carrier")


@dataclass(frozen=True)
class ImportSummary:
    """What an import did: rows read, stored (new), already stored, rejected."""

    file: str
    source: str
    import_id: int
    rows: int
    stored: int
    already_stored: int
    rejected: int
    reject_file: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "source": self.source,
            "import_id": self.import_id,
            "rows": self.rows,
            "stored": self.stored,
            "already_stored": self.already_stored,
            "rejected": self.rejected,
            "reject_file": self.reject_file,
        }

    def text(self) -> str:
        if self.rows and not self.stored:
            return (
                f"{self.file}: nothing new: {plural(self.rows, 'row')} stored already "
                f"(source {self.source})"
            )
        line = (
            f"{self.file}: {plural(self.stored, 'shipment')} stored, "
            f"{self.already_stored:,} already stored (source {self.source}, "
            f"import {self.import_id})"
        )
        if self.rejected:
            line += f"; {plural(self.rejected, 'row')} rejected to {self.reject_file}"
        return line


def parse_delimiter(value: str) -> str:
    """',' ';' '|' or tab (`tab` or `\\t`) as the one character it is."""
    found = DELIMITERS.get(value) or DELIMITERS.get(value.lower())
    if found is None:
        raise UsageError(f"--delimiter {value!r}: give ',', ';', '|' or tab")
    return found


def parse_map(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`COLUMN=HEADER` pairs: the file's header cell that holds each column."""
    out: dict[str, str] = {}
    for item in items:
        column, sep, header = item.partition("=")
        if not sep or not column.strip() or not header.strip():
            raise UsageError(f"--map {item!r}: give COLUMN=HEADER, e.g. serial='Serial No'")
        out[column.strip().lower()] = header.strip()
    return out


def import_shipments(
    registry: Registry,
    keyring: Keyring,
    path: str | Path,
    *,
    source: str = DEFAULT_SOURCE,
    column_map: Mapping[str, str] | None = None,
    delimiter: str = ",",
    reject_file: str | Path | None = None,
    by: str = "unknown",
    now: datetime | None = None,
) -> ImportSummary:
    """Validate a shipments file and store its rows (see the module docstring).

    Without REJECT_FILE any bad row stops the import before anything is stored; with it, the
    bad rows go there and the good ones are stored.
    """
    if not SOURCE_RE.fullmatch(source):
        raise UsageError(
            f"--source {source!r}: use 1-64 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    manifest = read_manifest(
        path, SHIPMENTS, delimiter=delimiter, column_map=dict(column_map or {})
    )
    rejected = len(manifest.bad_lines())
    if manifest.fatal or (rejected and reject_file is None):
        manifest.raise_if_bad()
    if rejected and reject_file is not None:
        write_rejects(reject_file, [manifest])
    pepper, data_key = keyring.pepper, keyring.data_key

    def rows() -> Iterator[list[dict[str, Any]]]:
        for frame in manifest.chunks(CHUNK):
            stamps = pd.to_datetime(frame["shipped_at"], format="ISO8601", utc=True)
            out = []
            for rec, at in zip(frame.to_dict("records"), stamps, strict=True):
                serial = rec["serial"]
                sh = serial_hash(pepper, serial)
                extra = [_text(rec.get(f)) for f in _FIELDS]
                rh = shipment_row_hash(pepper, sh, at.isoformat(), *extra)
                out.append(
                    {
                        "serial_hash": sh,
                        "serial_ct": encrypt_serial(data_key, f"shipment:{rh}", serial),
                        "shipped_at": at.to_pydatetime(),
                        **{f: v or None for f, v in zip(_FIELDS, extra, strict=True)},
                        "source": source,
                        "row_hash": rh,
                        "line": int(rec[LINE]),
                    }
                )
            yield out

    record = registry.shipments.store_import(
        source, str(path), manifest.sha256, manifest.good, rows(), by, now or utcnow()
    )
    return ImportSummary(
        str(path),
        source,
        record.id,
        record.rows,
        record.stored,
        record.rows - record.stored,
        rejected,
        str(reject_file) if rejected and reject_file is not None else None,
    )


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


@dataclass(frozen=True)
class ShipmentList:
    """Stored shipments matching a filter: how many, the newest of them, the imports."""

    count: int
    shipments: list[dict[str, Any]]
    imports: list[ImportRecord]
    by_source: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_source": self.by_source,
            "shipments": self.shipments,
            "imports": [
                {
                    "id": i.id,
                    "source": i.source,
                    "file": i.file_name,
                    "sha256": i.file_sha256,
                    "rows": i.rows,
                    "stored": i.stored,
                    "imported_at": i.imported_at.isoformat(),
                    "imported_by": i.imported_by,
                }
                for i in self.imports
            ],
        }


def list_shipments(
    registry: Registry,
    keyring: Keyring | None,
    *,
    source: str | None = None,
    since: date | datetime | None = None,
    limit: int = 100,
) -> ShipmentList:
    """The stored shipments from SOURCE shipped since SINCE: their count and the newest LIMIT
    (serials decrypted with the keyring, when given)."""
    start = moment(since)
    found = registry.shipments.listed(source, start, limit)
    return ShipmentList(
        registry.shipments.count(source, start),
        [_shipment_json(s, keyring) for s in found],
        registry.shipments.imports(source),
        registry.shipments.sources() if source is None else {},
    )


def _shipment_json(s: ShipmentRecord, keyring: Keyring | None) -> dict[str, Any]:
    serial = None
    if keyring is not None:
        serial = decrypt_serial(keyring.data_key, f"shipment:{s.row_hash}", s.serial_ct)
    return {
        "shipped_at": s.shipped_at.isoformat(),
        "serial": serial,
        "order_id": s.order_id,
        "customer": s.customer,
        "destination": s.destination,
        "carrier": s.carrier,
        "source": s.source,
        "import_id": s.import_id,
        "line": s.line,
    }


__all__ = [
    "ImportSummary",
    "ShipmentList",
    "import_shipments",
    "list_shipments",
    "parse_delimiter",
    "parse_map",
]
