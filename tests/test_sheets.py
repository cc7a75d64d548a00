"""Label sheets drawn by worker processes and streamed into one PDF, checked from outside.

A batch of more than 2 * TASK_PAGES pages is drawn once in this process and once by worker
processes: the two files must be the same bytes. The parallel file is then read the way a print
station and a phone read it: PDFium opens and rasterises it, zxing-cpp decodes the QR codes on
pages of different tasks, PDFium's text layer gives back each label's device id (through the
ToUnicode CMap of the glyph-id fonts), PDFium hands out the embedded font programs, which
fontTools compares with the original Vera files, and qpdf checks the file's structure.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
import pytest
import zxingcpp
from fontTools.ttLib import TTFont

from provision.errors import TemplateError
from provision.files import atomic_writer, publish_revision
from provision.keys import Keyring, init_keyring
from provision.labels.pdf import PAGES_PER_NODE
from provision.labels.render import (
    TASK_PAGES,
    VERA,
    LabelData,
    RenderResult,
    render_label_sheets,
)
from provision.labels.templates import Template, load_template
from provision.payload import payload_url, sign_token, verify_payload
from tests.helpers import QR_MODEL2
from tests.test_templates import cell_of, make_labels

TEMPLATE = "avery-5160"  # US Letter, 3 x 10 labels
PER_PAGE = 30
PAGE_PT = (612.0, 792.0)
BATCH = 2000  # 67 pages: tasks of 20, 20, 20 and 7 pages
PAGES = -(-BATCH // PER_PAGE)
DPI = 300
# One label far into the batch, drawn by a worker, names its model in non-ASCII characters.
UNICODE_MODEL = "Wärmezähler · Größe"
UNICODE_AT = (PAGES - 1) * PER_PAGE + 5  # the last page, position 6
# Pages decoded: the first, both sides of the first task boundary, a middle one, the last.
SAMPLE_PAGES = (0, TASK_PAGES - 1, TASK_PAGES, PAGES // 2, PAGES - 1)
# While the labels of the third task are read, the pool (if any) is running.
WATCH_AT = 2 * TASK_PAGES * PER_PAGE + PER_PAGE
# A base URL long enough (a 526-character QR URL, a version 14 code) that its modules would be
# below the template's readable 0.3 mm on an avery-5160 label.
LONG_BASE_URL = "https://" + "activation-service." * 24 + "example.com"


# -- fixtures and helpers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    pdf: bytes
    result: RenderResult
    children: list[int]  # processes alive while the third task's labels were read


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return init_keyring(tmp_path_factory.mktemp("keys") / "keyring.json")


@pytest.fixture(scope="module")
def template() -> Template:
    t = load_template(TEMPLATE)
    assert t.per_page == PER_PAGE
    return t


@pytest.fixture(scope="module")
def labels(keyring: Keyring) -> list[LabelData]:
    """BATCH labels with real signed URLs; one of them shows a non-ASCII model name."""
    out = make_labels(keyring, BATCH, prefix="sheets")
    out[UNICODE_AT] = dataclasses.replace(out[UNICODE_AT], model=UNICODE_MODEL)
    assert PAGES > 2 * TASK_PAGES + 1  # more than two tasks, the last one partly filled
    return out


def watching(labels: Iterable[LabelData], at: int, seen: list[int]) -> Iterator[LabelData]:
    """The labels, noting how many child processes are alive when label `at` is read."""
    for i, label in enumerate(labels):
        if i == at:
            seen.append(len(multiprocessing.active_children()))
        yield label


def render(
    labels: Iterable[LabelData],
    template: Template,
    *,
    workers: int,
    copies: int = 1,
    start_at: int = 1,
) -> Rendered:
    buf = io.BytesIO()
    seen: list[int] = []
    result = render_label_sheets(
        watching(labels, WATCH_AT, seen),
        template,
        buf,
        workers=workers,
        copies=copies,
        start_at=start_at,
    )
    return Rendered(buf.getvalue(), result, seen)


@pytest.fixture(scope="module")
def rendered(labels: list[LabelData], template: Template) -> dict[int, Rendered]:
    """The batch drawn in this process (workers=1) and by two worker processes."""
    return {n: render(labels, template, workers=n) for n in (1, 2)}


def first_difference(a: bytes, b: bytes) -> str:
    """Where two PDFs part, for an assertion message (a 2 MB diff would help nobody)."""
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return f"{len(a)} vs {len(b)} bytes, first difference at {at}: {a[at : at + 60]!r} vs " + (
        f"{b[at : at + 60]!r}"
    )


@dataclass
class DecodedPage:
    size: tuple[float, float]
    codes: list[zxingcpp.Barcode]
    text: str


def decode_page(pdf: pdfium.PdfDocument, index: int, dpi: int = DPI) -> DecodedPage:
    """One page rasterised by PDFium, its QR codes read by zxing-cpp, its text by PDFium."""
    page = pdf[index]
    try:
        image = page.render(scale=dpi / 72, grayscale=True).to_numpy()
        codes = zxingcpp.read_barcodes(image, formats=QR_MODEL2)
        textpage = page.get_textpage()
        text = textpage.get_text_range()
        textpage.close()
        width, height = page.get_size()
    finally:
        page.close()
    return DecodedPage((width, height), list(codes), text)


def cells(t: Template, page: DecodedPage) -> dict[int, str]:
    """Decoded content by label position (0-based); every symbol in a cell of its own."""
    found = {cell_of(t, code, DPI): code.text for code in page.codes}
    assert len(found) == len(page.codes), "two symbols in one label cell"
    return found


def printed_ids(text: str) -> list[str]:
    return re.findall(r"ID (\S+)", text)


def font_name(font: pdfium_raw.FPDF_FONT) -> str:
    size = pdfium_raw.FPDFFont_GetBaseFontName(font, None, 0)
    buf = ctypes.create_string_buffer(size)
    pdfium_raw.FPDFFont_GetBaseFontName(font, buf, size)
    return buf.value.decode("ascii")


def font_data(font: pdfium_raw.FPDF_FONT) -> bytes:
    """The font program PDFium loaded for a text object (the decoded FontFile2 stream)."""
    size = ctypes.c_size_t()
    assert pdfium_raw.FPDFFont_GetFontData(font, None, 0, ctypes.byref(size))
    buf = (ctypes.c_uint8 * size.value)()
    assert pdfium_raw.FPDFFont_GetFontData(font, buf, size.value, ctypes.byref(size))
    return bytes(buf)


def embedded_fonts(pdf: pdfium.PdfDocument) -> dict[str, bytes]:
    """Base font name -> font program, over every text object of every page; each embedded."""
    fonts: dict[str, bytes] = {}
    for index in range(len(pdf)):
        page = pdf[index]
        texts = list(page.get_objects(filter=[pdfium_raw.FPDF_PAGEOBJ_TEXT]))
        assert texts, f"page {index + 1} has no text"
        for obj in texts:
            font = pdfium_raw.FPDFTextObj_GetFont(obj.raw)
            assert pdfium_raw.FPDFFont_GetIsEmbedded(font) == 1, f"page {index + 1}"
            name = font_name(font)
            if name not in fonts:
                fonts[name] = font_data(font)
        page.close()
    return fonts


def outline_gids(font: TTFont) -> set[int]:
    """Glyph ids that have an outline (contours, or components)."""
    glyf = font["glyf"]
    return {gid for gid, name in enumerate(font.getGlyphOrder()) if glyf[name].numberOfContours}


def glyphs_for(path: Path, text: str) -> set[int]:
    """Glyph ids of the original font that drawing `text` needs: its characters' glyphs, their
    components, and .notdef; those without an outline (the space) left out."""
    font = TTFont(str(path))
    try:
        cmap = font.getBestCmap()
        glyf = font["glyf"]
        names = {cmap[ord(c)] for c in text} | {".notdef"}
        todo = list(names)
        while todo:
            glyph = glyf[todo.pop()]
            for component in glyph.getComponentNames(glyf) if glyph.isComposite() else []:
                if component not in names:
                    names.add(component)
                    todo.append(component)
        return {font.getGlyphID(n) for n in names} & outline_gids(font)
    finally:
        font.close()


def same_outlines(subset: TTFont, original: TTFont, gids: set[int]) -> list[int]:
    """Glyph ids whose outline in `subset` differs from the one of the same id in `original`."""
    differ = []
    for gid in sorted(gids):
        a, b = subset.getGlyphName(gid), original.getGlyphName(gid)
        ca = subset["glyf"][a].getCoordinates(subset["glyf"])
        cb = original["glyf"][b].getCoordinates(original["glyf"])
        if list(ca[0]) != list(cb[0]) or list(ca[1]) != list(cb[1]):
            differ.append(gid)
    return differ


def structure_problems(data: bytes, pages: int) -> list[str]:
    """What PDFium finds wrong with the file's structure (it repairs silently otherwise)."""
    problems = []
    pdf = pdfium.PdfDocument(data)
    try:
        if not pdfium_raw.FPDF_DocumentHasValidCrossReferenceTable(pdf.raw):
            problems.append("the cross-reference table is invalid (PDFium rebuilt it)")
        if pdfium_raw.FPDF_GetPageCount(pdf.raw) != pages:
            problems.append(f"{pdfium_raw.FPDF_GetPageCount(pdf.raw)} pages, not {pages}")
        version = ctypes.c_int()
        if not pdfium_raw.FPDF_GetFileVersion(pdf.raw, ctypes.byref(version)):
            problems.append("no file version")
        for index in range(pages):
            page = pdfium_raw.FPDF_LoadPage(pdf.raw, index)
            if not page:
                problems.append(f"page {index + 1} does not load")
                continue
            pdfium_raw.FPDF_ClosePage(page)
    finally:
        pdf.close()
    return problems


