"""GS1 EPCIS 2.0 export: a device's life as events, streamed as one JSON-LD EPCISDocument.

Per device, in time order:

- commissioning: ObjectEvent ADD, bizStep `commissioning`, disposition `active`, with ILMD
  (`cbvmda:lotNumber`: the batch; `provision:manufacturedAt`: the manifest's date);
- assembly: an AggregationEvent ADD, bizStep `assembling`, the device's EPC as parentID and
  the components that have serials as childEPCs;
- shipping: an ObjectEvent OBSERVE, bizStep `shipping`, disposition `in_transit`, for each
  stored shipment of the device (its order as a `po` business transaction);
- activation: an ObjectEvent OBSERVE, bizStep `accepting`, disposition `retail_sold`;
- revocation: an ObjectEvent OBSERVE, bizStep `holding`, disposition `inactive`.

Every event's eventID is its canonical GS1 event hash (`ni:///sha-256;...?ver=CBV2.0`, the
algorithm of GS1's EPCIS and CBV 2.0 standards, section "Event hash"): the pre-hash string is
built here for these event shapes, and the tests compare each one with GS1's reference
implementation (PyPI `epcis-event-hash-generator`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from provision.errors import ConfigError, ProvisionError
from provision.files import atomic_writer
from provision.gs1 import (
    CANONICAL_DOMAIN,
    canonical_epc,
    canonical_location,
    component_epc,
    device_epc,
    location_problem,
)
from provision.serials import decrypt_serial
from provision.states import BizStep, Disposition

if TYPE_CHECKING:
    from provision.keys import Keyring
    from provision.registry import Registry

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
PROVISION_NS = "urn:provision:epcis:"
CONTEXT: list[Any] = [EPCIS_CONTEXT, {"provision": PROVISION_NS}]
CBV = "https://ref.gs1.org/cbv/"
ZONE = "+00:00"  # provision keeps UTC; eventTimeZoneOffset says so

COMMISSIONING = (BizStep.COMMISSIONING, Disposition.ACTIVE)
ASSEMBLING = (BizStep.ASSEMBLING, None)
SHIPPING = (BizStep.SHIPPING, Disposition.IN_TRANSIT)
ACTIVATION = (BizStep.ACCEPTING, Disposition.RETAIL_SOLD)
REVOCATION = (BizStep.HOLDING, Disposition.INACTIVE)


@dataclass(frozen=True)
class EpcisSettings:
    """Where the events happen (readPoint, bizLocation: SGLN or Digital Link URIs; None:
    left out) and the Digital Link domain of the devices' EPCs."""

    domain: str = CANONICAL_DOMAIN
    read_point: str | None = None
    biz_location: str | None = None


@dataclass
class DeviceStory:
    """What the export needs of one device (its serial decrypted)."""

    device_id: str
    serial: str
    gtin: str | None
    batch: str
    manufactured_at: str | None
    created_at: datetime
    activated_at: datetime | None
    revoked_at: datetime | None
    # (type, own serial, fitted at) of each component that has a serial
    components: list[tuple[str, str, datetime]] = field(default_factory=list)
    # (shipped_at, order id, source) of each stored shipment
    shipments: list[tuple[datetime, str | None, str]] = field(default_factory=list)


def stamp(when: datetime) -> str:
    """An event time as EPCIS carries it here: UTC, to the millisecond."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def device_events(
    story: DeviceStory,
    settings: EpcisSettings,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """The device's events whose time is in [SINCE, UNTIL), in time order."""
    epc = device_epc(story.gtin, story.serial, story.device_id, settings.domain)
    where = _where(settings)
    out: list[tuple[datetime, dict[str, Any]]] = []
    ilmd: dict[str, str] = {"cbvmda:lotNumber": story.batch}
    if story.manufactured_at:
        ilmd["provision:manufacturedAt"] = story.manufactured_at
    made = _object(story.created_at, epc, "ADD", COMMISSIONING, where, ilmd=ilmd)
    out.append((story.created_at, made))
    parts = [(t, s, at) for t, s, at in story.components if s]
    if parts:
        at = min(a for _, _, a in parts)
        event = {
            "type": "AggregationEvent",
            "eventTime": stamp(at),
            "eventTimeZoneOffset": ZONE,
            "parentID": epc,
            "childEPCs": [component_epc(t, s) for t, s, _ in parts],
            "action": "ADD",
            "bizStep": ASSEMBLING[0].value,
            **where,
        }
        out.append((at, event))
    for at, order, source in story.shipments:
        tx = None
        if order:
            tx = [{"type": "po", "bizTransaction": _order_uri(source, order)}]
        out.append((at, _object(at, epc, "OBSERVE", SHIPPING, where, transactions=tx)))
    if story.activated_at is not None:
        at = story.activated_at
        out.append((at, _object(at, epc, "OBSERVE", ACTIVATION, {})))
    if story.revoked_at is not None:
        at = story.revoked_at
        out.append((at, _object(at, epc, "OBSERVE", REVOCATION, where)))
    out.sort(key=lambda pair: pair[0])
    events = []
    for at, event in out:
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        rest = {k: v for k, v in event.items() if k != "type"}
        events.append({"type": event["type"], "eventID": event_id(event, settings.domain)} | rest)
    return events


