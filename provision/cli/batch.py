"""The nightly batch: register, labels, run, verify, generate."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from provision.cli.common import (
    MILLIMETRES,
    Settings,
    emit,
    json_option,
    pass_settings,
    progress_bar,
    quiet_option,
)
from provision.config import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_TTL_DAYS,
    MAX_COPIES,
    MAX_TTL_DAYS,
)
from provision.errors import ChecksFailed, ProvisionError, RowsRejected
from provision.payload import verify_payload
from provision.text import escape_control, plural

# -- the batch -------------------------------------------------------------------------------


@click.command()
@click.argument("serials", type=click.Path(dir_okay=False))
@click.option("--components", type=click.Path(dir_okay=False), help="Component manifest CSV.")
@click.option("--batch", help="Batch name (default: manifest name + first 8 hex of its SHA-256).")
@click.option("--device-type", help="Device type for rows that leave it empty.")
@click.option(
    "--ttl-days",
    type=click.IntRange(1, MAX_TTL_DAYS),
    default=DEFAULT_TTL_DAYS,
    show_default=True,
    help=f"Days the QR payload stays valid (at most {MAX_TTL_DAYS}).",
)
@click.option(
    "--reject-file",
    type=click.Path(dir_okay=False),
    help="Let good rows through; write bad rows with a reason column here.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Devices per transaction; a killed run loses at most one chunk of work.",
)
@json_option
@quiet_option
@pass_settings
def register(
    settings: Settings,
    serials: str,
    components: str | None,
    batch: str | None,
    device_type: str | None,
    ttl_days: int,
    reject_file: str | None,
    chunk_size: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Validate a serial manifest and register its devices as pending.

    Any bad row stops the batch before anything is written, unless --reject-file is given.
    Running the same manifest again registers nothing new.

    \b
    Example:
      provision register serials.csv --components components.csv --batch line1-20261128
    """
    from provision.pipeline import register_batch

    result = register_batch(
        *settings.registry_with_keyring(create=True),
        serials,
        components_path=components,
        batch=batch,
        device_type=device_type,
        ttl_days=ttl_days,
        reject_file=reject_file,
        chunk_size=chunk_size,
        on_progress=progress_bar(quiet),
    )
    warn_other_batches(result)
    data = {
        "batch": result.batch,
        "registered": result.registered,
        "already_registered": result.already_registered,
        "rejected": result.rejected,
        "other_batch": result.other_batch,
        "components": result.components,
    }
    if result.reject_file:
        data["reject_file"] = result.reject_file
    text = (
        f"Batch {result.batch}: {result.registered} registered, "
        f"{result.already_registered} already registered, "
        f"{result.other_batch} in other batches (skipped), {result.rejected} rejected"
        + (f" (see {result.reject_file})" if result.reject_file and result.rejected else "")
        + f"; {plural(result.components, 'component')}."
    )
    emit(as_json, data, text)
    raise_if_rejected(result)


def warn_other_batches(result: Any) -> None:
    """One line naming the batches that hold rows of this manifest already, with counts; then
    at most MAX_EXAMPLES of those rows, and how many more (stderr stays short at any size)."""
    from provision.pipeline import MAX_EXAMPLES

    if not result.other_batch:
        return
    where = ", ".join(f"{name} ({n:,})" for name, n in sorted(result.other_batches.items()))
    click.echo(
        f"warning: {plural(result.other_batch, 'row')} of this manifest "
        f"{'is' if result.other_batch == 1 else 'are'} registered in other batches already, "
        f"skipped: {where}",
        err=True,
    )
    for row in result.skipped[:MAX_EXAMPLES]:
        click.echo(f"warning: {escape_control(str(row))}", err=True)
    more = result.other_batch - min(len(result.skipped), MAX_EXAMPLES)
    if more > 0:
        click.echo(f"warning: and {more:,} more", err=True)


def raise_if_rejected(result: Any) -> None:
    """Exit code 4 when rows went to the reject file, so that cron reports it."""
    if result.rejected and result.reject_file:
        raise RowsRejected(
            f"{plural(result.rejected, 'row')} rejected, written to {result.reject_file}; "
            "the other rows are registered"
        )


