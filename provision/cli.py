"""The `provision` command: each command parses, makes one library call, formats the result."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from provision import __version__
from provision.categories import CATEGORY_NAMES
from provision.config import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_TTL_DAYS,
    MAX_COPIES,
    MAX_OFFSET_MM,
    MAX_TTL_DAYS,
    SETTINGS,
)
from provision.errors import ManifestError, ProvisionError
from provision.keys import Keyring, init_keyring, load_keyring
from provision.payload import verify_payload
from provision.text import escape_control

if TYPE_CHECKING:
    from tqdm import tqdm

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """The global options, resolved; the registry and keyring open on first use."""

    db: str
    keyring_path: str | None
    base_url: str
    output: str
    stations: str
    _registry: Any = field(default=None, repr=False)
    _keyring: Keyring | None = field(default=None, repr=False)

    def registry(self) -> Any:
        if self._registry is None:
            from provision.audit import make_sealer
            from provision.registry import Registry

            # With the keyring at hand, an upgrade can seal the rows already there (0003).
            keyring = self._keyring
            if keyring is None and self.keyring_path:
                try:
                    keyring = self.keyring()
                except ProvisionError:
                    keyring = None  # the command says so itself if it needs the keyring
            sealer = make_sealer(keyring) if keyring is not None else None
            self._registry = Registry(self.db, sealer=sealer)
        return self._registry

    def registry_with_keyring(self) -> tuple[Any, Keyring]:
        """Both, the keyring first: a command that cannot sign must not create a database."""
        keyring = self.keyring()
        return self.registry(), keyring

    def keyring(self) -> Keyring:
        if self._keyring is None:
            self._keyring = load_keyring(self.keyring_path)
        return self._keyring

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


class ProvisionGroup(click.Group):
    """Turns ProvisionError into a one-line `Error: ...` on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ManifestError as exc:
            for row in exc.rows:
                click.echo(str(row), err=True)
            _fail(ctx, exc, "manifest", rows=[str(r) for r in exc.rows])
        except ProvisionError as exc:
            _fail(ctx, exc, type(exc).__name__.removesuffix("Error").lower() or "provision")


def _fail(ctx: click.Context, exc: Exception, kind: str, **extra: Any) -> None:
    if _wants_json(ctx):
        click.echo(json.dumps({"error": {"type": kind, "message": str(exc), **extra}}))
    # A message may quote what was typed or stored: no control character reaches the terminal.
    click.echo(f"Error: {escape_control(str(exc))}", err=True)
    ctx.exit(1)


def _wants_json(ctx: click.Context) -> bool:
    # ctx.meta is shared by a context and all its children, so the subcommand's --json is
    # visible here, where the error surfaces.
    return bool(ctx.meta.get(_JSON_META))


_JSON_META = "provision.json"


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_JSON_META] = value
    return value


class Millimetres(click.ParamType):
    """A calibration offset: a finite number of millimetres, at most MAX_OFFSET_MM either way
    (click's FloatRange lets nan through, and inf)."""

    name = "mm"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            mm = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of millimetres", param, ctx)
        if not math.isfinite(mm) or abs(mm) > MAX_OFFSET_MM:
            self.fail(
                f"{value} is not between -{MAX_OFFSET_MM:g} and {MAX_OFFSET_MM:g} mm", param, ctx
            )
        return mm


MILLIMETRES = Millimetres()


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        callback=_remember_json,
        is_eager=True,
        help="Machine-readable JSON output.",
    )(f)


