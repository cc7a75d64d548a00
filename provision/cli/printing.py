"""Print stations and label templates: `provision stations`, `provision templates`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from provision.cli.common import (
    MILLIMETRES,
    ProvisionGroup,
    Settings,
    emit,
    json_option,
    pass_settings,
)


@click.group(cls=ProvisionGroup)
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
@click.option(
    "--payload",
    type=click.Choice(["compact", "digital-link"]),
    help="Default QR content: the compact token, or a GS1 Digital Link URI.",
)
@json_option
@pass_settings
def stations_set(
    settings: Settings,
    name: str,
    offset_x: float,
    offset_y: float,
    template: str | None,
    fmt: str | None,
    payload: str | None,
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
    station = Station(name, offset_x, offset_y, template, fmt, payload)
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


@click.group(cls=ProvisionGroup)
def templates() -> None:
    """Label templates: list, show, import from gLabels.

    Names are looked up in your template folders (PROVISION_TEMPLATES, ':'-separated; default
    ~/.config/provision/templates), then among the built-ins; a path works too.

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
    from provision.labels.templates import list_templates, template_summary, user_template_dirs

    found = [template_summary(t) for t in list_templates(strict=False)]
    if as_json:
        click.echo(json.dumps({"templates": found}, indent=2))
        return
    for s in found:
        qr = f"QR {s['qr']['module_mm']:.3f} mm ({s['qr']['module_dots']} dots)"
        click.echo(
            f"{s['name']:<28} {s['per_page']:>3}/page  {s['dpi']:>3} dpi  {qr:<22}  "
            f"{s['description']}"
        )
    builtin = sum(s["builtin"] for s in found)
    where = ", ".join(str(d) for d in user_template_dirs())
    click.echo(
        f"{builtin} built-in, {len(found) - builtin} from {where} "
        "(QR: the module of a typical activation URL)"
    )


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
    help="Folder to write the TOML files to [default: the first folder of PROVISION_TEMPLATES; "
    "unset, ~/.config/provision/templates]. Templates resolve by name only in the folders "
    "PROVISION_TEMPLATES lists; elsewhere, use --template DIR/NAME.toml.",
)
@click.option("--dpi", type=click.IntRange(min=72), help="Printer dpi to record.")
@click.option("--force", is_flag=True, help="Replace an existing template file that differs.")
@json_option
def templates_import(
    xml_file: str, part: str | None, dest: str | None, dpi: int | None, force: bool, as_json: bool
) -> None:
    """Import gLabels template XML (rectangular and round labels, every unit, equiv aliases).

    The templates go to your template folder (never into the installed package); use them by
    name, e.g. `provision labels BATCH --template glabels-avery-5160`.

    \b
    Example:
      provision templates import /usr/share/libglabels-3.0/templates/avery-us-templates.xml
      PROVISION_TEMPLATES=~/.config/provision/templates:/srv/labels \\
        provision templates import sheets.xml --dest /srv/labels
    """
    from provision.labels.glabels import import_glabels
    from provision.labels.templates import import_dir, is_searched

    target = import_dir(dest)
    results = import_glabels(Path(xml_file), part=part, dest_dir=target, dpi=dpi, overwrite=force)
    searched = is_searched(target)
    if as_json:
        data = {"results": [r.to_json() for r in results], "dest": str(target), "by_name": searched}
        click.echo(json.dumps(data, indent=2))
        return
    imported = [r for r in results if r.imported]
    for r in results:
        click.echo(
            f"{'imported' if r.imported else 'skipped ':<8} {r.name or r.part}"
            + ("" if r.imported else f": {r.reason}")
        )
    click.echo(f"{len(imported)} of {len(results)} imported into {target}")
    if imported and searched:
        click.echo(f"Use them by name: provision labels BATCH --template {imported[0].name}")
    elif imported:
        click.echo(
            f"{target} is not one of your template folders (PROVISION_TEMPLATES), so these "
            f"templates have no name: use --template {target / imported[0].name}.toml, or add "
            f"the folder to PROVISION_TEMPLATES ({os.pathsep}-separated)."
        )