def _where(settings: EpcisSettings) -> dict[str, Any]:
    where: dict[str, Any] = {}
    if settings.read_point:
        where["readPoint"] = {"id": settings.read_point}
    if settings.biz_location:
        where["bizLocation"] = {"id": settings.biz_location}
    return where


def _object(
    at: datetime,
    epc: str,
    action: str,
    why: tuple[BizStep, Disposition | None],
    where: dict[str, Any],
    *,
    ilmd: dict[str, str] | None = None,
    transactions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": stamp(at),
        "eventTimeZoneOffset": ZONE,
        "epcList": [epc],
        "action": action,
        "bizStep": why[0].value,
    }
    if why[1]:
        event["disposition"] = why[1].value
    event |= where
    if transactions:
        event["bizTransactionList"] = transactions
    if ilmd:
        event["ilmd"] = ilmd
    return event


def _order_uri(source: str, order: str) -> str:
    return f"urn:provision:order:{quote(source, safe='')}:{quote(order, safe='')}"


# -- the canonical event hash ---------------------------------------------------------------------


def event_id(event: dict[str, Any], domain: str = CANONICAL_DOMAIN) -> str:
    """The event's canonical GS1 event hash, as its eventID."""
    digest = hashlib.sha256(prehash(event, domain).encode()).hexdigest()
    return f"ni:///sha-256;{digest}?ver=CBV2.0"


def prehash(event: dict[str, Any], domain: str = CANONICAL_DOMAIN) -> str:
    """The pre-hash string of one of the events above: its fields in the standard's order,
    each `name=value` (lists sorted), vocabulary as web URIs, EPCs and locations canonical,
    then the fields the order does not name (ILMD), sorted."""
    parts = ["eventType=" + event["type"], "eventTime=" + event["eventTime"]]
    parts.append("eventTimeZoneOffset=" + event["eventTimeZoneOffset"])
    if "parentID" in event:
        parts.append("parentID=" + canonical_epc(event["parentID"], domain))
    for name in ("epcList", "childEPCs"):
        if name in event:
            epcs = sorted("epc=" + canonical_epc(e, domain) for e in event[name])
            parts.append(name + "".join(epcs))
    parts.append("action=" + event["action"])
    parts.append(f"bizStep={CBV}BizStep-{event['bizStep']}")
    if "disposition" in event:
        parts.append(f"disposition={CBV}Disp-{event['disposition']}")
    for name in ("readPoint", "bizLocation"):
        if name in event:
            parts.append(f"{name}id={canonical_location(event[name]['id'])}")
    if "bizTransactionList" in event:
        for tx in event["bizTransactionList"]:
            parts.append(
                f"bizTransactionListtype={CBV}BTT-{tx['type']}"
                f"bizTransaction={_value(tx['bizTransaction'])}"
            )
    if "ilmd" in event:
        values = sorted(_key(k) + "=" + _value(v) for k, v in event["ilmd"].items())
        parts.append("ilmd" + "".join(values))
    return "".join(parts)


def _key(key: str) -> str:
    """A namespaced key as the hash names it: a prefix this document's context declares
    becomes its IRI in braces; CBV's own prefixes stay as written."""
    if key.startswith("provision:"):
        return "{" + PROVISION_NS + "}" + key[len("provision:") :]
    return key


