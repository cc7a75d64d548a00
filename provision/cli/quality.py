"""Quality: trace devices by their components, and recalls (create, list, show, release,
close, export)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from provision.cli.common import (
    ProvisionGroup,
    Settings,
    emit,
    format_option,
    json_option,
    operator,
    pass_settings,
)
from provision.text import escape_control, plural

if TYPE_CHECKING:
    from provision.recalls import RecallInfo
    from provision.trace import TraceQuery

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "csv", "json", "pdf")  # provision.trace.FORMATS, without importing it


def trace_filters(f: F) -> F:
    """The component filters trace and recall create share; at least one is required."""
    options = [
        ("--lot", "Components of this lot."),
        ("--supplier", "Components from this supplier."),
        ("--component-type", "Components of this type (mcu, battery, ...)."),
        (
            "--component-serial",
            "The component with this serial (looked up through its keyed hash; needs the keyring).",
        ),
    ]
    for name, text in reversed(options):
        f = click.option(name, metavar="TEXT", help=text)(f)
    return f


def _query(
    lot: str | None, supplier: str | None, component_type: str | None, serial: str | None
) -> TraceQuery:
    from provision.trace import TraceQuery

    return TraceQuery(lot, supplier, component_type, serial)


@click.command()
@trace_filters
@format_option(
    *FORMATS, help="Report format; csv and json stream, pdf (with charts) needs --output."
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False),
    help="Write the report to this file (atomically) instead of stdout.",
)
@json_option
@pass_settings
def trace(
    settings: Settings,
    lot: str | None,
    supplier: str | None,
    component_type: str | None,
    component_serial: str | None,
    fmt: str,
    output_path: str | None,
    as_json: bool,
) -> None:
    """List every device that carries matching components, then counts by status and batch.

    Every given filter must match the same component. --json is --format json.

    \b
    Example (a supplier reports a bad battery lot):
      provision trace --lot L2611-07 --supplier ACME
      provision trace --lot L2611-07 --format pdf --output lot-L2611-07.pdf
      provision trace --component-serial BAT-0042-99 --json
    """
    from provision.errors import UsageError
    from provision.trace import trace_components, write_trace

    if as_json:
        if fmt not in ("table", "json"):
            raise UsageError(f"--json and --format {fmt} ask for different reports")
        fmt = "json"
    keyring = settings.keyring() if component_serial is not None else None
    result = trace_components(
        settings.registry(), keyring, _query(lot, supplier, component_type, component_serial)
    )
    summary = write_trace(result, fmt, output_path, sys.stdout)
    if output_path is not None:
        click.echo(
            f"Trace: {plural(summary.devices, 'device')} -> {escape_control(output_path)}",
            err=True,
        )


@click.group(cls=ProvisionGroup)
def recall() -> None:
    """Recalls: the devices a trace matched, kept; with --hold, their activation waits.

    \b
    Example:
      provision recall create battery-2611 --lot L2611-07 --reason "cells swell" --hold
      provision recall show battery-2611
      provision recall export battery-2611 --owners --output owners.csv
      provision recall release battery-2611 3f9a0c1d2e4b5a69
      provision recall close battery-2611
    """


@recall.command("create")
@click.argument("name")
@trace_filters
@click.option("--reason", required=True, help="Why; shown in each device's history.")
@click.option(
    "--hold", is_flag=True, help="The recall's pending devices cannot be activated until released."
)
@json_option
@pass_settings
def recall_create(
    settings: Settings,
    name: str,
    lot: str | None,
    supplier: str | None,
    component_type: str | None,
    component_serial: str | None,
    reason: str,
    hold: bool,
    as_json: bool,
) -> None:
    """Record a recall of the devices that carry matching components now.

    \b
    Example:
      provision recall create battery-2611 --lot L2611-07 --supplier ACME \\
        --reason "cells swell above 45 C" --hold
    """
    from provision.recalls import create_recall

    info = create_recall(
        *settings.registry_with_keyring(),
        name,
        _query(lot, supplier, component_type, component_serial),
        reason,
        hold=hold,
        actor=operator(),
    )
    c = info.counts
    text = f"Recall {info.recall.name}: {plural(c.devices, 'device')} ({_statuses(c.by_status)})"
    if hold:
        text += f"; hold: {plural(c.held, 'pending device')} cannot be activated"
    emit(as_json, info.to_json(), text + ".")


@recall.command("list")
@json_option
@pass_settings
def recall_list(settings: Settings, as_json: bool) -> None:
    """List the recalls, oldest first.

    \b
    Example:
      provision recall list
    """
    from provision.recalls import list_recalls

    infos = list_recalls(settings.registry())
    row = "{:<32}  {:<6}  {:<4}  {:>9}  {:>9}  {}"
    rows = [row.format("NAME", "STATE", "HOLD", "DEVICES", "HELD", "CREATED")]
    for i in infos:
        r, c = i.recall, i.counts
        rows.append(
            row.format(
                r.name,
                "open" if r.is_open else "closed",
                "yes" if r.hold else "no",
                f"{c.devices:,}",
                f"{c.held:,}",
                f"{r.created_at:%Y-%m-%d %H:%M} by {r.created_by}",
            )
        )
    if not infos:
        rows = ["No recalls."]
    emit(as_json, {"recalls": [i.to_json() for i in infos]}, "\n".join(rows))


@recall.command("show")
@click.argument("name")
@json_option
@pass_settings
def recall_show(settings: Settings, name: str, as_json: bool) -> None:
    """Show a recall: its query, reason, state, devices by status, held and released.

    \b
    Example:
      provision recall show battery-2611 --json
    """
    from provision.recalls import show_recall

    info = show_recall(settings.registry(), name)
    emit(as_json, info.to_json(), _show_text(info))


def _statuses(by_status: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {s}" for s, n in sorted(by_status.items())) or "none"


def _show_text(info: RecallInfo) -> str:
    import json

    r, c = info.recall, info.counts
    data = info.to_json()
    lines = [
        f"Recall {r.name} ({data['state']}{', hold' if r.hold else ''})",
        f"  reason: {r.reason}",
        f"  query: {json.dumps(data['query'], sort_keys=True)}",
        f"  created {data['created_at']} by {r.created_by}",
    ]
    if r.closed_at is not None:
        lines.append(f"  closed {data['closed_at']} by {r.closed_by}")
    lines.append(f"  devices: {c.devices:,} ({_statuses(c.by_status)})")
    lines.append(f"  held: {c.held:,}; released: {c.released:,}")
    return "\n".join(lines)


@recall.command("release")
@click.argument("name")
@click.argument("device_id")
@json_option
@pass_settings
def recall_release(settings: Settings, name: str, device_id: str, as_json: bool) -> None:
    """Release one device from an open recall: its activation is no longer held by it.

    \b
    Example:
      provision recall release battery-2611 3f9a0c1d2e4b5a69
      provision recall release battery-2611 "ID 3f9a0c"
    """
    from provision.recalls import release_device

    done = release_device(*settings.registry_with_keyring(), name, device_id, actor=operator())
    did = done.device.device_id
    text = f"Device {did} released from recall {done.recall.name}."
    if done.still_held_by:
        text += f" It is still held by recall {done.still_held_by}."
    emit(
        as_json,
        {"recall": done.recall.name, "device_id": did, "still_held_by": done.still_held_by},
        text,
    )


@recall.command("close")
@click.argument("name")
@json_option
@pass_settings
def recall_close(settings: Settings, name: str, as_json: bool) -> None:
    """Close a recall: its hold ends; each of its devices' histories records it.

    \b
    Example:
      provision recall close battery-2611
    """
    from provision.recalls import close_recall

    info = close_recall(*settings.registry_with_keyring(), name, actor=operator())
    emit(
        as_json,
        info.to_json(),
        f"Recall {info.recall.name} closed ({plural(info.counts.devices, 'device')}).",
    )


@recall.command("export")
@click.argument("name")
@click.option(
    "--owners",
    is_flag=True,
    help="The owners of the recall's activated devices: device_id, user, activated_at (CSV).",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False),
    help="Write the CSV to this file (atomically, mode 0600) instead of stdout.",
)
@json_option
@pass_settings
def recall_export(
    settings: Settings, name: str, owners: bool, output_path: str | None, as_json: bool
) -> None:
    """Write the owners of a recall's activated devices as CSV, for their notification.

    Devices released from the recall are left out. Cells a spreadsheet would run as a
    formula start with an apostrophe. With --output, --json prints what was written.

    \b
    Example:
      provision recall export battery-2611 --owners --output owners.csv
    """
    from provision.errors import UsageError
    from provision.recalls import export_owners
    from provision.trace import text_output

    if not owners:
        raise UsageError("give --owners (the only export so far)")
    if as_json and output_path is None:
        raise UsageError("--json needs --output PATH (without it the CSV goes to stdout)")
    with text_output(output_path, sys.stdout) as fh:
        n = export_owners(settings.registry(), name, fh)
    if output_path is not None:
        line = f"{plural(n, 'owner')} -> {escape_control(output_path)}"
        if as_json:
            emit(True, {"recall": name, "owners": n, "output": output_path}, line)
        else:
            click.echo(line, err=True)