def quiet_option(f: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


def emit(as_json: bool, data: Any, text: str) -> None:
    """Print DATA as JSON, or TEXT; no control character of a value reaches the terminal raw
    (values that may hold line breaks are escaped where the text is built, as in history)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo("\n".join(escape_control(line) for line in text.split("\n")))


def progress_bar(quiet: bool) -> Callable[[str, int, int], None]:
    """A tqdm bar per stage on stderr, shown only for long runs on a terminal."""
    bars: dict[str, tqdm[Any]] = {}

    def update(stage: str, done: int, total: int) -> None:
        if quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            if total < 2000:
                return
            from tqdm import tqdm  # here, not at the top: quick commands need not load it

            bar = bars[stage] = tqdm(
                total=total, desc=stage, unit="dev", file=sys.stderr, disable=None, leave=False
            )
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def pass_settings(f: F) -> F:
    @click.pass_obj
    @functools.wraps(f)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> Any:
        return f(settings, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def settings_options(f: F) -> F:
    """Global options from the settings table, each with its env var."""
    for s in reversed(SETTINGS):
        f = click.option(
            f"--{s.name.replace('_', '-')}",
            s.name,
            envvar=s.env,
            default=s.default,
            show_default=s.default is not None,
            show_envvar=True,
            metavar="PATH" if s.name in ("keyring", "output", "stations") else "URL",
            help=s.help,
        )(f)
    return f


@click.group(cls=ProvisionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@settings_options
@click.option("--verbose", "-v", is_flag=True, help="Log progress messages to stderr.")
@click.version_option(__version__, prog_name="provision")
@click.pass_context
def cli(
    ctx: click.Context,
    db: str,
    keyring: str | None,
    base_url: str,
    output: str,
    stations: str,
    verbose: bool,
) -> None:
    """Register devices, sign their QR codes and print their labels.

    \b
    Example: the nightly batch of a production line
      export PROVISION_KEYRING=/etc/provision/keyring.json
      provision keys init
      provision run jobs/demo.toml
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = Settings(db, keyring, base_url, output, stations)
    ctx.call_on_close(ctx.obj.close)


# -- keys ------------------------------------------------------------------------------------


@cli.group(cls=ProvisionGroup)
def keys() -> None:
    """Manage the keyring: signing keys and the serial-hash pepper.

    \b
    Example:
      provision --keyring /etc/provision/keyring.json keys init
    """


def _key_rows(keyring: Keyring) -> list[dict[str, Any]]:
    return [k.public() for k in keyring.keys]


def _key_table(keyring: Keyring) -> str:
    lines = [f"{'KEY':>4}  {'STATE':<12} CREATED"]
    for k in keyring.keys:
        extra = f"  (revoked {k.revoked_at})" if k.revoked_at else ""
        lines.append(f"{k.id:>4}  {k.state:<12} {k.created_at}{extra}")
    return "\n".join(lines)


def _keyring_path(settings: Settings) -> Path:
    if not settings.keyring_path:
        load_keyring(None)  # raises the "how to create one" message
    return Path(str(settings.keyring_path))


@keys.command("init")
@json_option
@pass_settings
def keys_init(settings: Settings, as_json: bool) -> None:
    """Create a new keyring (mode 0600) with one active signing key and a pepper.

    Refuses to overwrite an existing keyring.

    \b
    Example:
      PROVISION_KEYRING=/etc/provision/keyring.json provision keys init
    """
    path = _keyring_path(settings)
    keyring = init_keyring(path)
    emit(
        as_json,
        {"keyring": str(path), "keys": _key_rows(keyring)},
        f"Created keyring {path} (mode 0600) with signing key {keyring.active.id}.",
    )


@keys.command("rotate")
@json_option
@pass_settings
def keys_rotate(settings: Settings, as_json: bool) -> None:
    """Add a new active signing key; older keys stay valid for verification.

    \b
    Example:
      provision keys rotate
    """
    keyring = settings.keyring()
    key = keyring.rotate()
    keyring.save()
    emit(
        as_json,
        {"key_id": key.id, "keys": _key_rows(keyring)},
        f"Signing key {key.id} is now active; earlier keys verify only.",
    )


@keys.command("revoke")
@click.argument("key_id", type=int)
@json_option
@pass_settings
def keys_revoke(settings: Settings, key_id: int, as_json: bool) -> None:
    """Revoke a key: payloads it signed fail with `revoked_key`; its secret is destroyed.

    \b
    Example:
      provision keys revoke 1
    """
    keyring = settings.keyring()
    key = keyring.revoke(key_id)
    keyring.save()
    emit(as_json, {"key_id": key.id, "keys": _key_rows(keyring)}, f"Key {key.id} revoked.")


@keys.command("list")
@json_option
@pass_settings
def keys_list(settings: Settings, as_json: bool) -> None:
    """List the signing keys and their states (never the secrets).

    \b
    Example:
      provision keys list --json
    """
    keyring = settings.keyring()
    emit(as_json, {"keyring": str(keyring.path), "keys": _key_rows(keyring)}, _key_table(keyring))


# -- db --------------------------------------------------------------------------------------


@cli.group(cls=ProvisionGroup)
def db() -> None:
    """Database schema management.

    \b
    Example:
      provision --db postgresql+psycopg://provision@db/provision db upgrade
    """


@db.command("upgrade")
@json_option
@pass_settings
def db_upgrade(settings: Settings, as_json: bool) -> None:
    """Apply every pending migration (also done automatically on first use).

    \b
    Example:
      provision db upgrade
    """
    from provision.registry import Registry

    registry = Registry(settings.db, migrate=False)
    try:
        revision = registry.upgrade()
    finally:
        registry.close()
    emit(
        as_json,
        {"db": registry.safe_url, "revision": revision},
        f"{registry.safe_url} is at revision {revision}.",
    )


# -- the batch -------------------------------------------------------------------------------


@cli.command()
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
        *settings.registry_with_keyring(),
        serials,
        components_path=components,
        batch=batch,
        device_type=device_type,
        ttl_days=ttl_days,
        reject_file=reject_file,
        chunk_size=chunk_size,
        on_progress=progress_bar(quiet),
    )
    for row in result.skipped:
        click.echo(f"warning: {row}", err=True)
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
        + f"; {result.components} components."
    )
    emit(as_json, data, text)


