"""Where a label's QR code and text land on the page, and whether an offset keeps them on it.

`place` is the PDF renderer's geometry (provision.labels.render draws every label where it
says); `check_offsets` walks every position of a sheet with it, so a calibration offset (or a
station profile) that would push any label's content over an edge of the page is refused,
naming the label and the edge, before a byte is written. The ZPL renderer has its own geometry
in printer dots (provision.labels.zpl) and checks it the same way, with the same message.

A label's content is what the renderer draws: the QR code with its quiet zone, and the column
its text lines are fitted into (the block of the template's text lines, vertically centred, as
high as the label at most). The edge margin around it is blank, so an offset may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from provision.errors import TemplateError
from provision.labels.templates import TOLERANCE_MM, TYPICAL_QR_MODULES, Template
from provision.qr import QUIET_ZONE

LINE_SPACING = 1.2  # text lines, as a multiple of the font size
TEXT_RIGHT_MARGIN_MM = 0.5  # the text stops this far inside the edge margin
MIN_TEXT_WIDTH_MM = 2.0  # a narrower text column is left out
# Content may pass the page edge by this much (the rounding slack a template's labels get).
EDGE_TOLERANCE_MM = TOLERANCE_MM
EDGES = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Box:
    """A rectangle in mm from the page's (or the label's) top-left corner, y down."""

    left: float
    top: float
    right: float
    bottom: float

    def union(self, other: Box) -> Box:
        return Box(
            min(self.left, other.left),
            min(self.top, other.top),
            max(self.right, other.right),
            max(self.bottom, other.bottom),
        )

    def overshoot(self, width: float, height: float) -> tuple[str, float]:
        """The edge of a `width` x `height` area this box passes furthest, and by how much
        (zero or less: inside)."""
        by = {
            "left": -self.left,
            "right": self.right - width,
            "top": -self.top,
            "bottom": self.bottom - height,
        }
        edge = max(EDGES, key=lambda e: by[e])
        return edge, by[edge]


@dataclass(frozen=True)
class Placement:
    """One label at one position with a QR symbol of one size, as the PDF renderer draws it.

    Lengths in mm from the page's top-left corner, offsets applied.
    """

    x0: float  # the label's top-left corner
    y0: float
    module: float
    qr_x: float  # the dark area's top-left corner, on the printer's dot grid
    qr_y: float
    modules: int  # symbol size, without the quiet zone
    text_left: float
    text_width: float
    has_text: bool  # False: a round label, or no room for a text column
    line_mm: float  # one text line

    @property
    def quiet_zone_box(self) -> Box:
        zone = QUIET_ZONE * self.module
        side = (self.modules + 2 * QUIET_ZONE) * self.module
        left, top = self.qr_x - zone, self.qr_y - zone
        return Box(left, top, left + side, top + side)

    def text_box(self, t: Template, lines: int) -> Box | None:
        """The column `lines` text lines are fitted into, vertically centred on the label."""
        if not self.has_text or lines == 0:
            return None
        block = min(lines * self.line_mm, t.label_height)
        top = self.y0 + (t.label_height - block) / 2
        return Box(self.text_left, top, self.text_left + self.text_width, top + block)

    def content(self, t: Template) -> Box:
        """What is drawn: the QR with its quiet zone, and the column of the template's text."""
        box = self.quiet_zone_box
        text = self.text_box(t, len(t.fields))
        return box if text is None else box.union(text)


def snap(value_mm: float, dot_mm: float) -> float:
    """The nearest whole printer dot."""
    return round(value_mm / dot_mm) * dot_mm


