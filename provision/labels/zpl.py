"""ZPL II for thermal roll printers: one ^XA ... ^XZ format per label, everything in printer dots.

A PDF sent to a 203 dpi thermal printer is rasterised by the driver and its QR codes blur; ZPL
lets the printer draw the QR itself, module by module, at a whole number of dots per module.
The layout follows the PDF renderer (provision.labels.render): the QR on the left with its
4-module quiet zone inside the label, the text lines on the right, vertically centred.

References: Zebra ZPL II Programming Guide, ^BQ (QR Code Bar Code, and "QR Switches" for the
^FD field data), ^BY (Bar Code Field Default), ^FH (Field Hexadecimal Indicator), ^CI, ^PQ.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from reportlab.pdfbase import pdfmetrics

from provision.errors import ProvisionError, TemplateError
from provision.labels.layout import (
    EDGE_TOLERANCE_MM,
    LINE_SPACING,
    TEXT_RIGHT_MARGIN_MM,
    Box,
    offset_error,
)
from provision.labels.render import LabelData, RenderResult
from provision.labels.templates import MM_PER_INCH, TYPICAL_QR_MODULES, Template
from provision.qr import QUIET_ZONE, encode_qr

# QR Code alphanumeric mode (ISO/IEC 18004): 45 characters. payload_url() uppercases the URL so
# every activation URL is in this set.
QR_ALPHANUMERIC = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
# ^BQ magnification: "1 to 10" in the ZPL II guides for X.10 (2006) and 2013 firmware; current
# guides allow up to 100. We never ask for more than 10, so every firmware prints the symbol; a
# template whose module would be bigger gets a smaller (still >= 1.25 mm) module than its PDF.
MAX_MAGNIFICATION = 10
# ^BY sets the bar code height (h, power-up value 10 dots). Zebra firmware draws a ^FO-positioned
# ^BQ symbol that many dots *below* the field origin (the guide does not say so; Labelary, and the
# BinaryKits.Zpl, zebrash and ZPLab renderers checked against real printers, all reproduce it).
# h persists in the printer between formats, so each format pins it and every QR ^FO is moved up
# by the same amount: the symbol's top edge then lands exactly where we computed.
BQ_TOP_OFFSET_DOTS = 10
BY_COMMAND = f"^BY2,3,{BQ_TOP_OFFSET_DOTS}"  # module width 2 and ratio 3.0: the power-up values
# ^FH hex escapes (indicator "_"): ^ starts a format command and ~ a control command even inside
# ^FD, and once ^FH is on, "_" itself must be escaped.
HEX_INDICATOR = "_"
# Scalable font 0 (CG Triumvirate Bold Condensed) has no metrics on this side of the cable. We
# measure with Helvetica-Bold, which is wider than a condensed face, so a line that "fits" here
# always fits on the printer.
MEASURE_FONT = "Helvetica-Bold"
ELLIPSIS = "..."  # font 0 has no U+2026 on every firmware
MIN_FONT_SIZE = 4.0  # points, as the PDF renderer: the narrowest a condensed line may get
# The text stops TEXT_RIGHT_MARGIN_MM inside the edge margin and its lines are LINE_SPACING
# apart, as in the PDF: both come from provision.labels.layout.


@dataclass(frozen=True)
class _Geometry:
    """Where one QR symbol size lands on the label, in dots from the label's top-left."""

    size: int  # modules per side, without the quiet zone
    module: int  # dots per module = ^BQ magnification
    qr_x: int  # left edge of the dark area (the quiet zone is the 4 modules around it)
    qr_y: int  # top edge of the dark area
    text_left: int
    text_right: int


def mm_to_dots(value_mm: float, dpi: int) -> int:
    return round(value_mm * dpi / MM_PER_INCH)