def _value(text: str) -> str:
    """A value as the hash writes it: a number in its shortest form, anything else as is."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if number != number or number in (float("inf"), float("-inf")):
        return text
    return str(int(number)) if int(number) == number else str(number)


# -- the document ---------------------------------------------------------------------------------


def document_chunks(
    events: Iterator[dict[str, Any]], created: datetime | None = None
) -> Iterator[str]:
    """An EPCISDocument as text, a piece at a time: the events are never all in memory."""
    head = {
        "@context": CONTEXT,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": stamp(created or datetime.now(UTC)),
    }
    opening = json.dumps(head, indent=2)[:-2]  # without the closing "\n}"
    yield opening + ',\n  "epcisBody": {\n    "eventList": ['
    first = True
    for event in events:
        yield ("\n      " if first else ",\n      ") + json.dumps(event, ensure_ascii=False)
        first = False
    yield "\n    ]\n  }\n}\n"


# -- the export -----------------------------------------------------------------------------------

EXPORT_CHUNK = 2000  # devices read, decrypted and turned into events at a time


@dataclass
class ExportSummary:
    """What an export wrote: events by kind, devices, and where."""

    output: str
    devices: int = 0
    events: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "devices": self.devices, "events": self.events}


def export_events(
    registry: Registry,
    keyring: Keyring,
    settings: EpcisSettings,
    *,
    batch: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    summary: ExportSummary | None = None,
) -> Iterator[dict[str, Any]]:
    """Every event of every device (of BATCH) in [SINCE, UNTIL), device by device in id
    order, a chunk of devices at a time (memory stays flat however many there are)."""
    from provision.registry.records import DeviceFilter
    from provision.serials import decrypt_serials

    batch_id = None
    if batch is not None:
        batch_id = registry.batches.id_of(batch)
        if batch_id is None:
            raise ProvisionError(f"--batch {batch!r}: no such batch")
    names = registry.batches.names_by_id()
    key = keyring.data_key
    after: int | None = None
    while True:
        page = registry.devices.page(DeviceFilter(), batch_id, after, EXPORT_CHUNK)
        if not page:
            return
        after = page[-1].id
        serials = decrypt_serials(key, [d.device_id for d in page], [d.serial_ct for d in page])
        parts = registry.devices.components_of_many([d.id for d in page])
        shipped = registry.shipments.of_serials([d.serial_hash for d in page])
        for device, serial in zip(page, serials, strict=True):
            story = DeviceStory(
                device.device_id,
                serial,
                device.gtin,
                names.get(device.batch_id, str(device.batch_id)),
                device.manufactured_at,
                device.created_at,
                device.activated_at,
                device.revoked_at,
                [
                    (c.component_type, decrypt_serial(key, c.row_hash[:16], ct), c.created_at)
                    for c in parts.get(device.id, [])
                    if (ct := c.component_serial_ct)
                ],
                [(s.shipped_at, s.order_id, s.source) for s in shipped.get(device.serial_hash, [])],
            )
            events = device_events(story, settings, since, until)
            if summary is not None:
                summary.devices += 1
                for event in events:
                    kind = _kind(event)
                    summary.events[kind] = summary.events.get(kind, 0) + 1
            yield from events


def _kind(event: dict[str, Any]) -> str:
    return event["type"] if event["type"] == "AggregationEvent" else event["bizStep"]


def export_epcis(
    registry: Registry,
    keyring: Keyring,
    settings: EpcisSettings,
    output: str | Path | None,
    *,
    batch: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    stream: TextIO | None = None,
) -> ExportSummary:
    """Write the EPCISDocument to OUTPUT (atomically: a hidden name, then renamed), or to
    STREAM when OUTPUT is None."""
    places = (("read point", settings.read_point), ("business location", settings.biz_location))
    for name, uri in places:
        if uri and (problem := location_problem(uri)):
            raise ConfigError(f"EPCIS {name} {uri!r}: {problem}")
    summary = ExportSummary(str(output) if output is not None else "-")
    events = export_events(
        registry, keyring, settings, batch=batch, since=since, until=until, summary=summary
    )
    if output is None:
        assert stream is not None
        for piece in document_chunks(events):
            stream.write(piece)
        return summary
    with atomic_writer(output) as fh:
        for piece in document_chunks(events):
            fh.write(piece.encode())
    return summary