@cli.command()
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
    result = render_batch_labels(
        settings.registry(),
        batch,
        tpl,
        settings.output,
        settings.base_url,
        keyring=keyring,
        start_at=start_at,
        fmt=fmt or profile.format or "pdf",
        copies=copies,
        offset_x_mm=dx,
        offset_y_mm=dy,
        on_progress=progress_bar(quiet),
    )
    emit(
        as_json,
        result.to_json(),
        f"{result.labels} labels on {result.pages} pages ({result.template}): {result.file}",
    )


@cli.group(cls=ProvisionGroup)
def stations() -> None:
    """Print station profiles: calibrate a printer once, then use --station NAME.

    \b
    Example:
      provision labels demo --template avery-l7160 --alignment-page   # print, measure
      provision stations set line1-laser --offset-x 0.4 --offset-y -0.6 --template avery-l7160
    """


@stations.command("set")
@click.argument("name")
@click.option("--offset-x", type=MILLIMETRES, default=0.0, show_default=True, metavar="MM")
@click.option("--offset-y", type=MILLIMETRES, default=0.0, show_default=True, metavar="MM")
@click.option("--template", "-t", help="Default template of this station.")
@click.option("--format", "fmt", type=click.Choice(["pdf", "zpl"]), help="Default format.")
@json_option
@pass_settings
def stations_set(
    settings: Settings,
    name: str,
    offset_x: float,
    offset_y: float,
    template: str | None,
    fmt: str | None,
    as_json: bool,
) -> None:
    """Create or replace a station's profile in the stations file.

    \b
    Example:
      provision stations set dock-zebra --offset-x -0.25 --template thermal-50x30 --format zpl
    """
    from provision.labels.stations import Station, save_station
    from provision.labels.templates import load_template

    if template:
        load_template(template)  # refuse a profile naming a template that does not load
    station = Station(name, offset_x, offset_y, template, fmt)
    save_station(settings.stations, station)
    emit(as_json, station.to_json(), f"Station {name} saved in {settings.stations}.")


@stations.command("list")
@json_option
@pass_settings
def stations_list(settings: Settings, as_json: bool) -> None:
    """List the station profiles.

    \b
    Example:
      provision stations list --json
    """
    from provision.labels.stations import load_stations

    found = load_stations(settings.stations)
    lines = [
        f"{s.name}: x {s.offset_x_mm:+.2f} mm, y {s.offset_y_mm:+.2f} mm"
        + (f", {s.template}" if s.template else "")
        + (f", {s.format}" if s.format else "")
        for s in found.values()
    ] or [f"no stations in {settings.stations}"]
    emit(as_json, {"stations": [s.to_json() for s in found.values()]}, "\n".join(lines))


