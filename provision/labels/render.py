"""PDF label sheets: one vector path per QR code, snapped to the printer's dot grid."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from provision.errors import TemplateError
from provision.labels.templates import Template
from provision.qr import QUIET_ZONE, encode_qr

# Bitstream Vera ships inside reportlab; registering it as a TrueType font embeds a subset in
# every PDF, so a print station without the font prints exactly what we drew.
FONT, FONT_BOLD = "ProvisionVera", "ProvisionVeraBold"
MIN_FONT_SIZE = 4.0
LINE_SPACING = 1.2
FIT_SLACK_PT = 1e-6


@dataclass(frozen=True)
class LabelData:
    """What one label shows."""

    device_id: str
    url: str
    device_type: str = ""
    model: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    batch: str | None = None

    def field_text(self, field: str) -> str:
        values = {
            "device_id": f"ID {self.device_id}",
            "device_type": self.device_type,
            "model": self.model or "",
            "type_model": " · ".join(v for v in (self.device_type, self.model) if v),
            "manufacturer": self.manufacturer or "",
            "serial": f"S/N {self.serial}" if self.serial else "",
            "batch": f"Batch {self.batch}" if self.batch else "",
        }
        return values[field]


@dataclass(frozen=True)
class RenderResult:
    labels: int
    pages: int


def _register_fonts() -> None:
    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(FONT, "Vera.ttf"))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, "VeraBd.ttf"))


def label_fonts(t: Template) -> tuple[str, str]:
    """(regular, bold) font names for a template: Vera, or its own TrueType file for both."""
    _register_fonts()
    if t.font == "vera":
        return FONT, FONT_BOLD
    name = "ProvisionTTF-" + hashlib.sha256(t.font.encode()).hexdigest()[:12]
    if name not in pdfmetrics.getRegisteredFontNames():
        try:
            pdfmetrics.registerFont(TTFont(name, t.font))
        except Exception as exc:  # reportlab raises TTFError and plain errors alike
            raise TemplateError(f"{t.name}: cannot use font {t.font}: {exc}") from None
    return name, name


def render_label_sheets(
    labels: Iterable[LabelData],
    template: Template,
    out: BinaryIO | str | Path,
    *,
    start_at: int = 1,
    title: str = "provision labels",
    copies: int = 1,
    offset_x_mm: float = 0.0,
    offset_y_mm: float = 0.0,
) -> RenderResult:
    """Draw every label onto sheets of `template`; `start_at` skips used positions of page 1.

    `copies` prints each label that many times in a row; the offsets (right and down, in mm)
    are a printer's calibration and move every label by that much.
    """
    if copies < 1:
        raise TemplateError("--copies must be at least 1")
    if start_at < 1 or start_at > template.per_page:
        raise TemplateError(
            f"--start-at must be between 1 and {template.per_page} for {template.name}"
        )
    _register_fonts()
    page_size = (template.page_width * mm, template.page_height * mm)
    canvas = Canvas(
        str(out) if isinstance(out, Path) else out,
        pagesize=page_size,
        invariant=True,
        pageCompression=1,
    )
    canvas.setTitle(title)
    canvas.setCreator("provision")
    # Viewers default to "fit to page" (96%): that would shift every label off its die-cut.
    canvas.setViewerPreference("PrintScaling", "None")
    position, count, pages = start_at - 1, 0, 0
    offset = (offset_x_mm, offset_y_mm)
    for label in labels:
        for _ in range(copies):
            if count == 0:
                pages = 1
            elif position == template.per_page:
                canvas.showPage()
                position, pages = 0, pages + 1
            _draw_label(canvas, template, position, label, offset)
            position += 1
            count += 1
    if count:
        canvas.showPage()
    canvas.save()
    return RenderResult(labels=count, pages=pages)


def render_alignment_page(
    template: Template,
    out: BinaryIO | str | Path,
    *,
    offset_x_mm: float = 0.0,
    offset_y_mm: float = 0.0,
) -> RenderResult:
    """One page of label outlines and millimetre rulers, to calibrate a printer's offsets.

    Print it on plain paper, hold it against a label sheet to the light, and measure how far
    the outlines sit from the die-cuts: those are the station's --offset-x/--offset-y.
    """
    _register_fonts()
    t = template
    canvas = Canvas(
        str(out) if isinstance(out, Path) else out,
        pagesize=(t.page_width * mm, t.page_height * mm),
        invariant=True,
    )
    canvas.setTitle(f"provision alignment page: {t.name}")
    canvas.setCreator("provision")
    canvas.setViewerPreference("PrintScaling", "None")
    canvas.setLineWidth(0.3)
    page_h = t.page_height
    for i in range(t.per_page):
        x0, y0 = t.label_origin(i)
        x0, y0 = x0 + offset_x_mm, y0 + offset_y_mm
        radius = t.label_width / 2 if t.shape == "round" else t.corner_radius
        canvas.roundRect(
            x0 * mm,
            (page_h - y0 - t.label_height) * mm,
            t.label_width * mm,
            t.label_height * mm,
            radius * mm,
            stroke=1,
            fill=0,
        )
        canvas.setFont(FONT, 6)
        canvas.drawString((x0 + 1) * mm, (page_h - y0 - 3) * mm, str(i + 1))
    # Rulers along the top and left edges: a tick each millimetre, longer each 5 and 10.
    canvas.setFont(FONT, 5)
    for x in range(int(t.page_width) + 1):
        tick = 4 if x % 10 == 0 else 2.5 if x % 5 == 0 else 1.5
        canvas.line(x * mm, page_h * mm, x * mm, (page_h - tick) * mm)
        if x % 10 == 0 and x:
            canvas.drawCentredString(x * mm, (page_h - 6) * mm, str(x))
    for y in range(int(t.page_height) + 1):
        tick = 4 if y % 10 == 0 else 2.5 if y % 5 == 0 else 1.5
        canvas.line(0, (page_h - y) * mm, tick * mm, (page_h - y) * mm)
        if y % 10 == 0 and y:
            canvas.drawString(5 * mm, (page_h - y - 0.7) * mm, str(y))
    canvas.drawString(
        20 * mm,
        8 * mm,
        f"{t.name}  offsets x {offset_x_mm:+.2f} mm, "
        f"y {offset_y_mm:+.2f} mm  (print at 100%, no scaling)",
    )
    canvas.showPage()
    canvas.save()
    return RenderResult(labels=0, pages=1)


def _draw_label(
    canvas: Canvas,
    t: Template,
    position: int,
    label: LabelData,
    offset: tuple[float, float] = (0.0, 0.0),
) -> None:
    x0, y0 = t.label_origin(position)  # mm from the page's top-left
    x0, y0 = x0 + offset[0], y0 + offset[1]
    symbol = encode_qr(label.url)
    m = t.module_size(symbol.size)
    # The template was checked for a typical URL; a longer base URL makes a bigger symbol.
    least = t.least_module
    if m + 1e-9 < least:
        raise TemplateError(
            f"{t.name}: the {len(label.url)}-character QR URL needs a version {symbol.version} "
            f"code ({symbol.size} modules), whose modules would be {m:.3f} mm on this "
            f"{t.label_width} x {t.label_height} mm label, below the readable {least:.3f} mm; "
            "use a shorter base URL or a larger label"
        )
    total = (symbol.size + 2 * QUIET_ZONE) * m
    # The quiet zone sits inside the label; the dark area starts on a whole printer dot.
    # A round label centres the code in the circle's inscribed square and prints no text.
    left = (t.label_width - total) / 2 if t.shape == "round" else t.edge
    qx = _snap(x0 + left + QUIET_ZONE * m, t.dot)
    qy = _snap(y0 + (t.label_height - total) / 2 + QUIET_ZONE * m, t.dot)
    page_h = t.page_height
    # The symbol in module units, y down from its top-left corner: each run of dark modules is
    # an integer rectangle, so the operators need no float formatting; one fill for them all.
    scale = m * mm
    canvas.addLiteral(
        f"q {_num(scale)} 0 0 {_num(-scale)} {_num(qx * mm)} {_num((page_h - qy) * mm)} cm\n"
        + "\n".join([f"{col} {row} {run} 1 re" for row, col, run in symbol.runs])
        + "\nf Q"
    )

    if t.shape == "round":
        return
    text_left = qx + (symbol.size + QUIET_ZONE) * m
    text_width = x0 + t.label_width - t.edge - 0.5 - text_left
    lines = [(f, label.field_text(f)) for f in t.fields]
    lines = [(f, s) for f, s in lines if s]
    if not lines or text_width <= 2:
        return
    size = t.font_size
    block = len(lines) * size * LINE_SPACING / 72 * 25.4  # mm
    y = y0 + (t.label_height - block) / 2
    for field, text in lines:
        regular, bold = label_fonts(t)
        font = bold if field == "device_id" else regular
        fitted, fsize = _fit(text, font, size, text_width * mm)
        y += size * LINE_SPACING / 72 * 25.4
        canvas.setFont(font, fsize)
        canvas.drawString(text_left * mm, (page_h - y + size * 0.25 / 72 * 25.4) * mm, fitted)


def _fit(text: str, font: str, size: float, width_pt: float) -> tuple[str, float]:
    """Shrink the text down to MIN_FONT_SIZE, then cut it with an ellipsis, to fit the width."""
    # The shrunk size is computed to fill the width exactly; floating-point rounding can make
    # it measure a hair (1e-14 pt) wider, which must not cut the last character of a device id.
    room = width_pt + FIT_SLACK_PT
    w = pdfmetrics.stringWidth(text, font, size)
    if w <= room:
        return text, size
    smaller = max(MIN_FONT_SIZE, size * width_pt / w)
    if pdfmetrics.stringWidth(text, font, smaller) <= room:
        return text, smaller
    while text and pdfmetrics.stringWidth(text + "…", font, smaller) > room:
        text = text[:-1]
    return text + "…", smaller


def _num(value: float) -> str:
    """A PDF number: 6 decimals (a millionth of a point), no trailing zeros."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _snap(value_mm: float, dot_mm: float) -> float:
    return round(value_mm / dot_mm) * dot_mm
