"""Import label sheets from the gLabels template database (XML) as provision templates (TOML).

gLabels (https://glabels.org) keeps a large, MIT-licensed database of label sheets; Debian's
`glabels-data` package installs it under /usr/share/libglabels-3.0/templates. Each `Template`
element names a brand and part, a paper size (`size="A4"`, `"US-Letter"`, another name from
paper-sizes.xml, or `"Other"` with `width`/`height`), and one label shape with its `Layout`
grids:

    <Template brand="Avery" part="7160" size="A4" _description="Mailing labels">
      <Label-rectangle id="0" width="181.4" height="108.0" round="5">
        <Layout nx="3" ny="7" x0="21.2" y0="43.9" dx="187.2" dy="108.0"/>
      </Label-rectangle>
    </Template>
    <Template brand="Avery" part="L7160" equiv="7160"/>

A length is a number with an optional unit: pt, in, mm, cm or pc; a bare number is in points.
An alias (`equiv="PART"`) takes the paper and geometry of that part of the same brand, looked up
in the same file first, then in the other XML files beside it.

Rectangular and round labels are imported; CD/DVD labels (a disc with a hole) and elliptical
labels are reported, not imported, as are labels too small for a readable QR code. gLabels uses
only the first label shape of a template; so does the importer (and says so).
"""

from __future__ import annotations

import contextlib
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provision.errors import TemplateError
from provision.files import write_atomic
from provision.labels.templates import (
    GEOMETRY,
    MM_PER_INCH,
    TOO_SMALL,
    Template,
    parse_template,
    template_problems,
)

# Where distributions install the gLabels template database (Debian/Ubuntu glabels-data puts it
# under libglabels-3.0; gLabels 4 / glabels-qt builds use glabels-qt).
GLABELS_DIRS = (
    Path("/usr/share/glabels-3.0/templates"),
    Path("/usr/share/libglabels-3.0/templates"),
    Path("/usr/local/share/libglabels-3.0/templates"),
    Path("/usr/share/glabels-qt/templates"),
    Path("/usr/local/share/glabels-qt/templates"),
)
NAME_PREFIX = "glabels-"
SHEET_DPI = 600  # laser and inkjet sheets
ROLL_DPI = 300  # one label a page (Dymo, Brother QL and similar roll printers print at 300 dpi)
IMPORT_QR_MAX_MM = 30.0
# (edge_mm, min_module_mm) designs to try, in order: the first that leaves room for a readable
# QR code wins. The last is the small-label design of the built-in avery-5167 (7-dot, 0.296 mm
# modules at 600 dpi on a 12.7 mm tall label).
IMPORT_DESIGNS = ((1.0, 0.3), (0.5, 0.3), (0.25, 0.3), (0.25, 0.29))

# Length units gLabels accepts, in points (a bare number is points).
_PT_PER_UNIT = {"pt": 1.0, "in": 72.0, "mm": 72 / MM_PER_INCH, "cm": 720 / MM_PER_INCH, "pc": 12.0}
_LENGTH = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Z]*)\s*")
_NO_NUMBER = re.compile(r"\s*(pt|in|mm|cm|pc)?\s*", re.IGNORECASE)
# Paper sizes when no paper-sizes.xml is at hand (gLabels' own list names these ids).
_PAPER_MM = {
    "a4": (210.0, 297.0),
    "a3": (297.0, 420.0),
    "a5": (148.0, 210.0),
    "a6": (105.0, 148.0),
    "us-letter": (215.9, 279.4),
    "us-legal": (215.9, 355.6),
    "us-executive": (184.15, 266.7),
    "sra3": (320.0, 450.0),
    "sra4": (225.0, 320.0),
}