@cli.group(cls=ProvisionGroup)
def templates() -> None:
    """Label templates: list, show, import from gLabels.

    \b
    Example:
      provision templates list
      provision templates import avery-iso-templates.xml --part L7163
    """


@templates.command("list")
@json_option
def templates_list(as_json: bool) -> None:
    """List the templates with their sheet, grid and QR module size.

    \b
    Example:
      provision templates list --json
    """
    from provision.labels.templates import list_templates, template_summary

    found = [template_summary(t) for t in list_templates(strict=False)]
    if as_json:
        click.echo(json.dumps({"templates": found}, indent=2))
        return
    for t in list_templates(strict=False):
        click.echo(f"{t.name:<28} {t.per_page:>3}/page  {t.dpi:>3} dpi  {t.description}")


@templates.command("show")
@click.argument("name")
@json_option
def templates_show(name: str, as_json: bool) -> None:
    """Show one template's geometry and label design.

    \b
    Example:
      provision templates show thermal-50x30
    """
    from provision.labels.templates import load_template, template_summary

    summary = template_summary(load_template(name))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")


@templates.command("import")
@click.argument("xml_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--part", help="Import only this part (e.g. L7163); default: every template.")
@click.option(
    "--dest",
    type=click.Path(file_okay=False),
    help="Folder to write the TOML files to [default: the built-in templates folder].",
)
@click.option("--dpi", type=click.IntRange(min=72), help="Printer dpi to record.")
@click.option("--force", is_flag=True, help="Replace an existing template file that differs.")
@json_option
def templates_import(
    xml_file: str, part: str | None, dest: str | None, dpi: int | None, force: bool, as_json: bool
) -> None:
    """Import gLabels template XML (rectangular and round labels, every unit, equiv aliases).

    \b
    Example:
      provision templates import /usr/share/libglabels-3.0/templates/avery-us-templates.xml
    """
    from provision.labels.glabels import import_glabels
    from provision.labels.templates import BUILTIN_DIRS

    target = Path(dest) if dest else BUILTIN_DIRS[0]
    results = import_glabels(Path(xml_file), part=part, dest_dir=target, dpi=dpi, overwrite=force)
    if as_json:
        click.echo(json.dumps({"results": [r.to_json() for r in results]}, indent=2))
        return
    imported = [r for r in results if r.imported]
    for r in results:
        click.echo(
            f"{'imported' if r.imported else 'skipped ':<8} {r.name or r.part}"
            + ("" if r.imported else f": {r.reason}")
        )
    click.echo(f"{len(imported)} of {len(results)} imported into {target}")


@cli.command()
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
        *settings.registry_with_keyring(),
        parsed,
        base_url=settings.base_url,
        output_dir=settings.output,
        stations_file=settings.stations,
        on_progress=progress_bar(quiet),
    )
    for row in result.register.skipped:
        click.echo(f"warning: {row}", err=True)
    r, lab = result.register, result.labels
    text = (
        f"Batch {r.batch}: {r.registered} registered, {r.already_registered} already "
        f"registered, {r.other_batch} in other batches, {r.rejected} rejected.\n"
        f"Labels: {lab.labels} on {lab.pages} pages ({lab.template})\n"
        f"{lab.format.upper()}: {lab.file}\nSummary: {lab.summary}"
    )
    emit(as_json, result.to_json(), text)


@cli.command()
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
        sys.exit(1)


@cli.command()
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
    result = generate_device(
        *settings.registry_with_keyring(),
        serial,
        device_type,
        settings.base_url,
        settings.output,
        tpl,
        components=parsed,
        ttl_days=ttl_days,
    )
    status = "registered" if result.created else "already registered"
    emit(
        as_json,
        result.to_json(),
        f"Device {result.device_id} ({status}, batch {result.batch})\n"
        f"URL: {result.url}\nPNG: {result.png}\nPDF: {result.pdf}",
    )