@pytest.fixture(scope="session")
def qpdf() -> str | None:
    """Debian's qpdf, installed when missing (as `make pytest` installs chromium); None when it
    cannot be had here, and the structure is then checked by PDFium alone."""
    found = shutil.which("qpdf")
    if found or shutil.which("apt-get") is None or os.geteuid() != 0:
        return found
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "qpdf"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            warnings.warn(f"{' '.join(cmd)} failed: {done.stderr.strip()}", stacklevel=1)
            return None
    return shutil.which("qpdf")


# -- the parallel path is the in-process path -------------------------------------------------


def test_workers_write_the_very_bytes_one_process_writes(
    rendered: dict[int, Rendered], labels: list[LabelData], template: Template
) -> None:
    serial, parallel = rendered[1], rendered[2]
    assert serial.result == parallel.result == RenderResult(labels=BATCH, pages=PAGES)
    # The parallel run really ran in two worker processes, the other in none.
    assert (serial.children, parallel.children) == ([0], [2])
    assert parallel.pdf == serial.pdf, first_difference(serial.pdf, parallel.pdf)
    # More workers than cores finish their tasks in another order: still the same file.
    more = render(labels, template, workers=3)
    assert more.children == [3]
    assert more.result == serial.result
    assert more.pdf == serial.pdf, first_difference(serial.pdf, more.pdf)