@click.command()
@click.argument("batch")
@click.option(
    "--template",
    "-t",
    help="Template name (`provision templates list`) or path of a template TOML file "
    "[default: the station's, else avery-l7160].",
)
@click.option(
    "--start-at",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="First free label position on the first sheet (for a partly used sheet).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pdf", "zpl"]),
    help="pdf for sheets and drivers, zpl for thermal printers [default: the station's, else pdf].",
)
@click.option(
    "--copies",
    type=click.IntRange(1, MAX_COPIES),
    default=1,
    show_default=True,
    help=f"Print each label this many times (at most {MAX_COPIES}).",
)
@click.option(
    "--offset-x",
    type=MILLIMETRES,
    metavar="MM",
    help="Calibration: move every label right by MM (negative: left).",
)
@click.option(
    "--offset-y",
    type=MILLIMETRES,
    metavar="MM",
    help="Calibration: move every label down by MM (negative: up).",
)
@click.option(
    "--station",
    metavar="NAME",
    help="Use a station profile's offsets, template and format (`provision stations`).",
)
@click.option(
    "--payload",
    type=click.Choice(["compact", "digital-link"]),
    help="What the QR holds: compact (BASE_URL/A/TOKEN) or digital-link (a GS1 Digital Link "
    "URI BASE_URL/01/GTIN/21/SERIAL?s=SIG, read by retail scanners; every device needs a "
    "GTIN, and the serial is printed in clear) [default: the station's, else compact].",
)
@click.option(
    "--alignment-page",
    is_flag=True,
    help="Only write OUTPUT/alignment-TEMPLATE.pdf: label outlines and rulers.",
)
@json_option
@quiet_option
@pass_settings
def labels(
    settings: Settings,
    batch: str,
    template: str | None,
    start_at: int,
    fmt: str | None,
    copies: int,
    offset_x: float | None,
    offset_y: float | None,
    station: str | None,
    payload: str | None,
    alignment_page: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Render a batch's labels to OUTPUT/BATCH.pdf (or .zpl), then OUTPUT/BATCH.json.

    A re-render never overwrites a file a station may be printing: different content becomes
    BATCH.r2.pdf, BATCH.r3.pdf, ... and BATCH.json names the newest.

    \b
    Example:
      provision labels line1-20261128 --template avery-5160 --start-at 5
      provision labels line1-20261128 --station dock-zebra --format zpl --copies 2
      provision labels line1-20261128 --template avery-l7160 --alignment-page
      provision labels line1-20261128 --payload digital-link --template thermal-50x30
    """
    from provision.labels.stations import Station, get_station
    from provision.labels.templates import load_template
    from provision.pipeline import render_alignment, render_batch_labels

    profile = get_station(settings.stations, station) if station else Station("none")
    tpl = load_template(template or profile.template or "avery-l7160")
    dx = offset_x if offset_x is not None else profile.offset_x_mm
    dy = offset_y if offset_y is not None else profile.offset_y_mm
    if alignment_page:
        path = render_alignment(tpl, settings.output, offset_x_mm=dx, offset_y_mm=dy)
        emit(
            as_json,
            {
                "alignment_page": str(path),
                "template": tpl.name,
                "offset_x_mm": dx,
                "offset_y_mm": dy,
            },
            f"Alignment page ({tpl.name}): {path}",
        )
        return
    keyring = settings.keyring()  # each payload is signed again: none is stored
    base_url = settings.label_base_url()
    result = render_batch_labels(
        settings.registry(),
        batch,
        tpl,
        settings.output,
        base_url,
        keyring=keyring,
        start_at=start_at,
        fmt=fmt or profile.format or "pdf",
        copies=copies,
        offset_x_mm=dx,
        offset_y_mm=dy,
        on_progress=progress_bar(quiet),
        payload=payload or profile.payload or "compact",
    )
    emit(
        as_json,
        result.to_json(),
        f"{plural(result.labels, 'label')} on {plural(result.pages, 'page')} "
        f"({result.template}): {result.file}",
    )


@click.command()
@click.argument("job", type=click.Path(dir_okay=False))
@json_option
@quiet_option
@pass_settings
def run(settings: Settings, job: str, as_json: bool, quiet: bool) -> None:
    """Run a job file: register its manifests, then render its labels.

    \b
    Example (a cron line):
      30 1 * * *  cd /srv/provision && provision run jobs/line1.toml --quiet
    """
    from provision.jobs import load_job, run_job

    parsed = load_job(job)
    result = run_job(
        *settings.registry_with_keyring(create=True),
        parsed,
        base_url=settings.label_base_url(),
        output_dir=settings.output,
        stations_file=settings.stations,
        on_progress=progress_bar(quiet),
    )
    warn_other_batches(result.register)
    r, lab = result.register, result.labels
    rejects = f" (see {r.reject_file})" if r.reject_file and r.rejected else ""
    text = (
        f"Batch {r.batch}: {r.registered} registered, {r.already_registered} already "
        f"registered, {r.other_batch} in other batches, {r.rejected} rejected{rejects}.\n"
        f"Labels: {lab.labels} on {plural(lab.pages, 'page')} ({lab.template})\n"
        f"{lab.format.upper()}: {lab.file}\nSummary: {lab.summary}"
    )
    emit(as_json, result.to_json(), text)
    raise_if_rejected(r)


@click.command()
@click.argument("payload")
@json_option
@pass_settings
def verify(settings: Settings, payload: str, as_json: bool) -> None:
    """Check a payload or scanned URL offline (no database); `-` reads one per line from stdin.

    Exit code 1 when any payload is invalid.

    \b
    Example:
      provision verify HTTP://LOCALHOST:5001/A/AEAX...
      scanner-dump | provision verify - --json
    """
    keyring = settings.keyring()
    items = (line.strip() for line in sys.stdin) if payload == "-" else iter([payload])
    all_valid, seen = True, 0
    for item in items:
        if payload == "-" and not item:
            continue
        seen += 1
        result = verify_payload(item, keyring)
        all_valid &= result.valid
        if as_json:
            click.echo(json.dumps(result.to_json()))
        elif result.valid:
            assert result.expires_at is not None
            click.echo(
                f"valid: device {result.device_id}, key {result.key_id}, "
                f"expires {result.expires_at.isoformat()}"
            )
        else:
            click.echo(f"invalid: {result.reason}")
    if not seen:
        raise ProvisionError("no payloads on standard input")
    if not all_valid:
        raise ChecksFailed("a payload is not valid")


@click.command()
@click.argument("serial")
@click.argument("device_type", metavar="TYPE")
@click.option(
    "--component",
    "components",
    multiple=True,
    metavar="TYPE=SPEC",
    help="A fitted component; repeat for several.",
)
@click.option(
    "--template",
    "-t",
    default="thermal-50x30",
    show_default=True,
    help="Template of the one-label PDF.",
)
@click.option(
    "--ttl-days",
    type=click.IntRange(1, MAX_TTL_DAYS),
    default=DEFAULT_TTL_DAYS,
    show_default=True,
    help=f"Days the QR payload stays valid (at most {MAX_TTL_DAYS}).",
)
@json_option
@pass_settings
def generate(
    settings: Settings,
    serial: str,
    device_type: str,
    components: tuple[str, ...],
    template: str,
    ttl_days: int,
    as_json: bool,
) -> None:
    """Register one device; print its id and QR URL, write a PNG and a one-label PDF.

    \b
    Example:
      provision generate SN-000123 sensor --component battery=CR2032 --component mcu=STM32L4
    """
    from provision.labels.templates import load_template
    from provision.pipeline import generate_device

    parsed = []
    for c in components:
        t, sep, spec = c.partition("=")
        if not sep or not t.strip() or not spec.strip():
            raise click.BadParameter(f"{c!r} is not TYPE=SPEC", param_hint="--component")
        parsed.append((t.strip(), spec.strip()))
    tpl = load_template(template)
    base_url = settings.label_base_url()
    result = generate_device(
        *settings.registry_with_keyring(create=True),
        serial,
        device_type,
        base_url,
        settings.output,
        tpl,
        components=parsed,
        ttl_days=ttl_days,
    )
    status = "registered" if result.created else "already registered"
    if result.device_type != device_type.strip():
        click.echo(
            f"warning: this serial is registered as {result.device_type!r} "
            f"(batch {result.batch}), not {device_type.strip()!r}; nothing was changed",
            err=True,
        )
    emit(
        as_json,
        result.to_json(),
        f"Device {result.device_id} ({status}, batch {result.batch})\n"
        f"URL: {result.url}\nPNG: {result.png}\nPDF: {result.pdf}",
    )


@click.command()
@click.argument("batch")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@quiet_option
@pass_settings
def resign(settings: Settings, batch: str, yes: bool, as_json: bool, quiet: bool) -> None:
    """Sign a batch's pending devices again under the active key, and draw new labels.

    For labels under a revoked key (`keys revoke`) or a retired one. Each device's re-signing
    is recorded in its history; activated devices are untouched. The labels they had stop
    working: print the new revision (BATCH.r2.pdf, ...), drawn with the batch's last print
    settings (OUTPUT/BATCH.json).

    \b
    Example:
      provision keys rotate && provision keys revoke 1 --yes && provision resign line1-20261128
    """
    from provision.cli.common import operator
    from provision.pipeline import resign_batch, resign_plan

    registry, keyring = settings.registry_with_keyring()
    base_url = settings.label_base_url()
    plan = resign_plan(registry, keyring, batch)
    total = sum(plan.values())
    keys = ", ".join(f"key {k} ({n:,})" for k, n in sorted(plan.items()))
    if total:
        click.echo(
            f"Batch {batch}: {plural(total, 'pending device')} with payloads under {keys} "
            f"will get new payloads under key {keyring.active.id}; their printed labels stop "
            "working.",
            err=True,
        )
        if not yes:
            click.confirm("Sign them again and draw new labels?", abort=True, err=True)
    result = resign_batch(
        registry,
        keyring,
        batch,
        settings.output,
        base_url,
        actor=operator(),
        on_progress=progress_bar(quiet),
    )
    lab = result.labels
    emit(
        as_json,
        result.to_json(),
        f"Batch {batch}: {plural(result.resigned, 'device')} re-signed under key "
        f"{result.key_id}.\nLabels: {plural(lab.labels, 'label')} on {plural(lab.pages, 'page')}"
        f" ({lab.template})\n{lab.format.upper()}: {lab.file}\nSummary: {lab.summary}",
    )
