"""Label templates: TOML files describing sheet or roll geometry and the label design.

The format (every table, key and unit) is documented in templates/README.md. Lengths are in
millimetres (`*_mm` keys) or, where a sheet is specified in inches, in inches (the same key with
`_in`); font sizes are in points. Internally every length is millimetres.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from provision.config import DEFAULT_TEMPLATES_DIR, TEMPLATES_ENV
from provision.errors import TemplateError
from provision.qr import QUIET_ZONE

MM_PER_INCH = 25.4
PT_PER_MM = 72 / MM_PER_INCH
# The QR of a typical activation URL (about 72 characters at ECC M) is version 4: 33 modules.
TYPICAL_QR_MODULES = 33
FIELDS = ("device_id", "device_type", "model", "type_model", "manufacturer", "serial", "batch")
SHAPES = ("rect", "round")
# The built-in templates: the checkout's top-level templates/ folder, which pyproject.toml maps
# in as this package (an editable install reads the folder in place, a wheel carries a copy).
BUILTIN_PACKAGE = "provision.templates_builtin"
# An unknown name's error lists the templates of a folder up to this many; beyond, it counts them.
MAX_NAMES_LISTED = 30
# Below 300 dpi (thermal printers) a module must be at least 4 dots (0.5 mm at 203 dpi) for a
# phone to read it off the label; at 300 dpi and up, 2 dots still print square edges and the
# design's min_module_mm (0.3 mm by default) is the binding limit.
MIN_DOTS_LOW_DPI = 4
MIN_DOTS = 2
LOW_DPI = 300
EPS = 1e-6
# Sheet makers publish sizes to 0.1 mm; labels may overlap or pass the page edge by this much
# (rounding in the published figures) before a template is refused.
TOLERANCE_MM = 0.1

# Keys each table may hold; a misspelt key is an error, not a silently ignored setting.
# Lengths are listed without their unit suffix: "left" means left_mm or left_in.
_PAGE_LENGTHS = ("width", "height")
_LABEL_LENGTHS = ("label_width", "label_height", "corner_radius")
_GRID_LENGTHS = ("left", "top", "pitch_x", "pitch_y")
_DESIGN_LENGTHS = ("qr_max", "edge", "min_module")
_LABEL_KEYS = ("shape",)
_GRID_KEYS = ("columns", "rows")
_DESIGN_KEYS = ("font", "font_size_pt", "fields", "min_dots")
_TOP_KEYS = ("name", "description", "dpi")


@dataclass(frozen=True)
class Layout:
    """One grid of labels on the sheet: `columns` x `rows` from (left, top), mm, row-major."""

    columns: int
    rows: int
    left: float
    top: float
    pitch_x: float
    pitch_y: float

    @property
    def count(self) -> int:
        return self.columns * self.rows

    def origin(self, index: int) -> tuple[float, float]:
        row, col = divmod(index, self.columns)
        return self.left + col * self.pitch_x, self.top + row * self.pitch_y


@dataclass(frozen=True)
class Template:
    """Sheet geometry in millimetres (origin top-left of the page) and the label design.

    `columns`, `rows`, `left`, `top`, `pitch_x` and `pitch_y` describe the first (usually the
    only) grid; `layouts` holds every grid of the sheet. Positions count row by row through the
    first grid, then the next.
    """

    name: str
    description: str
    path: Path
    page_width: float
    page_height: float
    label_width: float
    label_height: float
    corner_radius: float
    columns: int
    rows: int
    left: float
    top: float
    pitch_x: float
    pitch_y: float
    dpi: int
    qr_max: float
    edge: float
    min_module: float
    font_size: float
    fields: tuple[str, ...]
    shape: str = "rect"
    # "vera" (Bitstream Vera, shipped with reportlab) or the path of a TrueType file; either
    # way the font is embedded in the PDF.
    font: str = "vera"
    min_dots: int = 0  # 0: the default for the dpi (MIN_DOTS_LOW_DPI below 300 dpi, else MIN_DOTS)
    layouts: tuple[Layout, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layouts:
            first = Layout(self.columns, self.rows, self.left, self.top, self.pitch_x, self.pitch_y)
            object.__setattr__(self, "layouts", (first,))
        if self.min_dots <= 0:
            default = MIN_DOTS_LOW_DPI if self.dpi < LOW_DPI else MIN_DOTS
            object.__setattr__(self, "min_dots", default)

    @property
    def per_page(self) -> int:
        return sum(layout.count for layout in self.layouts)

    @property
    def dot(self) -> float:
        """One printer dot, in mm."""
        return MM_PER_INCH / self.dpi

    @property
    def least_module(self) -> float:
        """The smallest module (mm) this template accepts: min_module_mm and min_dots dots."""
        return max(self.min_module, self.min_dots * self.dot)

    def label_origin(self, position: int) -> tuple[float, float]:
        """Top-left corner (mm from the page's top-left) of a position, 0-based, row-major.

        For a round label this is the top-left corner of the square around the circle.
        """
        index = position
        for layout in self.layouts:
            if index < layout.count:
                return layout.origin(index)
            index -= layout.count
        raise IndexError(f"{self.name}: position {position} is beyond the {self.per_page} a page")

    @property
    def qr_room(self) -> float:
        """Side (mm) of the square the QR and its quiet zone may fill, before qr_max.

        A rectangular label leaves `edge` on every side; a round label holds the QR in the
        square inscribed in the circle `edge` inside its rim.
        """
        if self.shape == "round":
            diameter = min(self.label_width, self.label_height)
            return max(0.0, (diameter - 2 * self.edge) / math.sqrt(2))
        return min(self.label_height - 2 * self.edge, self.label_width - 2 * self.edge)

    def module_size(self, modules: int) -> float:
        """Module size in mm for a symbol of `modules` (no quiet zone): whole printer dots."""
        room = min(self.qr_max, self.qr_room)
        dots = math.floor(room / (modules + 2 * QUIET_ZONE) / self.dot + 1e-9)
        return dots * self.dot

    def module_dots(self, modules: int) -> int:
        """Module size in printer dots for a symbol of `modules`."""
        return round(self.module_size(modules) / self.dot)

    @property
    def prints_serial(self) -> bool:
        return "serial" in self.fields


# -- finding and loading ----------------------------------------------------------------------
#
# A template's name is its file's stem. Names are looked up in the user template folders
# (PROVISION_TEMPLATES, in order), then among the built-ins: the first folder holding NAME.toml
# wins, so a user's file named like a built-in replaces it.


def builtin_dir() -> Path:
    """The folder of the built-in templates, wherever the package is installed."""
    root = resources.files(BUILTIN_PACKAGE)
    if not isinstance(root, Path):  # e.g. a zipped install: nothing to list or load files from
        raise TemplateError(f"built-in templates: {root} is not a folder on disk")
    return root


def default_user_dir() -> Path:
    """$XDG_CONFIG_HOME/provision/templates, else ~/.config/provision/templates."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec ignores a relative value
        return Path(xdg) / "provision" / "templates"
    return Path(DEFAULT_TEMPLATES_DIR).expanduser()


def user_template_dirs(value: str | None = None) -> list[Path]:
    """The user template folders: `value`, else $PROVISION_TEMPLATES, split at os.pathsep (":"),
    `~` expanded; when that names none, [default_user_dir()]. The first is where imports go."""
    raw = os.environ.get(TEMPLATES_ENV, "") if value is None else value
    dirs = [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]
    return dirs or [default_user_dir()]


def template_dirs() -> list[Path]:
    """Where names are looked up, in order: the user template folders, then the built-ins."""
    return [*user_template_dirs(), builtin_dir()]


def find_templates() -> dict[str, Path]:
    """Every template name on the search path, sorted, and the file it stands for."""
    found: dict[str, Path] = {}
    for d in template_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    return dict(sorted(found.items()))


def template_names() -> list[str]:
    return list(find_templates())


def is_builtin(t: Template) -> bool:
    """Whether the template is one of the built-ins (not a user's file, not a path given)."""
    return _same_dir(t.path.parent, builtin_dir())


def is_searched(folder: str | Path) -> bool:
    """Whether templates in `folder` can be named (it is one of the user template folders)."""
    return any(_same_dir(Path(folder), d) for d in user_template_dirs())


def import_dir(dest: str | Path | None = None) -> Path:
    """Where `templates import` writes: `dest`, else the first user template folder; never the
    built-in templates' folder (inside the installed package)."""
    folder = Path(dest).expanduser() if dest is not None else user_template_dirs()[0]
    builtin = builtin_dir().resolve()
    resolved = folder.resolve()
    if resolved == builtin or builtin in resolved.parents:
        raise TemplateError(
            f"{folder} holds the built-in templates (part of the installed package): import into "
            f"a folder of your own (--dest DIR, or {TEMPLATES_ENV}; default {default_user_dir()})"
        )
    return folder


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def list_templates(*, strict: bool = True) -> list[Template]:
    """Every template on the search path (see find_templates), sorted by name.

    strict=False leaves out a file that does not load instead of raising its TemplateError.
    """
    out = []
    for path in find_templates().values():
        try:
            out.append(load_template(path))
        except TemplateError:
            if strict:
                raise
    return out


def templates_that_fit(modules: int, like: Template | None = None) -> list[str]:
    """The names of the templates (yours and the built-ins) whose labels hold a readable QR
    code of MODULES modules; those of LIKE's kind (a roll or a sheet, as its per_page says)
    first, smallest label first."""
    fits = [
        t for t in list_templates(strict=False) if t.module_size(modules) + 1e-9 >= t.least_module
    ]
    roll = like is not None and like.per_page == 1

    def order(t: Template) -> tuple[bool, float]:
        return ((t.per_page == 1) != roll, t.label_width * t.label_height)

    return [t.name for t in sorted(fits, key=order)]


def load_template(name_or_path: str | Path) -> Template:
    """A template by name (the user template folders first, then the built-ins), or a template
    file by path."""
    p = Path(name_or_path)
    if p.suffix != ".toml" or not p.exists():
        p = _find_by_name(str(name_or_path))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{p}: cannot read template: {exc}") from None
    return parse_template(text, p)


def _find_by_name(name: str) -> Path:
    # A name is a file stem: "a/b" or "../b" is a path that does not exist, not a name.
    stem = name.removesuffix(".toml")
    if stem and Path(stem).name == stem and not stem.startswith("."):
        for d in template_dirs():
            candidate = d / f"{stem}.toml"
            if candidate.is_file():
                return candidate
    raise TemplateError(f"no template {name!r}; {_known_templates()}")


def _known_templates() -> str:
    """What an unknown name's error lists: the templates of each folder on the search path."""
    by_dir: dict[Path, list[str]] = {}
    for name, path in find_templates().items():
        by_dir.setdefault(path.parent, []).append(name)
    builtin = builtin_dir()
    parts = [f"built-in templates: {', '.join(by_dir.get(builtin, []))}"]
    for d in user_template_dirs():
        names = by_dir.get(d, [])
        if len(names) > MAX_NAMES_LISTED:
            parts.append(f"{len(names):,} templates in {d} (`provision templates list`)")
        elif names:
            parts.append(f"in {d}: {', '.join(names)}")
        else:
            parts.append(f"none in {d}")
    return "; ".join(parts)


def parse_template(text: str, path: Path, *, check: bool = True) -> Template:
    """A template from TOML text (`path` names it in messages and becomes Template.path).

    check=False skips the geometry and QR checks (see template_problems), not the format's.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{path}: cannot read template: {exc}") from None
    try:
        t = _from_toml(path, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise TemplateError(f"{path}: invalid template: {exc}") from None
    if check:
        _check(t)
    return t


# -- TOML -> Template -------------------------------------------------------------------------


def _length(table: dict[str, Any], key: str, default: float | None = None) -> float:
    """`key_mm` or `key_in` of a table, in mm; both at once is an error."""
    mm_key, in_key = f"{key}_mm", f"{key}_in"
    if mm_key in table and in_key in table:
        raise ValueError(f"give {mm_key} or {in_key}, not both")
    if mm_key in table:
        return _number(table[mm_key], mm_key)
    if in_key in table:
        return _number(table[in_key], in_key) * MM_PER_INCH
    if default is None:
        raise KeyError(f"missing {mm_key} (or {in_key})")
    return default


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite")
    return float(value)


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be a whole number, not {value!r}")
    return value


def _table(data: dict[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    value = data.get(key, {} if not required else None)
    if value is None:
        raise KeyError(f"missing [{key}] table")
    if not isinstance(value, dict):
        raise TypeError(f"[{key}] must be a table")
    return value


def _unknown(
    table: dict[str, Any], where: str, lengths: tuple[str, ...], keys: tuple[str, ...]
) -> None:
    allowed = {f"{k}_{u}" for k in lengths for u in ("mm", "in")} | set(keys)
    extra = sorted(set(table) - allowed)
    if extra:
        raise ValueError(f"unknown key{'s' if len(extra) > 1 else ''} in {where}: {extra}")


def _from_toml(p: Path, data: dict[str, Any]) -> Template:
    extra = sorted(
        k for k, v in data.items() if k not in _TOP_KEYS and not isinstance(v, dict | list)
    )
    if extra:
        raise ValueError(f"unknown top-level key{'s' if len(extra) > 1 else ''}: {extra}")
    page = _table(data, "page")
    design = _table(data, "design", required=False)
    raw = data.get("layout")
    if isinstance(raw, dict):
        grids = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(g, dict) for g in raw):
        grids = raw
    else:
        raise KeyError("missing [layout] table (or [[layout]] tables)")

    _unknown(page, "[page]", _PAGE_LENGTHS, ())
    _unknown(design, "[design]", _DESIGN_LENGTHS, _DESIGN_KEYS)
    first = grids[0]
    label_keys = _LABEL_LENGTHS
    for i, grid in enumerate(grids):
        where = "[layout]" if len(grids) == 1 else f"[[layout]] #{i + 1}"
        _unknown(grid, where, (*label_keys, *_GRID_LENGTHS), (*_LABEL_KEYS, *_GRID_KEYS))
        for k in (*(f"{x}_{u}" for x in label_keys for u in ("mm", "in")), "shape"):
            if i and k in grid and grid.get(k) != first.get(k):
                raise ValueError(f"{where}: {k} differs from the first layout (one label a sheet)")

    fields = tuple(design.get("fields", ["device_id", "type_model"]))
    for f in fields:
        if f not in FIELDS:
            raise ValueError(f"unknown field {f!r} in design.fields (known: {', '.join(FIELDS)})")
    shape = str(first.get("shape", "rect"))
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, not {shape!r}")
    label_width = _length(first, "label_width")
    label_height = _length(first, "label_height")
    default_radius = min(label_width, label_height) / 2 if shape == "round" else 0.0
    layouts = tuple(
        Layout(
            columns=_integer(g.get("columns", 1), "columns"),
            rows=_integer(g.get("rows", 1), "rows"),
            left=_length(g, "left", 0.0),
            top=_length(g, "top", 0.0),
            pitch_x=_length(g, "pitch_x", label_width),
            pitch_y=_length(g, "pitch_y", label_height),
        )
        for g in grids
    )
    lay = layouts[0]
    dpi = _integer(data.get("dpi", 300), "dpi")
    if dpi < 72:
        raise ValueError(f"dpi must be at least 72, not {dpi}")
    return Template(
        name=str(data.get("name", p.stem)),
        description=str(data.get("description", "")),
        path=p,
        page_width=_length(page, "width"),
        page_height=_length(page, "height"),
        label_width=label_width,
        label_height=label_height,
        corner_radius=_length(first, "corner_radius", default_radius),
        columns=lay.columns,
        rows=lay.rows,
        left=lay.left,
        top=lay.top,
        pitch_x=lay.pitch_x,
        pitch_y=lay.pitch_y,
        dpi=dpi,
        qr_max=_length(design, "qr_max", 1e9),
        edge=_length(design, "edge", 0.5),
        min_module=_length(design, "min_module", 0.3),
        font_size=_number(design.get("font_size_pt", 7), "font_size_pt"),
        font=_font(design.get("font", "vera"), p),
        fields=fields,
        shape=shape,
        min_dots=_integer(design.get("min_dots", 0), "min_dots"),
        layouts=layouts,
    )


def _font(value: Any, path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('design.font must be "vera" or the path of a .ttf file')
    if value == "vera":
        return value
    font = Path(value) if Path(value).is_absolute() else path.parent / value
    if font.suffix.lower() != ".ttf" or not font.is_file():
        raise ValueError(f"design.font: no TrueType file {str(font)!r}")
    return str(font)


# -- checks -----------------------------------------------------------------------------------

# Problem codes of template_problems(); the gLabels importer counts skipped templates by them.
GEOMETRY = "geometry"
TOO_SMALL = "too_small"


def template_problems(t: Template) -> list[tuple[str, str]]:
    """Every reason the template cannot be used, as (code, message); empty when it is fine."""
    problems: list[tuple[str, str]] = []

    def bad(code: str, message: str) -> None:
        problems.append((code, f"{t.path}: {message}"))

    if min(t.page_width, t.page_height, t.label_width, t.label_height) <= 0:
        bad(GEOMETRY, "page and label sizes must be positive")
        return problems
    if t.shape == "round" and abs(t.label_width - t.label_height) > EPS:
        bad(GEOMETRY, f"a round label has one diameter, not {t.label_width} x {t.label_height}")
    elif t.shape == "round" and abs(t.corner_radius - t.label_width / 2) > 1e-3:
        bad(GEOMETRY, "a round label's corner radius is half its diameter (leave it out)")
    if t.corner_radius < 0 or t.corner_radius > min(t.label_width, t.label_height) / 2 + EPS:
        bad(GEOMETRY, f"corner radius {t.corner_radius} mm does not fit the label")
    tol = TOLERANCE_MM
    for i, lay in enumerate(t.layouts):
        which = "" if len(t.layouts) == 1 else f"layout {i + 1}: "
        if lay.columns < 1 or lay.rows < 1:
            bad(GEOMETRY, f"{which}columns and rows must be at least 1")
            continue
        right = lay.left + (lay.columns - 1) * lay.pitch_x + t.label_width
        bottom = lay.top + (lay.rows - 1) * lay.pitch_y + t.label_height
        if lay.left < -tol or lay.top < -tol:
            bad(
                GEOMETRY,
                f"{which}the first label starts at ({lay.left}, {lay.top}) mm, off the page",
            )
        if right > t.page_width + tol or bottom > t.page_height + tol:
            bad(
                GEOMETRY,
                f"{which}labels reach {right:.2f} x {bottom:.2f} mm, beyond the "
                f"{t.page_width:g} x {t.page_height:g} mm page",
            )
        if (lay.columns > 1 and lay.pitch_x < t.label_width - tol) or (
            lay.rows > 1 and lay.pitch_y < t.label_height - tol
        ):
            bad(
                GEOMETRY,
                f"{which}pitch {lay.pitch_x:g} x {lay.pitch_y:g} mm is smaller than the "
                f"{t.label_width:g} x {t.label_height:g} mm label: labels would overlap",
            )
    if len(t.layouts) > 1 and not any(c == GEOMETRY for c, _ in problems):
        clash = _overlapping_layouts(t)
        if clash:
            bad(GEOMETRY, f"labels {clash[0] + 1} and {clash[1] + 1} (different layouts) overlap")
    if t.dpi < 72:
        bad(GEOMETRY, f"dpi must be at least 72, not {t.dpi}")
    module = t.module_size(TYPICAL_QR_MODULES)
    least = t.least_module
    if module + 1e-9 < least:
        need = (TYPICAL_QR_MODULES + 2 * QUIET_ZONE) * least + 2 * t.edge
        if t.shape == "round":
            need = need * math.sqrt(2)
            what, needs = f"round label of {t.label_width} mm diameter", f"{need:.1f} mm across"
        else:
            what, needs = f"label {t.label_width} x {t.label_height} mm", f"{need:.1f} mm square"
        bad(
            TOO_SMALL,
            f"{what} is too small for a readable QR code (module {module:.3f} mm < "
            f"{least:.3f} mm; needs about {needs})",
        )
    return problems


def _overlapping_layouts(t: Template) -> tuple[int, int] | None:
    """The first two positions of different grids whose labels overlap, if any."""
    boxes = []
    start = 0
    for k, lay in enumerate(t.layouts):
        for i in range(lay.count):
            x, y = lay.origin(i)
            boxes.append((k, start + i, x, y))
        start += lay.count
    w, h = t.label_width - TOLERANCE_MM, t.label_height - TOLERANCE_MM
    for a in range(len(boxes)):
        ka, pa, xa, ya = boxes[a]
        for b in range(a + 1, len(boxes)):
            kb, pb, xb, yb = boxes[b]
            if ka == kb or abs(xa - xb) >= w or abs(ya - yb) >= h:
                continue
            # Round labels overlap only when their centres are closer than a diameter.
            if t.shape != "round" or math.hypot(xa - xb, ya - yb) < w:
                return pa, pb
    return None


def _check(t: Template) -> None:
    problems = template_problems(t)
    if problems:
        raise TemplateError(problems[0][1])


# -- summaries --------------------------------------------------------------------------------


def _r(value: float) -> float:
    return round(value, 3)


def template_summary(t: Template, modules: int = TYPICAL_QR_MODULES) -> dict[str, Any]:
    """What `provision templates list --json` / `templates show NAME` print for a template.

    Lengths in mm (3 decimals); `qr` is for a symbol of `modules` (the typical activation URL,
    version 4 = 33 modules, unless told otherwise).
    """
    module = t.module_size(modules)
    return {
        "name": t.name,
        "description": t.description,
        "path": str(t.path),
        "builtin": is_builtin(t),
        "page": {"width_mm": _r(t.page_width), "height_mm": _r(t.page_height)},
        "label": {
            "width_mm": _r(t.label_width),
            "height_mm": _r(t.label_height),
            "corner_radius_mm": _r(t.corner_radius),
            "shape": t.shape,
        },
        "grid": {"columns": t.columns, "rows": t.rows},
        "layouts": [
            {
                "columns": lay.columns,
                "rows": lay.rows,
                "left_mm": _r(lay.left),
                "top_mm": _r(lay.top),
                "pitch_x_mm": _r(lay.pitch_x),
                "pitch_y_mm": _r(lay.pitch_y),
            }
            for lay in t.layouts
        ],
        "per_page": t.per_page,
        "dpi": t.dpi,
        "qr": {
            "modules": modules,
            "module_mm": _r(module),
            "module_dots": t.module_dots(modules),
            "size_mm": _r((modules + 2 * QUIET_ZONE) * module),
            "least_module_mm": _r(t.least_module),
        },
        "design": {
            "edge_mm": _r(t.edge),
            "qr_max_mm": _r(t.qr_max) if t.qr_max < 1e8 else None,
            "font": t.font,
            "font_size_pt": t.font_size,
            "fields": list(t.fields),
        },
    }
