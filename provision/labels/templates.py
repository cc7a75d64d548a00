"""Label templates: TOML files describing sheet or roll geometry and the label design."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import TemplateError
from provision.qr import QUIET_ZONE

MM_PER_INCH = 25.4
PT_PER_MM = 72 / MM_PER_INCH
# The QR of a typical activation URL (about 72 characters at ECC M) is version 4: 33 modules.
TYPICAL_QR_MODULES = 33
FIELDS = ("device_id", "device_type", "model", "type_model", "manufacturer", "serial", "batch")
BUILTIN_DIRS = (Path(__file__).resolve().parents[2] / "templates",)


@dataclass(frozen=True)
class Template:
    """Sheet geometry in millimetres (origin top-left of the page) and the label design."""

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

    @property
    def per_page(self) -> int:
        return self.columns * self.rows

    @property
    def dot(self) -> float:
        """One printer dot, in mm."""
        return MM_PER_INCH / self.dpi

    def label_origin(self, position: int) -> tuple[float, float]:
        """Top-left corner (mm from the page's top-left) of a position, 0-based, row-major."""
        row, col = divmod(position, self.columns)
        return self.left + col * self.pitch_x, self.top + row * self.pitch_y

    def module_size(self, modules: int) -> float:
        """Module size in mm for a symbol of `modules` (no quiet zone): whole printer dots."""
        room = min(self.qr_max, self.label_height - 2 * self.edge, self.label_width - 2 * self.edge)
        dots = math.floor(room / (modules + 2 * QUIET_ZONE) / self.dot + 1e-9)
        return dots * self.dot

    @property
    def prints_serial(self) -> bool:
        return "serial" in self.fields


def template_names() -> list[str]:
    return sorted({p.stem for d in BUILTIN_DIRS if d.is_dir() for p in d.glob("*.toml")})


def load_template(name_or_path: str | Path) -> Template:
    """A built-in template by name, or a template file by path."""
    p = Path(name_or_path)
    if p.suffix != ".toml" or not p.exists():
        for d in BUILTIN_DIRS:
            candidate = d / f"{name_or_path}.toml"
            if candidate.exists():
                p = candidate
                break
        else:
            known = ", ".join(template_names())
            raise TemplateError(f"no template {str(name_or_path)!r}; built-in templates: {known}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TemplateError(f"{p}: cannot read template: {exc}") from None
    try:
        t = _from_toml(p, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise TemplateError(f"{p}: invalid template: {exc}") from None
    _check(t)
    return t


def _from_toml(p: Path, data: dict[str, Any]) -> Template:
    page, layout, design = data["page"], data["layout"], data.get("design", {})
    fields = tuple(design.get("fields", ["device_id", "type_model"]))
    for f in fields:
        if f not in FIELDS:
            raise ValueError(f"unknown field {f!r} in design.fields (known: {', '.join(FIELDS)})")
    cols, rows = int(layout.get("columns", 1)), int(layout.get("rows", 1))
    return Template(
        name=str(data.get("name", p.stem)),
        description=str(data.get("description", "")),
        path=p,
        page_width=float(page["width_mm"]),
        page_height=float(page["height_mm"]),
        label_width=float(layout["label_width_mm"]),
        label_height=float(layout["label_height_mm"]),
        corner_radius=float(layout.get("corner_radius_mm", 0)),
        columns=cols,
        rows=rows,
        left=float(layout.get("left_mm", 0)),
        top=float(layout.get("top_mm", 0)),
        pitch_x=float(layout.get("pitch_x_mm", layout["label_width_mm"])),
        pitch_y=float(layout.get("pitch_y_mm", layout["label_height_mm"])),
        dpi=int(data.get("dpi", 300)),
        qr_max=float(design.get("qr_max_mm", 1e9)),
        edge=float(design.get("edge_mm", 0.5)),
        min_module=float(design.get("min_module_mm", 0.3)),
        font_size=float(design.get("font_size_pt", 7)),
        fields=fields,
    )


def _check(t: Template) -> None:
    if t.columns < 1 or t.rows < 1:
        raise TemplateError(f"{t.path}: columns and rows must be at least 1")
    right = t.left + (t.columns - 1) * t.pitch_x + t.label_width
    bottom = t.top + (t.rows - 1) * t.pitch_y + t.label_height
    if right > t.page_width + 1e-6 or bottom > t.page_height + 1e-6:
        raise TemplateError(
            f"{t.path}: labels reach {right:.2f} x {bottom:.2f} mm, beyond the "
            f"{t.page_width} x {t.page_height} mm page"
        )
    if t.pitch_x < t.label_width - 1e-6 or t.pitch_y < t.label_height - 1e-6:
        raise TemplateError(f"{t.path}: pitch is smaller than the label, labels would overlap")
    module = t.module_size(TYPICAL_QR_MODULES)
    # Two printer dots is the least a module can be and still print square edges.
    least = max(t.min_module, 2 * t.dot)
    if module + 1e-9 < least:
        need = (TYPICAL_QR_MODULES + 2 * QUIET_ZONE) * least + 2 * t.edge
        raise TemplateError(
            f"{t.path}: label {t.label_width} x {t.label_height} mm is too small for a readable QR "
            f"code (module {module:.3f} mm < {least:.3f} mm; needs about {need:.1f} mm square)"
        )
