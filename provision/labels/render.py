"""PDF label sheets: one vector path per QR code, snapped to the printer's dot grid.

A batch's pages are drawn in worker processes, a few pages at a time, and streamed in order into
one PDF (provision.labels.pdf): both cores work, and memory does not grow with the batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import multiprocessing
import os
import signal
import sys
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import reportlab
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from provision.errors import TemplateError, worker_deaths
from provision.files import atomic_writer
from provision.labels.layout import check_offsets, check_placement, place
from provision.labels.pdf import FontError, FontMetrics, SheetWriter, merge_glyphs
from provision.labels.pdf import pdf_number as _num
from provision.labels.templates import TYPICAL_QR_MODULES, Template
from provision.qr import QRSymbol, encode_qr

# Bitstream Vera ships inside reportlab; every PDF embeds the subset of it that its labels use,
# so a print station without the font prints exactly what we drew.
VERA = Path(reportlab.__file__).parent / "fonts"
FONT, FONT_BOLD = "ProvisionVera", "ProvisionVeraBold"  # reportlab's names, alignment page
MIN_FONT_SIZE = 4.0
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
        match field:
            case "device_id":
                return f"ID {self.device_id}"
            case "device_type":
                return self.device_type
            case "model":
                return self.model or ""
            case "type_model":
                return " · ".join(v for v in (self.device_type, self.model) if v)
            case "manufacturer":
                return self.manufacturer or ""
            case "serial":
                return f"S/N {self.serial}" if self.serial else ""
            case "batch":
                return f"Batch {self.batch}" if self.batch else ""
        raise KeyError(field)


@dataclass(frozen=True)
class RenderResult:
    labels: int
    pages: int


def _register_fonts() -> None:
    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(FONT, "Vera.ttf"))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, "VeraBd.ttf"))


def label_fonts(t: Template) -> tuple[str, str]:
    """(regular, bold) TrueType files of a template: Vera, or its own font for both."""
    if t.font == "vera":
        regular, bold = str(VERA / "Vera.ttf"), str(VERA / "VeraBd.ttf")
    else:
        regular = bold = t.font
    for path in {regular, bold}:
        try:
            _metrics(path)
        except FontError as exc:
            raise TemplateError(f"{t.name}: cannot use font {t.font}: {exc}") from None
    return regular, bold


@dataclass(frozen=True)
class SheetJob:
    """What drawing a page needs besides its labels; sent once to each worker process."""

    template: Template
    offset: tuple[float, float]  # mm, right and down
    regular: str  # font files
    bold: str
    regular_resource: str  # their names in the page resources
    bold_resource: str
    # (position, QR size) -> where its code and text go; filled as pages are drawn
    slots: dict[tuple[int, int], _Slot] = field(default_factory=dict, compare=False, repr=False)


# (position on the page, label) for each label of one page
Page = list[tuple[int, LabelData]]
# a page's Flate-compressed content stream, and the glyphs it shows: font file -> {gid: char}
ComposedPage = tuple[bytes, dict[str, dict[int, str]]]


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
    workers: int | None = None,
    pool: RenderPool | None = None,
) -> RenderResult:
    """Draw every label onto sheets of `template`; `start_at` skips used positions of page 1.

    `copies` prints each label that many times in a row; the offsets (right and down, in mm)
    are a printer's calibration and move every label by that much (an offset that would move
    any label's content off the page is a TemplateError, raised before anything is written,
    see provision.labels.layout). Pages are drawn by
    `workers` processes (default: one per CPU) when there are more than TASK_PAGES of them,
    or by an open `pool`, and written to `out` in order as they come, so memory stays flat
    however long the batch.
    """
    if copies < 1:
        raise TemplateError("--copies must be at least 1")
    if start_at < 1 or start_at > template.per_page:
        raise TemplateError(
            f"--start-at must be between 1 and {template.per_page} for {template.name}"
        )
    regular, bold = label_fonts(template)
    # An offset that moves a label off the page fails here, before a byte is written; the
    # first label's code sizes the check (each label's own is checked again as it is drawn).
    labels = iter(labels)
    first = next(labels, None)
    modules = encode_qr(first.url).size if first is not None else TYPICAL_QR_MODULES
    check_offsets(template, offset_x_mm, offset_y_mm, modules=modules)
    if first is not None:
        labels = itertools.chain([first], labels)
    # A path is written atomically, as a print file must be; a file object is written as is.
    target = atomic_writer(out) if isinstance(out, str | Path) else contextlib.nullcontext(out)
    with target as fh:
        writer = SheetWriter(
            fh,
            (template.page_width * mm, template.page_height * mm),
            [_metrics(regular), _metrics(bold)],
            title=title,
        )
        job = SheetJob(
            template,
            (offset_x_mm, offset_y_mm),
            regular,
            bold,
            writer.resource(regular),
            writer.resource(bold),
        )
        count = 0
        tasks = _batched(_paginate(labels, template.per_page, start_at, copies), TASK_PAGES)
        for composed, n in _compose_all(job, tasks, workers, pool):
            for content, used in composed:
                writer.add_page(content, used)
            count += n
        pages = writer.pages
        writer.close()
    return RenderResult(labels=count, pages=pages)


TASK_PAGES = 10  # pages a worker draws at a time: about 0.1 s of work, 0.3 MB of results


def _paginate(
    labels: Iterable[LabelData], per_page: int, start_at: int, copies: int
) -> Iterator[Page]:
    page: Page = []
    position = start_at - 1
    for label in labels:
        for _ in range(copies):
            if position == per_page:
                yield page
                page, position = [], 0
            page.append((position, label))
            position += 1
    if page:
        yield page


def _batched(pages: Iterator[Page], n: int) -> Iterator[list[Page]]:
    while batch := list(itertools.islice(pages, n)):
        yield batch


def _worker_deaths() -> contextlib.AbstractContextManager[None]:
    return worker_deaths(
        "labels", "no half-drawn file is left; draw them again with `provision labels BATCH`"
    )


class RenderPool:
    """Worker processes that draw label pages, shared by the renders made while it is open.

    Start it early, while this process is small: a worker is a fork of it, and everything this
    process holds afterwards (a manifest of a million rows, say) is not copied into the workers.
    fork, not spawn or forkserver: a worker starts with the modules and fonts loaded, without
    re-running the caller's main module. It only draws: it never touches a database connection
    it inherits, and a pool worker leaves with os._exit, so nothing inherited is closed twice.
    """

    def __init__(self, workers: int | None = None, template: Template | None = None) -> None:
        self.size = workers if workers is not None else _cpu_count()
        self._pool: ProcessPoolExecutor | None = None
        if template is not None:  # what every worker needs, loaded once before the fork
            label_fonts(template)
            encode_qr("WARM UP").path_operators()
        if self.size > 1 and "fork" in multiprocessing.get_all_start_methods():
            self._pool = ProcessPoolExecutor(
                self.size,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
            try:
                with _worker_deaths():
                    self._pool.submit(int).result()  # with fork, each starts at the first task
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def compose(
        self, job: SheetJob, tasks: Iterable[list[Page]]
    ) -> Iterator[tuple[list[ComposedPage], int]]:
        """(composed pages, labels on them) for each task, in order; here if no workers."""
        pool = self._pool
        if pool is None:
            for task in tasks:
                yield compose_pages(job, task), sum(map(len, task))
            return
        pending: deque[tuple[Future[list[ComposedPage]], int]] = deque()
        try:
            with _worker_deaths():
                for task in tasks:
                    submitted = pool.submit(_compose_in_worker, job, task)
                    pending.append((submitted, sum(map(len, task))))
                    # The reader never runs far ahead of the pool.
                    if len(pending) >= 2 * self.size:
                        future, count = pending.popleft()
                        yield future.result(), count
                while pending:
                    future, count = pending.popleft()
                    yield future.result(), count
        finally:
            for future, _ in pending:  # a failed task or a failed writer: drop the rest
                future.cancel()
            wait([f for f, _ in pending])


def _compose_all(
    job: SheetJob, tasks: Iterator[list[Page]], workers: int | None, pool: RenderPool | None
) -> Iterator[tuple[list[ComposedPage], int]]:
    """(composed pages, labels on them) for each task, in order: in `pool`, or in a pool of
    `workers` processes started here when there is more than one task, else in this process
    (for a label or two, a pool's start-up would cost more than it saves)."""
    if pool is not None:
        yield from pool.compose(job, tasks)
        return
    first = next(tasks, None)
    if first is None:
        return
    second = next(tasks, None)
    everything = itertools.chain([first], [second] if second else [], tasks)
    if second is None:
        yield from RenderPool(1).compose(job, everything)
        return
    with RenderPool(workers, job.template) as own:
        yield from own.compose(job, everything)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_WORKER_JOB: SheetJob | None = None


def _init_worker(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and shuts the pool down,
    # so a worker does not print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Linux: a SIGTERM when the parent dies (killed by cron's timeout, the OOM killer, ...);
    otherwise a worker would wait for its next task forever. Elsewhere, nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _compose_in_worker(job: SheetJob, pages: list[Page]) -> list[ComposedPage]:
    global _WORKER_JOB
    if job != _WORKER_JOB:  # another render: its slots are filled anew
        _WORKER_JOB = job
    return compose_pages(_WORKER_JOB, pages)


_METRICS: dict[str, FontMetrics] = {}


def _metrics(path: str) -> FontMetrics:
    """Font metrics, loaded once per process."""
    if path not in _METRICS:
        _METRICS[path] = FontMetrics.load(path)
    return _METRICS[path]


def compose_pages(job: SheetJob, pages: list[Page]) -> list[ComposedPage]:
    """The content streams of `pages`: PDF operators, Flate-compressed."""
    out: list[ComposedPage] = []
    for page in pages:
        parts: list[bytes] = []
        used: dict[str, dict[int, str]] = {job.regular: {}, job.bold: {}}
        for position, label in page:
            _draw_label(parts, job, position, label, used)
        out.append((_compress(b"".join(parts)), used))
    return out


def _compress(content: bytes) -> bytes:
    return zlib.compress(content, CONTENT_LEVEL)


# zlib level of the page contents: 1 makes them ~1.8x as large as 6 (about 1 kB a label
# instead of 0.55 kB), in a quarter of the time (25 us a label instead of 110 us)
CONTENT_LEVEL = 1


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
    An offset that would move a label's content off the page is refused, as the label sheets
    refuse it, before anything is written.
    """
    check_offsets(template, offset_x_mm, offset_y_mm)
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
    parts: list[bytes],
    job: SheetJob,
    position: int,
    label: LabelData,
    used: dict[str, dict[int, str]],
) -> None:
    symbol = encode_qr(label.url)
    slot = job.slots.get((position, symbol.size))
    if slot is None:
        slot = job.slots[(position, symbol.size)] = _slot(job, position, symbol, label)
    # The symbol in module units, y down from its top-left corner: each run of dark modules is
    # an integer rectangle, so the operators need no float formatting; one fill for them all.
    parts.append(slot.qr_matrix)
    parts.append(symbol.path_operators())
    parts.append(b"f Q\n")
    if slot.text_width_pt is None:
        return
    t = job.template
    lines = [(f, text) for f in t.fields if (text := label.field_text(f))]
    for (name, text), y in zip(lines, slot.baselines[len(lines)], strict=True):
        bold = name == "device_id"
        path = job.bold if bold else job.regular
        resource = job.bold_resource if bold else job.regular_resource
        if name in UNIQUE_FIELDS:  # a text of its own on every label: nothing to reuse
            op, glyphs = _text_op(path, resource, text, t.font_size, slot.text_width_pt)
        else:
            op, glyphs = _cached_text_op(path, resource, text, t.font_size, slot.text_width_pt)
        parts.append(b"BT %s %s%s Tj ET\n" % (slot.text_left, y, op))
        merge_glyphs(used[path], glyphs)


# Fields that differ from label to label; the others (type, model, ...) repeat all batch long.
UNIQUE_FIELDS = frozenset({"device_id", "serial"})


@dataclass(frozen=True)
class _Slot:
    """Where a label at one position, with a QR of one size, puts its code and its text."""

    qr_matrix: bytes  # "q ... cm": module units, origin at the code's top-left corner
    text_left: bytes  # the text's left edge, points
    text_width_pt: float | None  # None: no text (a round label, or no room)
    baselines: dict[int, list[bytes]]  # number of text lines -> each line's baseline, points


def _slot(job: SheetJob, position: int, symbol: QRSymbol, label: LabelData) -> _Slot:
    t = job.template
    placed = place(t, position, symbol.size, *job.offset)  # mm from the page's top-left
    m = placed.module
    # The template was checked for a typical URL; a longer base URL makes a bigger symbol.
    least = t.least_module
    if m + 1e-9 < least:
        from provision.labels.templates import templates_that_fit

        fit = templates_that_fit(symbol.size, t)[:3]
        raise TemplateError(
            f"{t.name}: the {len(label.url)}-character QR URL needs a version {symbol.version} "
            f"code ({symbol.size} modules), whose modules would be {m:.3f} mm on this "
            f"{t.label_width} x {t.label_height} mm label, below the readable {least:.3f} mm; "
            "use a shorter base URL or a larger label"
            + (f" (templates that fit: {', '.join(fit)})" if fit else "")
        )
    # A symbol of another size than the first label's was not checked against the page yet.
    check_placement(t, position, placed, *job.offset)
    qx, qy = placed.qr_x, placed.qr_y
    page_h = t.page_height
    scale = m * mm
    qr_matrix = (
        f"q {_num(scale)} 0 0 {_num(-scale)} {_num(qx * mm)} {_num((page_h - qy) * mm)} cm\n"
    ).encode()
    if not placed.has_text:
        return _Slot(qr_matrix, b"", None, {})
    size = t.font_size
    line_mm = placed.line_mm
    y0 = placed.y0
    baselines: dict[int, list[bytes]] = {}
    for n in range(len(t.fields) + 1):
        y = y0 + (t.label_height - n * line_mm) / 2
        ys = []
        for _ in range(n):
            y += line_mm
            ys.append(_num((page_h - y + size * 0.25 / 72 * 25.4) * mm).encode())
        baselines[n] = ys
    text_left = _num(placed.text_left * mm).encode() + b" "
    return _Slot(qr_matrix, text_left, placed.text_width * mm, baselines)


def _text_op(
    path: str, resource: str, text: str, size: float, width_pt: float
) -> tuple[bytes, tuple[tuple[int, str], ...]]:
    """ " Td /F1 7 Tf <glyph ids>": a text fitted to the width; and the glyphs it shows."""
    font = _metrics(path)
    fitted, fsize = _fit(text, font, size, width_pt)
    glyphs: dict[int, str] = {}
    shown = font.encode(fitted, glyphs)
    return f" Td /{resource} {_num(fsize)} Tf {shown}".encode(), tuple(glyphs.items())


_cached_text_op = functools.lru_cache(maxsize=4096)(_text_op)


def _fit(text: str, font: FontMetrics, size: float, width_pt: float) -> tuple[str, float]:
    """Shrink the text down to MIN_FONT_SIZE, then cut it with an ellipsis, to fit the width."""
    # The shrunk size is computed to fill the width exactly; floating-point rounding can make
    # it measure a hair (1e-14 pt) wider, which must not cut the last character of a device id.
    room = width_pt + FIT_SLACK_PT
    w = font.width(text, size)
    if w <= room:
        return text, size
    smaller = max(MIN_FONT_SIZE, size * width_pt / w)
    if font.width(text, smaller) <= room:
        return text, smaller
    while text and font.width(text + "…", smaller) > room:
        text = text[:-1]
    return text + "…", smaller