def render_zpl(
    labels: Iterable[LabelData],
    template: Template,
    out: BinaryIO,
    *,
    copies: int = 1,
    offset_x_mm: float = 0.0,
    offset_y_mm: float = 0.0,
) -> RenderResult:
    """Write one ^XA ... ^XZ label format per label to `out` (UTF-8 bytes, ^CI28).

    `copies` prints each label that many times (^PQ); the offsets are a station's calibration,
    applied by moving every field origin by the nearest whole number of dots. An offset that
    would move a label's QR code or text off the label is a TemplateError, raised before the
    first byte (see check_zpl_offsets). The result counts the labels the printer prints, copies
    included, one a page, as the PDF renderer counts them on a roll.
    """
    _check_roll(template)
    if copies < 1:
        raise ProvisionError("--copies must be at least 1")
    dx, dy = mm_to_dots(offset_x_mm, template.dpi), mm_to_dots(offset_y_mm, template.dpi)
    labels = iter(labels)
    first = next(labels, None)
    if first is None:  # nothing to print, but offsets that lose the content are still wrong
        check_zpl_offsets(template, offset_x_mm, offset_y_mm)
    else:
        labels = itertools.chain([first], labels)
    geometries: dict[int, _Geometry] = {}
    count = 0
    for label in labels:
        symbol = encode_qr(label.url)
        geo = geometries.get(symbol.size)
        if geo is None:
            geo = geometries[symbol.size] = _geometry(template, symbol.size, label.url)
            _check_content(template, geo, offset_x_mm, offset_y_mm)
        out.write(_format(template, label, geo, copies, dx, dy).encode("utf-8"))
        count += copies
    return RenderResult(labels=count, pages=count)


def check_zpl_offsets(
    template: Template,
    offset_x_mm: float,
    offset_y_mm: float,
    *,
    modules: int = TYPICAL_QR_MODULES,
) -> None:
    """Raise TemplateError if the offsets (mm, right and down) move the ZPL label's QR code
    (with its quiet zone) or its text column past an edge of the label (^PW x ^LL).

    `modules`: the QR symbol's size (the typical activation URL's, version 4, unless told).
    A sheet template is refused as render_zpl refuses it.
    """
    _check_roll(template)
    _check_content(template, _geometry(template, modules), offset_x_mm, offset_y_mm)


def _check_roll(t: Template) -> None:
    if t.per_page != 1:
        raise TemplateError(
            f"{t.name}: ZPL is for thermal rolls (one label across); this template has "
            f"{t.per_page} labels a sheet: use --format pdf"
        )


def _check_content(t: Template, geo: _Geometry, offset_x_mm: float, offset_y_mm: float) -> None:
    """Refuse offsets that move the content of `geo` (in dots, as _format draws it) off the
    label, with the PDF renderer's message (provision.labels.layout)."""
    if not offset_x_mm and not offset_y_mm:
        return
    dx, dy = mm_to_dots(offset_x_mm, t.dpi), mm_to_dots(offset_y_mm, t.dpi)
    left, top, right, bottom = _content_dots(t, geo)
    dot = t.dot
    box = Box((left + dx) * dot, (top + dy) * dot, (right + dx) * dot, (bottom + dy) * dot)
    width, height = mm_to_dots(t.label_width, t.dpi), mm_to_dots(t.label_height, t.dpi)
    edge, by = box.overshoot(width * dot, height * dot)
    if by > EDGE_TOLERANCE_MM:
        raise offset_error(t, 0, edge, by, offset_x_mm, offset_y_mm, surface="label")


def _content_dots(t: Template, geo: _Geometry) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) dots from the label's top-left, before any offset, of what
    _format draws: the QR with its quiet zone, and the column of the template's text lines."""
    zone = QUIET_ZONE * geo.module
    side = (geo.size + 2 * QUIET_ZONE) * geo.module
    left, top = geo.qr_x - zone, geo.qr_y - zone
    right, bottom = left + side, top + side
    if _has_text(t, geo) and t.fields:
        rows = _text_rows(t, len(t.fields))
        label_height = mm_to_dots(t.label_height, t.dpi)
        text_top = max(0, rows.top)
        text_bottom = min(label_height, rows.top + (len(t.fields) - 1) * rows.pitch + rows.height)
        left, right = min(left, geo.text_left), max(right, geo.text_right)
        top, bottom = min(top, text_top), max(bottom, text_bottom)
    return left, top, right, bottom


