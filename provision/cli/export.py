"""Exports for trading partners: `provision export epcis` (GS1 EPCIS 2.0 JSON-LD)."""

from __future__ import annotations

from typing import Any

import click

from provision.cli.common import (
    DATE,
    ProvisionGroup,
    Settings,
    emit,
    json_option,
    pass_settings,
    typed_day,
)
from provision.errors import UsageError


@click.group(cls=ProvisionGroup)
def export() -> None:
    """Export the registry in a standard format.

    \b
    Example:
      provision export epcis --batch line1-20261130 --output line1.jsonld
    """


@export.command("epcis")
@click.option("--batch", help="Only this batch's devices.")
@click.option("--since", type=DATE, help="Only events at or after DATE (UTC).")
@click.option("--until", type=DATE, help="Only events up to DATE (UTC, that whole day).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the document here (atomically); without it, to standard output.",
)
@click.option(
    "--read-point",
    envvar="PROVISION_EPCIS_READ_POINT",
    metavar="URI",
    help="Where the factory's events are read (SGLN urn:epc:id:sgln:... or a Digital Link "
    ".../414/GLN); env PROVISION_EPCIS_READ_POINT. Left out when not given.",
)
@click.option(
    "--biz-location",
    envvar="PROVISION_EPCIS_BIZ_LOCATION",
    metavar="URI",
    help="The business location of those events, likewise; env PROVISION_EPCIS_BIZ_LOCATION.",
)
@click.option(
    "--domain",
    envvar="PROVISION_DIGITAL_LINK_DOMAIN",
    default="https://id.gs1.org",
    show_default=True,
    help="Domain of the devices' GS1 Digital Link EPCs; env PROVISION_DIGITAL_LINK_DOMAIN.",
)
@json_option
@pass_settings
def export_epcis(
    settings: Settings,
    batch: str | None,
    since: Any,
    until: Any,
    output: str | None,
    read_point: str | None,
    biz_location: str | None,
    domain: str,
    as_json: bool,
) -> None:
    """Write the devices' lives as a GS1 EPCIS 2.0 document (JSON-LD): commissioning,
    assembly of components, shipping (stored shipments), activation and revocation.

    Each event's eventID is its canonical GS1 event hash. A device with a GTIN is named by
    its GS1 Digital Link URI (DOMAIN/01/GTIN/21/SERIAL: the serial in clear); one without, by
    urn:provision:device:DEVICE_ID. The summary (events by kind) goes to standard output
    with --output, else to standard error.

    \b
    Example:
      provision export epcis --since 2026-11-01 --until 2026-11-30 \\
          --read-point urn:epc:id:sgln:4012345.00001.0 --output november.jsonld
    """
    import sys

    from provision.epcis import EpcisSettings, export_epcis
    from provision.periods import moment

    if as_json and output is None:
        raise UsageError("--json needs --output: the document itself goes to standard output")
    start, end = moment(typed_day(since)), moment(typed_day(until), end=True)
    if start is not None and end is not None and start >= end:
        raise UsageError("--since must not be after --until")
    registry, keyring = settings.registry_with_keyring()
    summary = export_epcis(
        registry,
        keyring,
        EpcisSettings(domain, read_point or None, biz_location or None),
        output,
        batch=batch,
        since=start,
        until=end,
        stream=sys.stdout,
    )
    counts = ", ".join(f"{n:,} {kind}" for kind, n in sorted(summary.events.items()))
    text = f"{summary.output}: {summary.devices:,} devices, {sum(summary.events.values()):,} events"
    text += f" ({counts})" if counts else ""
    if output is None:
        click.echo(text, err=True)
    else:
        emit(as_json, summary.to_json(), text)
