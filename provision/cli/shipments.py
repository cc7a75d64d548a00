"""Supply chain: the stored shipments feed, and reconciling activations against shipments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provision.categories import CATEGORY_NAMES
from provision.cli.common import (
    DATE,
    ProvisionGroup,
    Settings,
    csv_choice,
    emit,
    json_option,
    operator,
    pass_settings,
    progress_bar,
    quiet_option,
    typed_day,
)
from provision.errors import FailOnHit, RowsRejected
from provision.text import escape_control, plural


@click.command()
@click.argument("shipments", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The report's period starts on DATE (UTC); earlier shipments still count as shipped.",
)
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The report's period ends with DATE (UTC, included).",
)
@click.option("--batch", help="Only this batch's devices, and their shipments.")
@click.option(
    "--as-of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Date the shipped-not-activated ages are computed at (default: today, UTC).",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    help="Folder to create for the report (default: OUTPUT/reconciliation-AS_OF-TIME).",
)
@click.option(
    "--format",
    "formats",
    default="csv,json,pdf",
    show_default=True,
    callback=csv_choice(("csv", "json", "pdf"), "--format"),
    help="Comma-separated outputs; summary.json is always written.",
)
@click.option(
    "--fail-on",
    default="",
    metavar="CATEGORY[,CATEGORY...]",
    callback=csv_choice(CATEGORY_NAMES, "--fail-on"),
    help="Exit with code 3 when any of these categories is non-empty (for cron alerts).",
)
@json_option
@quiet_option
@pass_settings
def reconcile(
    settings: Settings,
    shipments: str | None,
    since: Any,
    until: Any,
    batch: str | None,
    as_of: Any,
    report_dir: str | None,
    formats: tuple[str, ...],
    fail_on: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Compare activations against shipments and report every discrepancy.

    Without SHIPMENTS, the stored shipments (`shipments import`); with it, that file alone.
    --since and --until choose the report's period: its shipments are matched, and a device
    activated in it is activated_not_shipped only if no shipment of it is known up to the
    period's end (one shipped months before is not).

    \b
    Example (monthly, from the stored feed; alert on devices we never shipped):
      provision reconcile --since 2026-11-01 --until 2026-11-30 \\
          --fail-on activated_not_shipped,shipped_revoked
    """
    from datetime import UTC, datetime

    from provision.reconcile import reconcile_shipments

    first = since.date() if since else None
    last = until.date() if until else None
    day = as_of.date() if as_of else (last or datetime.now(UTC).date())
    target = (
        Path(report_dir)
        if report_dir
        else (
            Path(settings.output) / f"reconciliation-{day.isoformat()}-{datetime.now(UTC):%H%M%S}"
        )
    )
    result = reconcile_shipments(
        *settings.registry_with_keyring(),
        shipments,
        as_of=day,
        since=first,
        until=last,
        batch=batch,
        report_dir=target,
        formats=formats,
        on_progress=progress_bar(quiet),
    )
    summary = result.summary()
    width = max(len(n) for n in CATEGORY_NAMES)
    period = ""
    if first or last:
        period = f", period {first or '...'} to {last or '...'}"
    lines = [f"Reconciliation as of {day.isoformat()}{period}: {target}"]
    lines += [f"  {name:<{width}}  {count:>9,}" for name, count in result.counts.items()]
    emit(as_json, summary, "\n".join(lines))
    hits = [c for c in fail_on if result.counts[c] > 0]
    if hits:
        raise FailOnHit(f"non-empty: {', '.join(hits)} (--fail-on)")


@click.group(cls=ProvisionGroup)
def shipments() -> None:
    """The shipments feed: import what the ERP sends, list what is stored.

    \b
    Example (daily, from the ERP's export):
      provision shipments import /srv/erp/shipments-$(date +%F).csv --source erp
    """


@shipments.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--source",
    default="erp",
    show_default=True,
    help="Where the shipments come from (kept with each row; `list --source` selects by it).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="COLUMN=HEADER",
    help="The file's header cell that holds a column (repeatable): --map serial='Serial No'.",
)
@click.option(
    "--delimiter",
    default=",",
    show_default=True,
    help="Field separator: ',', ';', '|' or tab.",
)
@click.option(
    "--reject-file",
    type=click.Path(dir_okay=False),
    help="Write bad rows here (with their reasons) and store the good ones; exit code 4.",
)
@json_option
@pass_settings
def shipments_import(
    settings: Settings,
    file: str,
    source: str,
    maps: tuple[str, ...],
    delimiter: str,
    reject_file: str | None,
    as_json: bool,
) -> None:
    """Store a shipments file (serial, shipped_at; order_id, customer, destination, carrier).

    All or nothing: any bad row is reported as FILE:LINE: column: reason and nothing is stored,
    unless --reject-file. Idempotent: a row already stored is not stored again, and importing
    the same file twice stores nothing the second time (the summary says so).

    \b
    Example:
      provision shipments import sap-export.csv --source sap --delimiter ';' \\
          --map serial=Serialnummer --map shipped_at=Versanddatum
    """
    from provision.shipments import import_shipments, parse_delimiter, parse_map

    summary = import_shipments(
        *settings.registry_with_keyring(create=True),
        file,
        source=source,
        column_map=parse_map(maps),
        delimiter=parse_delimiter(delimiter),
        reject_file=reject_file,
        by=operator(),
    )
    emit(as_json, summary.to_json(), summary.text())
    if summary.rejected and summary.reject_file:
        raise RowsRejected(
            f"{plural(summary.rejected, 'row')} rejected, written to {summary.reject_file}; "
            "the other rows are stored"
        )


@shipments.command("list")
@click.option("--source", help="Only shipments from this source.")
@click.option("--since", type=DATE, help="Only shipments shipped at or after DATE (UTC).")
@click.option(
    "--limit",
    type=click.IntRange(0, 100_000),
    default=20,
    show_default=True,
    help="How many of the newest to show (the count is of all that match).",
)
@json_option
@pass_settings
def shipments_list(
    settings: Settings, source: str | None, since: Any, limit: int, as_json: bool
) -> None:
    """The stored shipments: how many match, the newest of them, and the imports.

    \b
    Example:
      provision shipments list --source erp --since 2026-11-01 --json
    """
    from provision.shipments import list_shipments

    registry, keyring = settings.registry_with_keyring()
    found = list_shipments(registry, keyring, source=source, since=typed_day(since), limit=limit)
    lines = [
        f"{found.count:,} shipments stored"
        + (f" from {source}" if source else "")
        + (f" shipped since {since:%Y-%m-%d}" if since else "")
    ]
    if found.by_source:
        lines.append("By source: " + ", ".join(f"{k} {n:,}" for k, n in found.by_source.items()))
    for s in found.shipments:
        lines.append(
            f"  {s['shipped_at'][:19]}  {escape_control(s['serial'] or '-'):<24} "
            f"{escape_control(s['order_id'] or '-'):<14} "
            f"{escape_control(s['customer'] or '-'):<20} {s['source']}"
        )
    if found.imports:
        lines.append("Imports:")
        for i in found.imports[-10:]:
            lines.append(
                f"  #{i.id} {i.imported_at:%Y-%m-%d %H:%M} {i.source}: "
                f"{escape_control(i.file_name)} ({i.stored:,} of {i.rows:,} rows new)"
            )
    emit(as_json, found.to_json(), "\n".join(lines))