# Why a template was not imported (ImportResult.code); "imported" when it was.
IMPORTED = "imported"
CD = "cd"
ELLIPSE = "ellipse"
NO_LABEL = "no_label"
PAPER = "paper"
EQUIV = "equiv"
INVALID = "invalid"
DUPLICATE = "duplicate"
EXISTS = "exists"
# GEOMETRY and TOO_SMALL come from provision.labels.templates.template_problems.
SKIP_CODES = (CD, ELLIPSE, NO_LABEL, PAPER, EQUIV, INVALID, GEOMETRY, TOO_SMALL, DUPLICATE, EXISTS)


@dataclass(frozen=True)
class ImportResult:
    """What became of one gLabels template."""

    brand: str
    part: str
    name: str  # the provision template name, e.g. glabels-avery-l7160
    source: Path  # the XML file
    imported: bool
    code: str  # IMPORTED, or why not (one of SKIP_CODES)
    reason: str  # why not; for an imported template, notes (aliases, extra shapes) or ""
    path: Path | None = None  # the TOML written (None when dest_dir was None or not imported)
    equiv: str | None = None  # the part whose geometry an alias took
    template: Template | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "brand": self.brand,
            "part": self.part,
            "name": self.name,
            "source": str(self.source),
            "imported": self.imported,
            "code": self.code,
            "reason": self.reason,
            "path": str(self.path) if self.path else None,
            "equiv": self.equiv,
        }


@dataclass
class ImportSummary:
    """import_all_glabels: counts by outcome, and every template's result."""

    source_dir: Path
    dest_dir: Path | None
    files: int
    results: list[ImportResult]

    @property
    def imported(self) -> int:
        return sum(r.imported for r in self.results)

    @property
    def skipped(self) -> dict[str, int]:
        """Templates not imported, counted by ImportResult.code."""
        return dict(Counter(r.code for r in self.results if not r.imported).most_common())

    @property
    def total(self) -> int:
        return len(self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "source_dir": str(self.source_dir),
            "dest_dir": str(self.dest_dir) if self.dest_dir else None,
            "files": self.files,
            "templates": self.total,
            "imported": self.imported,
            "skipped": self.skipped,
            "results": [r.to_json() for r in self.results],
        }


def find_glabels_dir() -> Path | None:
    """The installed gLabels template folder, or None (install the `glabels-data` package)."""
    for d in GLABELS_DIRS:
        if d.is_dir() and any(d.glob("*-templates.xml")):
            return d
    return None


def parse_length(text: str) -> float:
    """A gLabels length ("181.4", "2.625in", "63.5mm", "6.35cm", "1.5pc", "12pt") in mm."""
    m = _LENGTH.fullmatch(text)
    if not m:
        raise ValueError(f"not a length: {text!r}")
    unit = m.group(2).lower() or "pt"
    if unit not in _PT_PER_UNIT:
        raise ValueError(f"unknown unit {m.group(2)!r} in {text!r} (pt, in, mm, cm or pc)")
    value = float(m.group(1)) * _PT_PER_UNIT[unit] * MM_PER_INCH / 72
    if not math.isfinite(value):
        raise ValueError(f"not a length: {text!r}")
    return value


def template_name(brand: str, part: str) -> str:
    """The provision name of a gLabels template: glabels-BRAND-PART, lower-case, [a-z0-9-]."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{brand} {part}".lower()).strip("-")
    return NAME_PREFIX + (slug or "unnamed")


# -- reading the XML --------------------------------------------------------------------------


def _local(tag: str) -> str:
    """An element's name without its namespace ({uri}name -> name)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


@dataclass(frozen=True)
class _Entry:
    """One Template element, brand and part resolved."""

    brand: str
    part: str
    element: ET.Element
    source: Path


def _read_entries(path: Path) -> list[_Entry]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise TemplateError(f"{path}: cannot read gLabels XML: {exc}") from None
    out = []
    for el in root.iter():
        if _local(el.tag) != "Template":
            continue
        brand, part = el.get("brand", "").strip(), el.get("part", "").strip()
        if not part and el.get("name"):  # gLabels 2.0 files: name="Avery 5160"
            brand, _, part = el.get("name", "").strip().partition(" ")
            if not part:
                brand, part = "", brand
        out.append(_Entry(brand, part, el, path))
    return out