# -- activation and lifetime tracking ---------------------------------------------------------


def device_selector(f: F) -> F:
    """DEVICE_ID argument, or --serial for support staff who have the box, not our id."""
    f = click.option("--serial", help="Look the device up by its serial (through the keyed hash).")(
        f
    )
    return click.argument("device_id", required=False)(f)


def _find(settings: Settings, device_id: str | None, serial: str | None) -> dict[str, Any]:
    from provision.audit import find_device

    keyring = settings.keyring() if serial is not None else None
    return find_device(settings.registry(), keyring, device_id, serial)


def _find_with_keyring(
    settings: Settings, device_id: str | None, serial: str | None
) -> dict[str, Any]:
    settings.keyring()  # commands that write need it: fail before touching the database
    return _find(settings, device_id, serial)


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@cli.command()
@click.argument("payload", metavar="PAYLOAD_OR_URL")
@click.option("--user", required=True, help="The customer the device is linked to.")
@click.option("--ip", help="Client address to record with the pairing event.")
@click.option("--user-agent", help="Client user agent to record with the pairing event.")
@json_option
@pass_settings
def activate(
    settings: Settings,
    payload: str,
    user: str,
    ip: str | None,
    user_agent: str | None,
    as_json: bool,
) -> None:
    """Activate a device from its scanned payload, exactly once; exit 1 with the reason if not.

    \b
    Example:
      provision activate HTTP://LOCALHOST:5001/A/AEA5PMXE... --user alice@example.com
    """
    from provision.activation import ActivationRejected
    from provision.activation import activate as activate_device

    try:
        result = activate_device(
            *settings.registry_with_keyring(),
            payload,
            user,
            ip=ip,
            user_agent=user_agent or "provision-cli",
        )
    except ActivationRejected as exc:
        if as_json:
            click.echo(json.dumps({"error": {"reason": exc.reason, "message": exc.message}}))
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    emit(
        as_json,
        result.to_json(),
        f"Activated device {result.device_id} ({result.device_type}) for {user}.\n"
        f"Activation token (shown once): {result.activation_token}",
    )


