"""Print station profiles: each printer's calibration, kept once and named with --station."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provision.errors import ConfigError, TemplateError
from provision.files import write_atomic

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_OFFSET_MM = 20.0


@dataclass(frozen=True)
class Station:
    """A printer's offsets (mm, right and down) and optional default template and format."""

    name: str
    offset_x_mm: float = 0.0
    offset_y_mm: float = 0.0
    template: str | None = None
    format: str | None = None
    payload: str | None = None  # what the QR holds: compact or digital-link

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_stations(path: str | Path) -> dict[str, Station]:
    p = Path(path)
    if not p.exists():
        return {}
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read station profiles: {exc}") from None
    stations = {}
    for name, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: [{name}] must be a table")
        unknown = set(values) - {"offset_x_mm", "offset_y_mm", "template", "format", "payload"}
        if unknown:
            raise ConfigError(f"{p}: [{name}] has unknown key(s) {', '.join(sorted(unknown))}")
        try:
            stations[name] = check_station(Station(name=name, **values))
        except TypeError as exc:
            raise ConfigError(f"{p}: [{name}]: {exc}") from None
    return stations


def get_station(path: str | Path, name: str) -> Station:
    stations = load_stations(path)
    if name not in stations:
        known = ", ".join(sorted(stations)) or "none yet"
        raise ConfigError(
            f"no station {name!r} in {path} (known: {known}); "
            f"create it with `provision stations set {name} --offset-x MM --offset-y MM`"
        )
    return stations[name]


def check_station(s: Station) -> Station:
    if not NAME_RE.fullmatch(s.name):
        raise ConfigError(f"station name {s.name!r}: use letters, digits, '.', '_' or '-'")
    for value in (s.offset_x_mm, s.offset_y_mm):
        if not isinstance(value, int | float) or abs(value) > MAX_OFFSET_MM:
            raise ConfigError(
                f"station {s.name}: offsets must be numbers within ±{MAX_OFFSET_MM} mm"
            )
    if s.format is not None and s.format not in ("pdf", "zpl"):
        raise ConfigError(f"station {s.name}: format must be pdf or zpl")
    if s.payload is not None and s.payload not in ("compact", "digital-link"):
        raise ConfigError(f"station {s.name}: payload must be compact or digital-link")
    return s


def check_station_offsets(s: Station) -> None:
    """Refuse a profile whose offsets move the content of its template's labels off the page.

    A profile naming no template is not checked here (each render checks the template it is
    given). A roll template is checked for PDF and for ZPL, either of which the station may
    print; a sheet template for PDF, the only format it prints in.
    """
    if not s.template:
        return
    # Here, not at the top: listing or reading profiles needs no renderer (nor reportlab).
    from provision.labels.layout import check_offsets
    from provision.labels.templates import load_template
    from provision.labels.zpl import check_zpl_offsets

    template = load_template(s.template)
    try:
        check_offsets(template, s.offset_x_mm, s.offset_y_mm)
        if template.per_page == 1:
            check_zpl_offsets(template, s.offset_x_mm, s.offset_y_mm)
    except TemplateError as exc:
        raise TemplateError(f"station {s.name}: {exc}") from None


def save_station(path: str | Path, station: Station) -> None:
    """Add or replace one station's profile; the file is rewritten atomically.

    A profile whose offsets would move the labels of its template off the page is refused
    (TemplateError, see check_station_offsets), and the file is left as it was.
    """
    check_station(station)
    check_station_offsets(station)
    stations = load_stations(path) | {station.name: station}
    lines = ["# provision print station profiles (`provision stations set NAME ...`)", ""]
    for s in sorted(stations.values(), key=lambda s: s.name):
        lines.append(f"[{json.dumps(s.name)}]")
        lines.append(f"offset_x_mm = {float(s.offset_x_mm)!r}")
        lines.append(f"offset_y_mm = {float(s.offset_y_mm)!r}")
        if s.template:
            lines.append(f"template = {json.dumps(s.template)}")
        if s.format:
            lines.append(f"format = {json.dumps(s.format)}")
        if s.payload:
            lines.append(f"payload = {json.dumps(s.payload)}")
        lines.append("")
    write_atomic(path, "\n".join(lines).encode())