def place(
    t: Template, position: int, modules: int, offset_x_mm: float = 0.0, offset_y_mm: float = 0.0
) -> Placement:
    """Where the label at `position` (0-based) puts a `modules`-module QR code and its text.

    The quiet zone sits inside the label, `edge` from its left side and vertically centred (a
    round label centres it in the circle and prints no text); the dark area starts on a whole
    printer dot; the text column runs from the quiet zone to `edge` + 0.5 mm inside the right.
    """
    x0, y0 = t.label_origin(position)
    x0, y0 = x0 + offset_x_mm, y0 + offset_y_mm
    m = t.module_size(modules)
    total = (modules + 2 * QUIET_ZONE) * m
    left = (t.label_width - total) / 2 if t.shape == "round" else t.edge
    qx = snap(x0 + left + QUIET_ZONE * m, t.dot)
    qy = snap(y0 + (t.label_height - total) / 2 + QUIET_ZONE * m, t.dot)
    text_left = qx + (modules + QUIET_ZONE) * m
    text_width = x0 + t.label_width - t.edge - TEXT_RIGHT_MARGIN_MM - text_left
    has_text = t.shape != "round" and text_width > MIN_TEXT_WIDTH_MM
    line_mm = t.font_size * LINE_SPACING / 72 * 25.4
    return Placement(x0, y0, m, qx, qy, modules, text_left, text_width, has_text, line_mm)


def describe_position(t: Template, position: int) -> str:
    """`label 3 (row 1, column 3)`: a position (0-based) as the alignment page numbers it
    (`label 1` on a roll, one label a page)."""
    if t.per_page == 1:
        return f"label {position + 1}"
    index = position
    for k, lay in enumerate(t.layouts):
        if index < lay.count:
            row, col = divmod(index, lay.columns)
            where = f"layout {k + 1}, " if len(t.layouts) > 1 else ""
            return f"label {position + 1} ({where}row {row + 1}, column {col + 1})"
        index -= lay.count
    raise IndexError(f"{t.name}: position {position} is beyond the {t.per_page} a page")


def _mm(value: float, *, sign: bool = False) -> str:
    """50 -> "50.0", 0.25 -> "0.25": two decimals at most, one at least."""
    text = f"{value:+.2f}" if sign else f"{value:.2f}"
    return text[:-1] if text.endswith("0") else text


def offset_error(
    t: Template,
    position: int,
    edge: str,
    by_mm: float,
    offset_x_mm: float,
    offset_y_mm: float,
    *,
    surface: str = "page",
) -> TemplateError:
    """The one-line refusal: which offset, which label, which edge, by how much."""
    axis, value = ("x", offset_x_mm) if edge in ("left", "right") else ("y", offset_y_mm)
    return TemplateError(
        f"template {t.name}: offset {axis} {_mm(value, sign=True)} mm puts "
        f"{describe_position(t, position)} off the {edge} edge of the {surface} "
        f"by {_mm(by_mm)} mm"
    )


def check_placement(
    t: Template, position: int, placed: Placement, offset_x_mm: float, offset_y_mm: float
) -> None:
    """Refuse a label whose content the offsets move over an edge of the page."""
    if not offset_x_mm and not offset_y_mm:
        return  # nothing moved: the template's own geometry was checked when it loaded
    edge, by = placed.content(t).overshoot(t.page_width, t.page_height)
    if by > EDGE_TOLERANCE_MM:
        raise offset_error(t, position, edge, by, offset_x_mm, offset_y_mm)


def check_offsets(
    template: Template,
    offset_x_mm: float,
    offset_y_mm: float,
    *,
    modules: int = TYPICAL_QR_MODULES,
) -> None:
    """Raise TemplateError if the offsets (mm, right and down) move the content of any label
    of the sheet off the page, naming the first such label in label order and the edge.

    `modules`: the QR symbol's size (the typical activation URL's, version 4, unless told).
    Every position of the sheet is checked, used on this page or not: a calibration that loses
    a position is wrong for the sheet.
    """
    if not offset_x_mm and not offset_y_mm:
        return
    for position in range(template.per_page):
        placed = place(template, position, modules, offset_x_mm, offset_y_mm)
        check_placement(template, position, placed, offset_x_mm, offset_y_mm)