def _has_text(t: Template, geo: _Geometry) -> bool:
    """Whether there is room for text lines (the PDF also drops text narrower than 2 mm)."""
    return geo.text_right - geo.text_left > mm_to_dots(2, t.dpi)


@dataclass(frozen=True)
class _TextRows:
    """The text lines of a label, in dots: glyph height, narrowest width, pitch, first top."""

    height: int
    least: int
    pitch: int
    top: int


def _text_rows(t: Template, lines: int) -> _TextRows:
    """`lines` text lines vertically centred on the label."""
    height = mm_to_dots(t.font_size * MM_PER_INCH / 72, t.dpi)
    least = max(1, mm_to_dots(MIN_FONT_SIZE * MM_PER_INCH / 72, t.dpi))
    pitch = round(height * LINE_SPACING)
    top = round((t.label_height / t.dot - lines * pitch) / 2) + (pitch - height) // 2
    return _TextRows(height, least, pitch, top)


def _geometry(t: Template, size: int, url: str | None = None) -> _Geometry:
    """The same module and placement as the PDF renderer, in whole printer dots."""
    dot = t.dot
    width, height = mm_to_dots(t.label_width, t.dpi), mm_to_dots(t.label_height, t.dpi)
    # template.module_size is already a whole number of dots; round() only removes float noise.
    module = round(t.module_size(size) / dot)
    # The template's least module: min_module_mm and min_dots (4 dots below 300 dpi).
    least = math.ceil(t.least_module / dot - 1e-9)
    if module < least:
        what = "the QR URL" if url is None else f"the {len(url)}-character QR URL"
        raise TemplateError(
            f"{t.name}: {what} needs a {size}-module code, whose "
            f"modules would be {module} dots ({module * dot:.3f} mm) on this {t.label_width} x "
            f"{t.label_height} mm label at {t.dpi} dpi, below the readable {least} dots; "
            "use a shorter base URL or a larger label"
        )
    module = min(module, MAX_MAGNIFICATION)
    total = (size + 2 * QUIET_ZONE) * module  # symbol and quiet zone, dots
    # A rectangular label: quiet zone's left edge at the template's edge margin, vertically
    # centred, as in the PDF, text on the right. A round label: the QR centred in the circle
    # (qr_room is the inscribed square), no room for text. Then clamped so all four quiet-zone
    # sides lie inside the label whatever the rounding did.
    centre_y = round((t.label_height / dot - total) / 2)
    if t.shape == "round":
        zone_x = round((t.label_width / dot - total) / 2)
    else:
        zone_x = mm_to_dots(t.edge, t.dpi)
    zone_x = min(max(zone_x, 0), width - total)
    zone_y = min(max(centre_y, 0), height - total)
    if zone_x < 0 or zone_y < 0:
        raise TemplateError(
            f"{t.name}: a {size}-module QR code with its quiet zone needs {total} x {total} dots, "
            f"more than the {width} x {height} dot label"
        )
    qr_x, qr_y = zone_x + QUIET_ZONE * module, zone_y + QUIET_ZONE * module
    text_left = qr_x + (size + QUIET_ZONE) * module
    text_right = width - mm_to_dots(t.edge + TEXT_RIGHT_MARGIN_MM, t.dpi)
    if t.shape == "round":
        text_right = text_left  # no text lines
    return _Geometry(size, module, qr_x, qr_y, text_left, text_right)