def font_timestamps(data: bytes) -> list[int]:
    """head.modified of each embedded font program, as PDFium hands them out."""
    pdf = pdfium.PdfDocument(data)
    try:
        programs = embedded_fonts(pdf)
    finally:
        pdf.close()
    out = []
    for name in sorted(programs):
        font = TTFont(io.BytesIO(programs[name]))
        out.append(font["head"].modified)
        font.close()
    return out


def test_the_same_batch_rendered_a_second_later_is_the_same_file(
    labels: list[LabelData], template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = labels[:40]
    folder = tmp_path / "output"

    def write(fh: BinaryIO) -> None:
        render_label_sheets(batch, template, fh)

    published = []
    for now in ("1800000000", "1800000001"):  # the clock, one second on
        monkeypatch.setenv("SOURCE_DATE_EPOCH", now)
        published.append(publish_revision(folder, "b1", "pdf", write))
    (first, _, first_sha), (again, revision, again_sha) = published
    # The print station gets the same b1.pdf back, not a b1.r2.pdf with the same labels.
    assert (again.name, revision, again_sha) == ("b1.pdf", 1, first_sha), (
        sorted(p.name for p in folder.iterdir()),
        font_timestamps(first.read_bytes()),
        font_timestamps(again.read_bytes()),
    )


# -- what PDFium and zxing-cpp read from a multi-task PDF -------------------------------------


def test_codes_and_ids_of_pages_from_every_task_are_the_batch_in_order(
    rendered: dict[int, Rendered], labels: list[LabelData], template: Template, keyring: Keyring
) -> None:
    pdf = pdfium.PdfDocument(rendered[2].pdf)
    try:
        assert len(pdf) == PAGES
        for index in range(PAGES):
            page = pdf[index]
            assert page.get_size() == pytest.approx(PAGE_PT, abs=0.01), index
            page.close()
        for index in SAMPLE_PAGES:
            page = decode_page(pdf, index)
            on_page = labels[index * PER_PAGE : (index + 1) * PER_PAGE]
            # Every label in its cell, row by row in batch order: position k holds label k.
            assert cells(template, page) == {k: label.url for k, label in enumerate(on_page)}
            # The text layer, read through the ToUnicode CMap: each label's full device id.
            assert printed_ids(page.text) == [label.device_id for label in on_page], index
            for label in on_page:
                assert f"ID {label.device_id}" in page.text
        # The URLs are the signed ones: a decoded code verifies and names its label's device.
        last = decode_page(pdf, PAGES - 1)
        for k, url in cells(template, last).items():
            check = verify_payload(url, keyring)
            assert check.valid and check.device_id == labels[(PAGES - 1) * PER_PAGE + k].device_id
    finally:
        pdf.close()


# -- the embedded fonts -----------------------------------------------------------------------


def test_fonts_are_embedded_subsets_keeping_glyph_ids_and_text_extracts_back(
    rendered: dict[int, Rendered], labels: list[LabelData]
) -> None:
    pdf = pdfium.PdfDocument(rendered[2].pdf)
    try:
        fonts = embedded_fonts(pdf)
        unicode_page = decode_page(pdf, UNICODE_AT // PER_PAGE, dpi=72)
    finally:
        pdf.close()
    # Two fonts, each a tagged subset (PDF 9.6.4): "ABCDEF+BitstreamVeraSans-Bold".
    by_style = {re.sub(r"^[A-Z]{6}\+", "", name): data for name, data in fonts.items()}
    assert len(by_style) == len(fonts) == 2, sorted(fonts)
    assert set(by_style) == {"BitstreamVeraSans-Bold", "BitstreamVeraSans-Roman"}
    # What the labels show: bold "ID <hex>" (ASCII letters and digits only), and regular
    # "sensor · M-1", once with a non-ASCII model.
    shown = {
        "BitstreamVeraSans-Bold": (
            VERA / "VeraBd.ttf",
            "".join(f"ID {x.device_id}" for x in labels),
        ),
        "BitstreamVeraSans-Roman": (
            VERA / "Vera.ttf",
            "".join(f"{x.device_type} · {x.model}" for x in labels),
        ),
    }
    for style, (path, text) in shown.items():
        data = by_style[style]
        assert len(data) < path.stat().st_size / 4, (style, len(data), path.stat().st_size)
        subset, original = TTFont(io.BytesIO(data)), TTFont(str(path))
        try:
            # Exactly the glyphs drawn have outlines, at the glyph ids of the whole font...
            assert outline_gids(subset) == glyphs_for(path, text), style
            # ...and they are the original outlines: the pages' glyph ids draw the right glyphs.
            assert same_outlines(subset, original, outline_gids(subset)) == [], style
        finally:
            subset.close()
            original.close()
    # The non-ASCII glyphs came from a page a worker drew, and copy out as the same text.
    assert f"sensor · {UNICODE_MODEL}" in unicode_page.text
    assert f"ID {labels[UNICODE_AT].device_id}" in unicode_page.text


# -- failures ---------------------------------------------------------------------------------


Write = Callable[[BinaryIO], None]
Publish = Callable[[Path, Write], None]


def via_atomic_writer(folder: Path, write: Write) -> None:
    with atomic_writer(folder / "b1.pdf") as fh:
        write(fh)


def via_publish_revision(folder: Path, write: Write) -> None:
    publish_revision(folder, "b1", "pdf", write)  # what render_batch_labels publishes with


@pytest.mark.parametrize("publish", [via_atomic_writer, via_publish_revision])
def test_a_label_failing_in_a_worker_fails_the_render_and_publishes_nothing(
    publish: Publish,
    labels: list[LabelData],
    template: Template,
    keyring: Keyring,
    tmp_path: Path,
) -> None:
    # Label 1300 sits on page 44, in the third task: the first two were sent to the pool first.
    bad_at = 2 * TASK_PAGES * PER_PAGE + 100
    key = keyring.active
    assert key.secret is not None
    bad = labels[bad_at]
    token = sign_token(key.id, key.secret, bad.device_id, 2_000_000_000)
    long_url = payload_url(LONG_BASE_URL, token)
    batch = labels[:1500]
    batch[bad_at] = dataclasses.replace(bad, url=long_url)
    folder = tmp_path / "output"
    folder.mkdir()

    def write(fh: BinaryIO) -> None:
        render_label_sheets(batch, template, fh, workers=2)

    with pytest.raises(TemplateError) as failed:
        publish(folder, write)
    message = str(failed.value)
    assert message.startswith(f"{TEMPLATE}: the {len(long_url)}-character QR URL needs a version ")
    assert "below the readable" in message and "use a shorter base URL" in message
    # It was raised in a worker: concurrent.futures chains the worker's own traceback to it.
    remote = failed.value.__cause__
    assert type(remote).__name__ == "_RemoteTraceback", repr(remote)
    assert "_draw_label" in str(remote)
    # Nothing published, no temporary file left, no worker left running.
    assert sorted(p.name for p in folder.iterdir()) == []
    assert multiprocessing.active_children() == []


class FullDisk(io.BytesIO):
    """An output that fails like a full disk once `limit` bytes are written."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.limit:
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_a_write_error_while_workers_draw_stops_them(
    labels: list[LabelData], template: Template
) -> None:
    out = FullDisk(limit=len(labels) * 1000 // 2)  # about half the file
    with pytest.raises(OSError, match="No space left"):
        render_label_sheets(labels, template, out, workers=2)
    assert multiprocessing.active_children() == []


# -- copies and start_at across a task boundary -----------------------------------------------


@pytest.mark.parametrize("start_at", [5, 6])
def test_copies_and_start_at_place_every_label_across_task_boundaries(
    start_at: int, labels: list[LabelData], template: Template
) -> None:
    copies, n = 2, 320
    free_first = PER_PAGE - (start_at - 1)
    slots = n * copies
    pages = 1 + -(-(slots - free_first) // PER_PAGE)
    assert pages > TASK_PAGES + 1  # two tasks, so the pool draws them
    done = render(labels[:n], template, workers=2, copies=copies, start_at=start_at)
    assert done.result == RenderResult(labels=slots, pages=pages)
    in_process = render(labels[:n], template, workers=1, copies=copies, start_at=start_at)
    assert in_process.result == done.result
    assert in_process.pdf == done.pdf, first_difference(in_process.pdf, done.pdf)

    def expected(index: int) -> dict[int, str]:
        """Label position -> URL on page `index`: each label `copies` times in a row."""
        out = {}
        for position in range(PER_PAGE):
            if index == 0:
                slot = position - (start_at - 1)
            else:
                slot = free_first + (index - 1) * PER_PAGE + position
            if 0 <= slot < slots:
                out[position] = labels[slot // copies].url
        return out

    pdf = pdfium.PdfDocument(done.pdf)
    try:
        assert len(pdf) == pages
        decoded = {
            i: cells(template, decode_page(pdf, i))
            for i in (0, TASK_PAGES - 1, TASK_PAGES, pages - 1)
        }
    finally:
        pdf.close()
    for index, found in decoded.items():
        assert found == expected(index), index
    assert min(decoded[0]) == start_at - 1  # the used positions of page 1 stay empty
    # The last page of the first task and the first of the second: with an odd number of free
    # positions on page 1, one label's two copies are drawn by two tasks, sent to the pool apart.
    last_of_first, first_of_second = decoded[TASK_PAGES - 1][PER_PAGE - 1], decoded[TASK_PAGES][0]
    assert (last_of_first == first_of_second) == (free_first % 2 == 1)


# -- an empty batch ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_no_labels_give_one_blank_valid_page(
    workers: int, template: Template, qpdf: str | None, tmp_path: Path
) -> None:
    done = render([], template, workers=workers)
    assert done.result == RenderResult(labels=0, pages=0)
    pdf = pdfium.PdfDocument(done.pdf)
    try:
        assert len(pdf) == 1
        page = decode_page(pdf, 0)
        assert page.size == pytest.approx(PAGE_PT, abs=0.01)
        assert page.codes == [] and page.text == ""
    finally:
        pdf.close()
    assert structure_problems(done.pdf, 1) == []
    if qpdf:
        path = tmp_path / "empty.pdf"
        path.write_bytes(done.pdf)
        check = subprocess.run([qpdf, "--check", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


# -- structure --------------------------------------------------------------------------------


def test_a_multi_task_pdf_passes_qpdf_check(
    rendered: dict[int, Rendered], qpdf: str | None, tmp_path: Path
) -> None:
    data = rendered[2].pdf
    # PDFium first: a valid cross-reference table (it would rebuild a broken one silently),
    # every page loads.
    assert structure_problems(data, PAGES) == []
    if qpdf is None:
        warnings.warn("qpdf is not installed: checked with PDFium only", stacklevel=1)
        return
    path = tmp_path / "batch.pdf"
    path.write_bytes(data)
    check = subprocess.run([qpdf, "--check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # 2: errors, 3: warnings
    assert "No syntax or stream encoding errors found" in check.stdout
    assert check.stderr == ""
    # PDF 1.7 as the header says; the page tree has two nodes under its root (64 pages a node).
    assert "PDF Version: 1.7" in check.stdout
    assert PAGES > PAGES_PER_NODE
    show = subprocess.run(
        [qpdf, "--show-npages", str(path)], capture_output=True, text=True, check=True
    )
    assert int(show.stdout) == PAGES


# -- fonts of all kinds, and the workers' lifetime ----------------------------------------------


def vera_variant(tmp_path: Path, name: str, change: Callable[[TTFont], None]) -> Path:
    """A copy of Vera with its cmap changed; saved where a template can name it."""
    font = TTFont(str(VERA / "Vera.ttf"))
    change(font)
    path = tmp_path / f"{name}.ttf"
    font.save(str(path))
    font.close()
    return path


def with_font(template: Template, font: Path) -> Template:
    return dataclasses.replace(template, font=str(font))


def test_a_glyph_shared_by_two_characters_gives_the_same_bytes_under_any_hash_seed(
    labels: list[LabelData], template: Template, tmp_path: Path
) -> None:
    # A font drawing space and no-break space with one glyph (Liberation Sans does): ToUnicode
    # can name only one; it must not depend on set order (the hash seed) or on which came first.
    def share_space(font: TTFont) -> None:
        for table in font["cmap"].tables:
            if table.isUnicode():
                table.cmap[0xA0] = table.cmap[0x20]

    font = vera_variant(tmp_path, "shared", share_space)
    script = tmp_path / "render.py"
    script.write_text(
        "import dataclasses, sys\n"
        "from provision.labels.render import LabelData, render_label_sheets\n"
        "from provision.labels.templates import load_template\n"
        f"t = dataclasses.replace(load_template({TEMPLATE!r}), font={str(font)!r})\n"
        "labels = [LabelData('00112233445566ff', 'HTTPS://ID.EXAMPLE.COM/A/X', kind)\n"
        "          for kind in ('Sensor\\u00a0Pro Mk 2', 'Sensor Pro', 'x\\u00a0y z' * 3)]\n"
        "render_label_sheets(labels, t, sys.argv[1], workers=1)\n"
    )
    outputs = []
    for seed in ("1", "2", "3", "4"):
        out = tmp_path / f"seed{seed}.pdf"
        env = os.environ | {"PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, str(script), str(out)], check=True, env=env)
        outputs.append(out.read_bytes())
    assert all(o == outputs[0] for o in outputs), "the PDF depends on the hash seed"
    pdf = pdfium.PdfDocument(io.BytesIO(outputs[0]))
    text = decode_page(pdf, 0, dpi=72).text
    pdf.close()
    assert "Sensor Pro Mk 2" in text  # the shared glyph copies out as the lower, U+0020


@pytest.mark.parametrize("kind", ["windows-symbol", "macintosh"])
def test_a_font_without_a_unicode_cmap_still_draws_its_text(
    labels: list[LabelData], template: Template, tmp_path: Path, kind: str
) -> None:
    # reportlab read such fonts through their (3,0) or (1,0) cmap; so must the sheets.
    def only(font: TTFont) -> None:
        cmap = font["cmap"]
        unicode = font.getBestCmap()
        keep = cmap.getcmap(1, 0) if kind == "macintosh" else cmap.getcmap(3, 1)
        assert keep is not None
        if kind == "windows-symbol":
            keep.platEncID = 0
            keep.cmap = {0xF000 + cp: name for cp, name in unicode.items() if cp < 0x100}
        cmap.tables = [keep]

    font = vera_variant(tmp_path, kind, only)
    one = [labels[0]]
    buf = io.BytesIO()
    render_label_sheets(one, with_font(template, font), buf, workers=1)
    pdf = pdfium.PdfDocument(io.BytesIO(buf.getvalue()))
    page = decode_page(pdf, 0)
    pdf.close()
    assert printed_ids(page.text) == [one[0].device_id]
    assert [c.text for c in page.codes] == [one[0].url]


def test_a_font_that_maps_no_character_is_a_template_error(
    labels: list[LabelData], template: Template, tmp_path: Path
) -> None:
    def empty(font: TTFont) -> None:
        for table in font["cmap"].tables:
            table.cmap.clear()  # (reading it decompiles the table: a plain assignment would not)

    font = vera_variant(tmp_path, "empty", empty)
    with pytest.raises(TemplateError, match="no usable cmap"):
        render_label_sheets(labels[:1], with_font(template, font), io.BytesIO(), workers=1)


def test_workers_end_when_the_rendering_process_is_killed(tmp_path: Path) -> None:
    # cron's timeout, the OOM killer: SIGKILL gives the parent no chance to shut its pool down.
    script = tmp_path / "stall.py"
    script.write_text(
        "import multiprocessing, sys, time\n"
        "from provision.labels.render import TASK_PAGES, LabelData, render_label_sheets\n"
        "from provision.labels.templates import load_template\n"
        "t = load_template('avery-5160')\n"
        "def labels():\n"
        "    for i in range(10**9):\n"
        "        if i == 3 * TASK_PAGES * t.per_page:\n"
        "            kids = [p.pid for p in multiprocessing.active_children()]\n"
        "            print(*kids, flush=True)\n"
        "            time.sleep(600)\n"
        "        yield LabelData(f'{i:016x}', 'HTTPS://ID.EXAMPLE.COM/A/X', 'sensor')\n"
        "render_label_sheets(labels(), t, sys.argv[1], workers=2)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "out.pdf")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    kids = [int(p) for p in proc.stdout.readline().split()]
    assert len(kids) == 2 and all(_alive(k) for k in kids)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(k) for k in kids), "render workers outlived their parent"


def _alive(pid: int) -> bool:
    """Running (not a zombie awaiting its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