class _Library:
    """Template elements by (brand, part) for equiv= lookups, and paper sizes by id.

    Lookups try the file being imported first, then every XML file in its folder (read on
    the first lookup that needs them), as gLabels looks a part up in its whole database.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._all: dict[tuple[str, str], _Entry] | None = None
        self._papers: dict[str, tuple[float, float]] | None = None

    def find(self, brand: str, part: str, own: dict[tuple[str, str], _Entry]) -> _Entry | None:
        key = (brand.lower(), part.lower())
        if key in own:
            return own[key]
        if self._all is None:
            self._all = {}
            for path in sorted(self.folder.glob("*.xml")):
                with contextlib.suppress(TemplateError):
                    for e in _read_entries(path):
                        self._all.setdefault((e.brand.lower(), e.part.lower()), e)
        return self._all.get(key)

    def paper(self, size_id: str) -> tuple[float, float] | None:
        if self._papers is None:
            self._papers = {}
            for d in (self.folder, *GLABELS_DIRS):
                sizes = d / "paper-sizes.xml"
                if sizes.is_file():
                    with contextlib.suppress(OSError, ET.ParseError, ValueError):
                        self._papers = _read_papers(sizes)
                    break
        key = size_id.lower()
        return self._papers.get(key) or _PAPER_MM.get(key)


def _read_papers(path: Path) -> dict[str, tuple[float, float]]:
    papers: dict[str, tuple[float, float]] = {}
    for el in ET.parse(path).getroot().iter():
        if _local(el.tag) == "Paper-size" and el.get("id"):
            size = parse_length(el.get("width", "")), parse_length(el.get("height", ""))
            for key in (el.get("id"), el.get("pwg_size")):
                if key:
                    papers.setdefault(key.lower(), size)
    return papers


def _index(entries: Iterable[_Entry]) -> dict[tuple[str, str], _Entry]:
    out: dict[tuple[str, str], _Entry] = {}
    for e in entries:
        out.setdefault((e.brand.lower(), e.part.lower()), e)
    return out


class _Skip(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _resolve(
    entry: _Entry, library: _Library, own: dict[tuple[str, str], _Entry]
) -> tuple[_Entry, str | None]:
    """The entry that holds the geometry (following equiv= chains), and the alias target."""
    seen = {(entry.brand.lower(), entry.part.lower())}
    current, target = entry, None
    while current.element.get("equiv"):
        equiv = current.element.get("equiv", "").strip()
        found = library.find(current.brand, equiv, own)
        if found is None:
            raise _Skip(EQUIV, f"equiv={equiv!r} names a {current.brand} part not in the database")
        key = (found.brand.lower(), found.part.lower())
        if key in seen:
            raise _Skip(EQUIV, f"equiv={equiv!r} leads round in a circle")
        seen.add(key)
        current, target = found, target or equiv
    return current, target


def _length_attr(el: ET.Element, name: str, default: str | None = None) -> float:
    value = el.get(name, default)
    if value is None:
        raise _Skip(INVALID, f"<{_local(el.tag)}> has no {name}=")
    if _NO_NUMBER.fullmatch(value):
        return 0.0  # "" or a bare unit: gLabels reads a missing number as 0, and so do we
    try:
        return parse_length(value)
    except ValueError as exc:
        raise _Skip(INVALID, f"<{_local(el.tag)} {name}=...>: {exc}") from None


def _int_attr(el: ET.Element, name: str) -> int:
    """A gLabels count: decimal, 0x hexadecimal or 0 octal (as C's strtoul reads it)."""
    value = (el.get(name) or "").strip()
    try:
        if len(value) > 1 and value[0] == "0" and value[1] not in "xX":
            return int(value, 8)
        return int(value, 0)
    except ValueError:
        raise _Skip(INVALID, f"<{_local(el.tag)} {name}={value!r}> is not a whole number") from None


@dataclass(frozen=True)
class _Geometry:
    page: tuple[float, float]
    shape: str
    width: float
    height: float
    radius: float
    layouts: tuple[tuple[int, int, float, float, float, float], ...]
    notes: tuple[str, ...]
    description: str


def _geometry(entry: _Entry, library: _Library) -> _Geometry:
    el = entry.element
    notes: list[str] = []
    size = el.get("size", "").strip()
    if size.lower() in ("other", ""):
        if el.get("width") is None or el.get("height") is None:
            raise _Skip(PAPER, f"paper size {size or '(none)'!r} without width= and height=")
        page = (_length_attr(el, "width"), _length_attr(el, "height"))
    else:
        found = library.paper(size)
        if found is None:
            raise _Skip(PAPER, f"unknown paper size {size!r}")
        page = found
    shapes = [c for c in el if _local(c.tag).startswith("Label-")]
    if not shapes:
        raise _Skip(NO_LABEL, "the template has no label shape")
    label = shapes[0]
    if len(shapes) > 1:
        others = ", ".join(_local(s.tag) for s in shapes[1:])
        notes.append(f"gLabels uses the first label shape only; ignored {others}")
    kind = _local(label.tag)
    if kind == "Label-cd":
        raise _Skip(CD, "CD/DVD label (a disc with a centre hole): not a shape provision prints")
    if kind == "Label-ellipse":
        raise _Skip(ELLIPSE, "elliptical label: only rectangular and round labels are supported")
    if kind == "Label-rectangle":
        shape = "rect"
        width, height = _length_attr(label, "width"), _length_attr(label, "height")
        radius = _length_attr(label, "round", "0")
    elif kind == "Label-round":
        shape = "round"
        width = height = 2 * _length_attr(label, "radius")
        radius = width / 2
    else:
        raise _Skip(INVALID, f"unknown label shape <{kind}>")
    layouts = []
    for lay in _children(label, "Layout"):
        nx, ny = _int_attr(lay, "nx"), _int_attr(lay, "ny")
        x0, y0 = _length_attr(lay, "x0", "0"), _length_attr(lay, "y0", "0")
        dx, dy = _length_attr(lay, "dx", "0"), _length_attr(lay, "dy", "0")
        # With one column (row) gLabels ignores dx (dy), often 0: the label's size stands in.
        layouts.append((nx, ny, x0, y0, dx if nx > 1 else width, dy if ny > 1 else height))
    if not layouts:
        raise _Skip(INVALID, f"<{kind}> has no <Layout>")
    if len(layouts) > 1:
        notes.append(f"{len(layouts)} layouts on the sheet")
    description = (el.get("_description") or el.get("description") or "").strip()
    return _Geometry(page, shape, width, height, radius, tuple(layouts), tuple(notes), description)


# -- writing the TOML -------------------------------------------------------------------------


def _num(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _string(value: str) -> str:
    """A TOML basic string."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml(
    name: str,
    entry: _Entry,
    geo: _Geometry,
    target: str | None,
    dpi: int,
    edge: float,
    min_module: float,
) -> str:
    brand_part = f"{entry.brand} {entry.part}".strip()
    what = geo.description or ("round labels" if geo.shape == "round" else "labels")
    per_page = sum(nx * ny for nx, ny, *_ in geo.layouts)
    if geo.shape == "round":
        size = f"{_num(geo.width)} mm diameter"
    else:
        size = f"{_num(geo.width)} x {_num(geo.height)} mm"
    description = f"{brand_part}: {what}, {per_page} a sheet, {size} (gLabels import)"
    lines = [
        f"# Imported from the gLabels template database: {brand_part}"
        + (f" (same as {entry.brand} {target})" if target else ""),
        f"# Source: {entry.source.name}. gLabels templates: MIT licence, (c) Jim Evins et al.",
        f"name = {_string(name)}",
        f"description = {_string(description)}",
        f"dpi = {dpi}",
        "",
        "[page]",
        f"width_mm = {_num(geo.page[0])}",
        f"height_mm = {_num(geo.page[1])}",
    ]
    for i, (nx, ny, x0, y0, dx, dy) in enumerate(geo.layouts):
        lines += ["", "[layout]" if len(geo.layouts) == 1 else "[[layout]]"]
        if i == 0:
            if geo.shape != "rect":
                lines.append(f"shape = {_string(geo.shape)}")
            lines += [
                f"label_width_mm = {_num(geo.width)}",
                f"label_height_mm = {_num(geo.height)}",
                f"corner_radius_mm = {_num(geo.radius)}",
            ]
        lines += [
            f"columns = {nx}",
            f"rows = {ny}",
            f"left_mm = {_num(x0)}",
            f"top_mm = {_num(y0)}",
            f"pitch_x_mm = {_num(dx)}",
            f"pitch_y_mm = {_num(dy)}",
        ]
    small = min(geo.width, geo.height)
    font = 8 if small >= 30 else 7 if small >= 20 else 6
    lines += [
        "",
        "[design]",
        f"qr_max_mm = {_num(IMPORT_QR_MAX_MM)}",
        f"edge_mm = {_num(edge)}",
        f"min_module_mm = {_num(min_module)}",
        f"font_size_pt = {font}",
        'fields = ["device_id", "type_model"]',
        "",
    ]
    return "\n".join(lines)


def _build(
    entry: _Entry,
    library: _Library,
    own: dict[tuple[str, str], _Entry],
    name: str,
    dest: Path,
    dpi: int | None,
) -> tuple[str, Template, _Geometry, str | None]:
    """The TOML text and its checked Template, or _Skip with the reason."""
    source, target = _resolve(entry, library, own)
    geo = _geometry(source, library)
    description = (
        entry.element.get("_description") or entry.element.get("description") or ""
    ).strip()
    if description:  # an alias may describe itself
        geo = replace(geo, description=description)
    per_page = sum(nx * ny for nx, ny, *_ in geo.layouts)
    chosen_dpi = dpi or (ROLL_DPI if per_page == 1 else SHEET_DPI)
    path = dest / f"{name}.toml"
    first: list[tuple[str, str]] = []
    for edge, min_module in IMPORT_DESIGNS:
        text = _toml(name, entry, geo, target, chosen_dpi, edge, min_module)
        try:
            tpl = parse_template(text, path, check=False)
        except TemplateError as exc:
            raise _Skip(INVALID, str(exc)) from None
        problems = template_problems(tpl)
        if not problems:
            return text, tpl, geo, target
        first = first or problems  # the reason given is the standard design's
        if any(code != TOO_SMALL for code, _ in problems):
            break  # another design cannot mend the geometry
    code, message = first[0]
    raise _Skip(code, message.removeprefix(f"{path}: "))


def _write(path: Path, text: str, overwrite: bool) -> str | None:
    """Write atomically (mode 0644); None when written or unchanged, else why not."""
    if path.exists():
        try:
            if path.read_text(encoding="utf-8") == text:
                return None
        except (OSError, UnicodeDecodeError):
            pass
        if not overwrite:
            return f"{path} exists with other content (import again with overwrite)"
    write_atomic(path, text.encode("utf-8"))
    return None


# -- the API ----------------------------------------------------------------------------------


def _matches(entry: _Entry, part: str) -> bool:
    want = part.strip().lower()
    return want in (
        entry.part.lower(),
        f"{entry.brand} {entry.part}".lower(),
        template_name(entry.brand, entry.part),
    )


def import_glabels(
    xml_path: str | Path,
    part: str | None = None,
    dest_dir: str | Path | None = None,
    *,
    dpi: int | None = None,
    overwrite: bool = False,
) -> list[ImportResult]:
    """Import the templates of one gLabels XML file (only `part`, when given).

    `part` matches a part number ("L7160"), brand and part ("Avery L7160") or the provision name
    ("glabels-avery-l7160"), case-insensitively; no match is a TemplateError. Each importable
    template is written to `dest_dir`/NAME.toml (atomically; an existing file with other
    content is kept unless `overwrite`); with dest_dir None nothing is written (a dry run).
    `dpi` overrides the printer resolution (default 600 for sheets, 300 for one label a page).
    Every template gets a result, imported or not, with the reason.
    """
    path = Path(xml_path)
    dest = Path(dest_dir) if dest_dir is not None else None
    entries = _read_entries(path)
    library = _Library(path.parent)
    return list(_import_entries(path, entries, part, dest, dpi, overwrite, set(), library))


def _result(entry: _Entry, name: str, code: str, reason: str, **kw: Any) -> ImportResult:
    return ImportResult(
        brand=entry.brand,
        part=entry.part,
        name=name,
        source=entry.source,
        imported=code == IMPORTED,
        code=code,
        reason=reason,
        equiv=entry.element.get("equiv"),
        **kw,
    )


def _import_entries(
    path: Path,
    entries: list[_Entry],
    part: str | None,
    dest_dir: Path | None,
    dpi: int | None,
    overwrite: bool,
    taken: set[str],
    library: _Library,
) -> Iterator[ImportResult]:
    own = _index(entries)
    chosen = entries
    if part is not None:
        chosen = [e for e in entries if _matches(e, part)]
        if not chosen:
            raise TemplateError(
                f"{path}: no template with part {part!r} ({len(entries)} templates in the file)"
            )
    for entry in chosen:
        name = template_name(entry.brand, entry.part)
        if name in taken:
            yield _result(entry, name, DUPLICATE, f"an earlier template is already named {name}")
            continue
        try:
            text, tpl, geo, target = _build(entry, library, own, name, dest_dir or Path("."), dpi)
        except _Skip as skip:
            yield _result(entry, name, skip.code, skip.reason)
            continue
        notes = list(geo.notes)
        if target:
            notes.insert(0, f"alias of {entry.brand} {target}")
        written = None
        if dest_dir is not None:
            why = _write(dest_dir / f"{name}.toml", text, overwrite)
            if why:
                yield _result(entry, name, EXISTS, why)
                continue
            written = dest_dir / f"{name}.toml"
        taken.add(name)
        yield _result(entry, name, IMPORTED, "; ".join(notes), path=written, template=tpl)


def import_all_glabels(
    src_dir: str | Path | None = None,
    dest_dir: str | Path | None = None,
    *,
    dpi: int | None = None,
    overwrite: bool = False,
) -> ImportSummary:
    """Import every template of every *.xml file in `src_dir` (default: the installed gLabels
    database, see find_glabels_dir); with dest_dir None nothing is written.

    Two templates that would get the same name (the same brand and part in two files) keep the
    first; the second is counted as a duplicate.
    """
    if src_dir is None:
        found = find_glabels_dir()
        if found is None:
            where = ", ".join(str(d) for d in GLABELS_DIRS)
            raise TemplateError(
                f"no gLabels template database in {where}; install it with "
                "`apt-get install glabels-data`"
            )
        src_dir = found
    src = Path(src_dir)
    dest = Path(dest_dir) if dest_dir is not None else None
    files = sorted(p for p in src.glob("*.xml") if p.is_file())
    if not files:
        raise TemplateError(f"{src}: no gLabels XML files")
    results: list[ImportResult] = []
    taken: set[str] = set()
    library = _Library(src)
    for f in files:
        entries = _read_entries(f)  # none in paper-sizes.xml, categories.xml, vendors.xml
        results.extend(_import_entries(f, entries, None, dest, dpi, overwrite, taken, library))
    return ImportSummary(src, dest, len(files), results)
