"""Supply chain: reconcile activations against shipments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provision.categories import CATEGORY_NAMES
from provision.cli.common import (
    Settings,
    csv_choice,
    emit,
    json_option,
    pass_settings,
    progress_bar,
    quiet_option,
)
from provision.errors import FailOnHit


@click.command()
@click.argument("shipments", type=click.Path(dir_okay=False))
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
    shipments: str,
    as_of: Any,
    report_dir: str | None,
    formats: tuple[str, ...],
    fail_on: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Compare activations against a shipments file and report every discrepancy.

    \b
    Example (monthly, alert when devices surface that we never shipped):
      provision reconcile shipments-2026-11.csv --fail-on activated_not_shipped,shipped_revoked
    """
    from datetime import UTC, datetime

    from provision.reconcile import reconcile_shipments

    day = as_of.date() if as_of else datetime.now(UTC).date()
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
        report_dir=target,
        formats=formats,
        on_progress=progress_bar(quiet),
    )
    summary = result.summary()
    width = max(len(n) for n in CATEGORY_NAMES)
    lines = [f"Reconciliation as of {day.isoformat()}: {target}"]
    lines += [f"  {name:<{width}}  {count:>9,}" for name, count in result.counts.items()]
    emit(as_json, summary, "\n".join(lines))
    hits = [c for c in fail_on if result.counts[c] > 0]
    if hits:
        raise FailOnHit(f"non-empty: {', '.join(hits)} (--fail-on)")