def _parse_meta(items: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        meta[key.strip()] = value
    return meta


@cli.command("log")
@click.argument("target", nargs=-1, metavar="[DEVICE_ID] ACTION")
@click.option("--serial", help="Look the device up by its serial (through the keyed hash).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Action metadata; repeatable.")
@click.option("--ip", help="Address the action came from.")
@json_option
@pass_settings
def log_cmd(
    settings: Settings,
    target: tuple[str, ...],
    serial: str | None,
    meta: tuple[str, ...],
    ip: str | None,
    as_json: bool,
) -> None:
    """Append an action to a device's tamper-evident log.

    \b
    Example:
      provision log 3f9a0c1d2e4b5a69 firmware_update --meta version=2.4.1
      provision log --serial TH200-2611-00001 returned --meta rma=RMA-7781
    """
    from provision.audit import log_action

    wanted = 1 if serial is not None else 2
    if len(target) != wanted:
        raise click.UsageError("give ACTION with --serial, else DEVICE_ID ACTION")
    device_id, action = (None, target[0]) if serial is not None else target
    device = _find_with_keyring(settings, device_id, serial)
    entry = log_action(
        *settings.registry_with_keyring(),
        device,
        action,
        _parse_meta(meta),
        ip=ip,
        actor=_operator(),
    )
    emit(
        as_json,
        {
            "device_id": device["device_id"],
            "action_id": entry["id"],
            "seq": entry["seq"],
            "action_type": action,
        },
        f"Logged {action} for device {device['device_id']} (entry #{entry['seq']}).",
    )


@cli.command()
@device_selector
@click.option("--limit", type=click.IntRange(min=1), help="Show only the newest N events/actions.")
@json_option
@pass_settings
def history(
    settings: Settings,
    device_id: str | None,
    serial: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Show a device's whole history, oldest first: factory, components, pairing, actions.

    \b
    Example:
      provision history 3f9a0c1d2e4b5a69
      provision history --serial TH200-2611-00001 --json
    """
    from provision.audit import device_history

    device = _find(settings, device_id, serial)
    data = device_history(settings.registry(), device, limit)
    emit(as_json, data, _history_text(data))


def _history_text(h: dict[str, Any]) -> str:
    """The history as text; every stored value is escaped, so none can forge a line."""

    def t(value: Any) -> str:
        return escape_control(str(value))

    d = h["device"]
    out = [
        f"Device {d['device_id']}  {t(d['device_type'])}"
        + (f" {t(d['model'])}" if d["model"] else "")
        + (f" by {t(d['manufacturer'])}" if d["manufacturer"] else ""),
        f"  status {d['status']}; batch {t(d['batch'])}; registered {d['registered_at']}; "
        f"QR expires {d['expires_at']}",
    ]
    if d["manufactured_at"] or d["line"]:
        out.append(f"  manufactured {t(d['manufactured_at'] or '?')} on line {t(d['line'] or '?')}")
    if d["activated_at"]:
        out.append(f"  activated {d['activated_at']} by {t(d['user'])}")
    if d["revoked_at"]:
        out.append(f"  revoked {d['revoked_at']} by {t(d['revoked_by'])}: {t(d['revoked_reason'])}")
    out.append(f"Components ({len(h['components'])}):")
    for c in h["components"]:
        extra = ", ".join(t(x) for x in (c["supplier"], c["lot"] and f"lot {c['lot']}") if x)
        out.append(
            f"  {t(c['component_type'])}: {t(c['component_spec'])}"
            + (f" ({extra})" if extra else "")
        )
    out.append(f"Pairing events ({len(h['pairing_events'])} of {d['pairing_events_total']}):")
    for e in h["pairing_events"]:
        why = f" {e['reason']}" if e["reason"] else ""
        out.append(
            f"  {e['occurred_at']}  {e['result']}{why}  user={t(e['user'])} ip={t(e['ip'] or '-')}"
        )
    out.append(f"Actions ({len(h['actions'])} of {d['actions_total']}):")
    for a in h["actions"]:
        meta = " ".join(f"{t(k)}={t(v)}" for k, v in a["metadata"].items())
        out.append(f"  #{a['seq']} {a['occurred_at']}  {a['action_type']}  {meta}".rstrip())
    return "\n".join(out)


@cli.command("revoke")
@device_selector
@click.option("--reason", required=True, help="Why; shown in the device's history.")
@json_option
@pass_settings
def revoke_cmd(
    settings: Settings, device_id: str | None, serial: str | None, reason: str, as_json: bool
) -> None:
    """Revoke a device: it can no longer be activated; history shows who and why.

    \b
    Example:
      provision revoke 3f9a0c1d2e4b5a69 --reason "stolen from warehouse 3"
    """
    from provision.audit import revoke

    device = _find_with_keyring(settings, device_id, serial)
    by = _operator()
    revoke(*settings.registry_with_keyring(), device, reason, by)
    emit(
        as_json,
        {"device_id": device["device_id"], "status": "revoked", "revoked_by": by, "reason": reason},
        f"Device {device['device_id']} revoked by {by}: {reason}",
    )


@cli.group(cls=ProvisionGroup)
def audit() -> None:
    """Check the tamper-evident action log.

    \b
    Example:
      provision audit verify
    """


@audit.command("verify")
@click.argument("device_id", required=False)
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(dir_okay=False),
    help="Also check that no chain is shorter than, or departs from, this signed checkpoint.",
)
@json_option
@pass_settings
def audit_verify(
    settings: Settings, device_id: str | None, checkpoint_file: str | None, as_json: bool
) -> None:
    """Recompute every chain and seal (or one device's) and name the first break of each.

    Exit code 1 when anything is broken, or when a chain is shorter than the checkpoint
    recorded (a rollback) or does not extend it.

    \b
    Example:
      provision audit verify 3f9a0c1d2e4b5a69
      provision audit verify --checkpoint /mnt/audit/checkpoint-20261201T0300Z.txt
    """
    from provision.audit import verify_chains
    from provision.checkpoint import load_checkpoint

    registry, keyring = settings.registry_with_keyring()
    checkpoint = load_checkpoint(checkpoint_file, keyring) if checkpoint_file else None
    report = verify_chains(registry, keyring, device_id, checkpoint=checkpoint)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for p in report.problems:
            click.echo(f"BROKEN {escape_control(str(p))}")
        click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@audit.command("checkpoint")
@click.option(
    "--output",
    "output_file",
    type=click.Path(dir_okay=False),
    help="File to write [default: OUTPUT/checkpoints/checkpoint-TIME.txt].",
)
@json_option
@pass_settings
def audit_checkpoint(settings: Settings, output_file: str | None, as_json: bool) -> None:
    """Write a signed checkpoint of every chain, to keep outside the database.

    `audit verify --checkpoint FILE` later reports any device whose chains were rolled back
    to before it. Run it after the nightly batch and copy the file to another machine.

    \b
    Example (cron, after the nightly batch):
      0 4 * * *  provision audit checkpoint --output /srv/audit/cp-$(date +\\%Y\\%m\\%d).txt
    """
    from datetime import UTC, datetime

    from provision.checkpoint import write_checkpoint

    registry, keyring = settings.registry_with_keyring()
    now = datetime.now(UTC)
    path = (
        Path(output_file)
        if output_file
        else Path(settings.output) / "checkpoints" / f"checkpoint-{now:%Y%m%dT%H%M%SZ}.txt"
    )
    info = write_checkpoint(registry, keyring, path, now=now)
    emit(
        as_json,
        info.to_json(),
        f"Checkpoint {info.path}: {info.devices} devices, {info.actions} actions, "
        f"{info.pairing_events} pairing events (sha256 {info.digest[:16]}...)",
    )


def _csv_choice(known: tuple[str, ...], option: str) -> Callable[..., tuple[str, ...]]:
    def parse(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
        if not value:
            return ()
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in items if v not in known]
        if bad:
            raise click.BadParameter(
                f"unknown {', '.join(bad)}; choose from {', '.join(known)}", param_hint=option
            )
        return items

    return parse


@cli.command()
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
    callback=_csv_choice(("csv", "json", "pdf"), "--format"),
    help="Comma-separated outputs; summary.json is always written.",
)
@click.option(
    "--fail-on",
    default="",
    metavar="CATEGORY[,CATEGORY...]",
    callback=_csv_choice(CATEGORY_NAMES, "--fail-on"),
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
        click.echo(f"Error: non-empty: {', '.join(hits)} (--fail-on)", err=True)
        sys.exit(3)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5001, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Worker threads of the WSGI server (waitress).",
)
@click.option(
    "--trusted-proxies",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    envvar="PROVISION_TRUSTED_PROXIES",
    show_envvar=True,
    help="Reverse proxies in front of us; only then is X-Forwarded-For believed.",
)
@click.option(
    "--rate-limit",
    default="10 per minute",
    show_default=True,
    envvar="PROVISION_RATE_LIMIT",
    show_envvar=True,
    help="Activation attempts allowed per client address.",
)
@json_option
@pass_settings
def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    trusted_proxies: int,
    rate_limit: str,
    as_json: bool,
) -> None:
    """Run the activation service (scan page and JSON API) under waitress.

    \b
    Example:
      provision --base-url https://act.example.com serve --host 0.0.0.0 --trusted-proxies 1
    """
    from provision.web import WebSettings, create_app
    from provision.web import serve as run_server

    logging.getLogger("provision").setLevel(logging.INFO)
    app = create_app(
        WebSettings(
            settings.db, settings.keyring_path, settings.base_url, trusted_proxies, rate_limit
        ),
        keyring=settings.keyring(),
        registry=settings.registry(),
    )
    if as_json:
        click.echo(json.dumps({"listening": f"http://{host}:{port}", "workers": workers}))
    else:
        click.echo(
            f"provision activation service on http://{host}:{port} ({workers} workers)", err=True
        )
    run_server(app, host, port, workers)


def main() -> None:
    cli(prog_name="provision")