def _format(t: Template, label: LabelData, geo: _Geometry, copies: int, dx: int, dy: int) -> str:
    def origin(x: int, y: int, what: str) -> str:
        x, y = x + dx, y + dy
        if x < 0 or y < 0:
            raise TemplateError(
                f"{t.name}: the calibration offset moves the {what} off the label "
                f"(field origin {x},{y} dots); ZPL field origins cannot be negative"
            )
        return f"^FO{x},{y}"

    lines = [
        "^XA",
        "^CI28",  # field data is UTF-8
        f"^PW{mm_to_dots(t.label_width, t.dpi)}",
        f"^LL{mm_to_dots(t.label_height, t.dpi)}",
        "^LH0,0",
        BY_COMMAND,
        origin(geo.qr_x, geo.qr_y - BQ_TOP_OFFSET_DOTS, "QR code")
        + f"^BQN,2,{geo.module}"
        + _qr_field_data(label.url)
        + "^FS",
    ]
    texts = [s for s in (label.field_text(f) for f in t.fields) if s]
    room = geo.text_right - geo.text_left
    if texts and _has_text(t, geo):
        rows = _text_rows(t, len(texts))
        height = rows.height
        for i, text in enumerate(texts):
            fitted, width = _fit(text, height, rows.least, room)
            lines.append(
                f"^A0N,{height},{width}"
                + origin(geo.text_left, rows.top + i * rows.pitch, "text")
                + _field_data(fitted)
                + "^FS"
            )
    if copies > 1:
        lines.append(f"^PQ{copies}")
    lines.append("^XZ")
    return "\n".join(lines) + "\n"


def _qr_field_data(url: str) -> str:
    """^FD for ^BQ: ECC level M, manual input, and the character mode stated explicitly.

    The guide's "QR Switches": the ^FD data starts with the error-correction level (H, Q, M, L),
    then the data input (A = automatic, M = manual) and a comma; with manual input the character
    mode follows (N, A, Bxxxx, K). Automatic input ("MA,") states no mode at all: the firmware
    picks one, and a symbol in another mode could be a bigger version than the one the quiet zone
    was sized for. "MM,A" is ECC M with alphanumeric mode by definition (the guide's own example
    is ^FDMM,AAC-42); it is the symbol segno makes for the PDF, so both renderers print the same
    version at the same module size.
    A URL outside the 45-character alphanumeric set (payload_url() never makes one) is sent in
    byte mode, "MM,Bxxxx" with xxxx its length, which is also what segno chooses for it.
    """
    if url and all(c in QR_ALPHANUMERIC for c in url):
        return f"^FDMM,A{url}"
    if not all(" " <= c <= "~" for c in url):
        raise ProvisionError(
            f"QR URL {url!r} is not printable ASCII; ZPL byte mode takes 8-bit characters only"
        )
    return _field_data(url, prefix=f"MM,B{len(url):04d}")


def _field_data(text: str, prefix: str = "") -> str:
    """^FD with ^ and ~ (and then _) as ^FH hex escapes; control characters become spaces."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    if "^" not in text and "~" not in text:
        return f"^FD{prefix}{text}"
    escaped = "".join(f"{HEX_INDICATOR}{ord(c):02X}" if c in "^~_" else c for c in text)
    return f"^FH{HEX_INDICATOR}^FD{prefix}{escaped}"


def _fit(text: str, height: int, least: int, room: int) -> tuple[str, int]:
    """Condense the character width (^A0 w) down to `least` dots, then cut, to fit `room` dots."""
    width = height
    measured = pdfmetrics.stringWidth(text, MEASURE_FONT, width)
    if measured <= room:
        return text, width
    width = max(least, math.floor(width * room / measured))
    if pdfmetrics.stringWidth(text, MEASURE_FONT, width) <= room:
        return text, width
    while text and pdfmetrics.stringWidth(text + ELLIPSIS, MEASURE_FONT, width) > room:
        text = text[:-1]
    return text + ELLIPSIS, width
