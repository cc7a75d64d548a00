"""Label sheets and single-device labels, checked the way a print station and a phone see them.

Every PDF is rasterised with PDFium and its QR codes are read back with zxing-cpp, a real
decoder; the decoded URLs are then verified with the keyring. Reading our own database back is
never the only check.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
import pytest
import segno
import zxingcpp
from PIL import Image

from provision import pipeline
from provision.errors import TemplateError
from provision.keys import Keyring
from provision.labels.templates import Template, load_template, template_names
from provision.payload import device_token, verify_payload
from provision.qr import QUIET_ZONE
from provision.registry import Registry
from provision.serials import device_id
from tests.conftest import RunCLI
from tests.helpers import QR_MODEL2, decode_pdf, serials_csv
from tests.pgcluster import PostgresCluster

BASE_URL = "http://localhost:5001"  # what the run_cli fixture sets
URL_PREFIX = f"{BASE_URL.upper()}/A/"
MM_PER_INCH = 25.4
PT_PER_MM = 72 / MM_PER_INCH
DECODE_DPI = 300
QR_ALPHANUMERIC = re.compile(r"[0-9A-Z $%*+\-./:]+")


@dataclass(frozen=True)
class Case:
    """A built-in template, a batch size that needs several pages, and what the PDF must be."""

    template: str
    devices: int
    pages: int
    page_pt: tuple[float, float]


CASES = [
    Case("avery-l7160", 25, 2, (595.28, 841.89)),  # A4, 21 a sheet
    Case("avery-5160", 32, 2, (612.0, 792.0)),  # US Letter, 30 a sheet
    Case("thermal-50x30", 3, 3, (50 * PT_PER_MM, 30 * PT_PER_MM)),  # one label a page
]
CASE_IDS = [c.template for c in CASES]


_pg_names = itertools.count()


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite unless a test asks for both (BOTH_DATABASES), to keep this module fast.

    Rendering reads the registry through one query (iter_batch_labels) and `generate` writes
    through the same code as `register`: the end-to-end tests run on both databases, the
    tests of the PDF itself on SQLite only.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = f"labels{os.getpid()}_{next(_pg_names)}"
    url = cluster.create_database(name)
    yield url
    cluster.drop_database(name)


BOTH_DATABASES = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


# -- helpers ----------------------------------------------------------------------------------


def register(run_cli: RunCLI, tmp_path: Path, n: int, batch: str = "b1") -> list[str]:
    """Register n devices as `batch` through the CLI; the manifest's serials, in order."""
    path = serials_csv(tmp_path / f"{batch}-serials.csv", n, prefix=f"{batch.upper()}-")
    result = run_cli("register", str(path), "--batch", batch, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["registered"] == n
    return [f"{batch.upper()}-{i:06d}" for i in range(n)]


def render(run_cli: RunCLI, batch: str, *args: str) -> dict[str, Any]:
    result = run_cli("labels", batch, *args, "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


@dataclass
class DecodedPage:
    image: np.ndarray  # grayscale, 0 = black
    codes: list[zxingcpp.Barcode]
    text: str


def decode_pages(path: Path, dpi: int = DECODE_DPI) -> list[DecodedPage]:
    """Every page rasterised, with its QR codes (positions included) and its text."""
    out = []
    pdf = pdfium.PdfDocument(str(path))
    try:
        for page in pdf:
            image = page.render(scale=dpi / 72, grayscale=True).to_numpy()
            codes = zxingcpp.read_barcodes(image, formats=QR_MODEL2)
            textpage = page.get_textpage()
            out.append(DecodedPage(image, list(codes), textpage.get_text_range()))
            textpage.close()
            page.close()
    finally:
        pdf.close()
    return out


def verify_cli(run_cli: RunCLI, urls: list[str]) -> list[dict[str, Any]]:
    """`provision verify - --json`, fed the URLs as a handheld scanner types them."""
    result = run_cli("verify", "-", "--json", input="".join(u + "\n" for u in urls))
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(urls), result.output
    return lines


def cell_px(t: Template, position: int, dpi: int = DECODE_DPI) -> tuple[float, ...]:
    """A label cell as (left, top, right, bottom) pixels of a page rendered at `dpi`."""
    x, y = t.label_origin(position)
    k = dpi / MM_PER_INCH
    return x * k, y * k, (x + t.label_width) * k, (y + t.label_height) * k


def code_box(code: zxingcpp.Barcode) -> tuple[float, float, float, float]:
    p = code.position
    corners = (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
    xs, ys = [c.x for c in corners], [c.y for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def cell_of(t: Template, code: zxingcpp.Barcode) -> int:
    """The one label position whose cell holds the whole symbol."""
    left, top, right, bottom = code_box(code)
    found = [
        i
        for i in range(t.per_page)
        if (c := cell_px(t, i))[0] <= left and right <= c[2] and c[1] <= top and bottom <= c[3]
    ]
    assert len(found) == 1, (code.text, code_box(code), found)
    return found[0]


def ink_in_ring(image: np.ndarray, outer: tuple[float, ...], inner: tuple[float, ...]) -> int:
    """Dark pixels between the symbol and the quiet zone's outer edge (1 px slack each side)."""
    x0, y0, x1, y1 = (int(v) for v in outer)
    window = image[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].copy()
    il, it, ir, ib = (int(v) for v in inner)
    window[it - 1 - (y0 + 1) : ib + 1 - (y0 + 1), il - 1 - (x0 + 1) : ir + 1 - (x0 + 1)] = 255
    return int((window < 128).sum())


def output_names(output_dir: Path) -> set[str]:
    return {p.name for p in output_dir.iterdir()}


# -- every label decodes and verifies ---------------------------------------------------------


@BOTH_DATABASES
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_label_of_every_template_decodes_and_verifies(
    case: Case,
    run_cli: RunCLI,
    tmp_path: Path,
    output_dir: Path,
    keyring: Keyring,
    db_url: str,
) -> None:
    serials = register(run_cli, tmp_path, case.devices)
    render(run_cli, "b1", "--template", case.template)

    pages = decode_pdf(output_dir / "b1.pdf", dpi=DECODE_DPI)
    per_page = load_template(case.template).per_page
    expected_counts = [min(per_page, case.devices - i) for i in range(0, case.devices, per_page)]
    assert [len(p) for p in pages] == expected_counts
    decoded = [url for page in pages for url in page]
    assert len(decoded) == case.devices
    assert len(set(decoded)) == case.devices, "two labels carry the same code"

    # The decoded set is exactly the batch's payloads, signed again from what is stored...
    registry = Registry(db_url)
    try:
        batch_id = registry.batches.id_of("b1")
        assert batch_id is not None
        stored = [d for chunk in registry.devices.labels(batch_id) for d in chunk]
    finally:
        registry.close()
    assert set(decoded) == {
        URL_PREFIX + device_token(keyring, d.key_id, d.device_id, d.expires_at) for d in stored
    }
    # ...and, independently of the database, every one verifies offline and names a device
    # of the manifest: one label per serial.
    results = verify_cli(run_cli, decoded)
    assert all(r["valid"] is True for r in results), results
    assert len({r["device_id"] for r in results}) == case.devices
    assert {r["device_id"] for r in results} == {d.device_id for d in stored}
    assert {r["device_id"] for r in results} == {device_id(keyring.pepper, s) for s in serials}


def test_a_decoded_url_verifies_on_its_own_with_the_cli_and_the_library(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path, keyring: Keyring
) -> None:
    serials = register(run_cli, tmp_path, 2)
    render(run_cli, "b1")
    url = decode_pdf(output_dir / "b1.pdf")[0][0]
    assert url.startswith(URL_PREFIX)
    result = run_cli("verify", url, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["device_id"] in {device_id(keyring.pepper, s) for s in serials}
    check = verify_payload(url, keyring)
    assert check.valid and check.device_id == data["device_id"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_label_prints_its_full_device_id(
    case: Case, run_cli: RunCLI, tmp_path: Path, output_dir: Path, keyring: Keyring
) -> None:
    serials = register(run_cli, tmp_path, min(case.devices, 8))
    render(run_cli, "b1", "--template", case.template)
    text = "\n".join(p.text for p in decode_pages(output_dir / "b1.pdf"))
    printed = re.findall(r"ID (\S+)", text)  # never shrunk into "ID 65aa89b21a9531…"
    assert sorted(printed) == sorted(device_id(keyring.pepper, s) for s in serials)


def test_shrinking_to_fit_never_cuts_a_text_that_fits_when_shrunk() -> None:
    from reportlab.pdfbase import pdfmetrics

    from provision.labels import render as r

    r._register_fonts()
    bold = r._metrics(str(r.VERA / "VeraBd.ttf"))
    for i in range(300):
        text = f"ID {hashlib.sha256(str(i).encode()).hexdigest()[:16]}"
        for width in (61.933516931073285, 84.34582677165365, 70.0):
            fitted, size = r._fit(text, bold, 8, width)
            assert fitted == text, (text, width)
            # measured independently, by reportlab's own reading of the font
            assert pdfmetrics.stringWidth(fitted, r.FONT_BOLD, size) <= width + 1e-6


# -- the PDF as a printer sees it -------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pdf_has_exact_page_size_page_count_no_print_scaling_and_embedded_fonts(
    case: Case, run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, case.devices)
    render(run_cli, "b1", "--template", case.template)
    data = (output_dir / "b1.pdf").read_bytes()

    pdf = pdfium.PdfDocument(data)
    try:
        assert len(pdf) == case.pages
        for page in pdf:
            assert page.get_size() == pytest.approx(case.page_pt, abs=0.01)
            # Every font a label's text is drawn with travels inside the PDF.
            texts = list(page.get_objects(filter=[pdfium_raw.FPDF_PAGEOBJ_TEXT]))
            assert texts
            for obj in texts:
                font = pdfium_raw.FPDFTextObj_GetFont(obj.raw)
                assert pdfium_raw.FPDFFont_GetIsEmbedded(font) == 1
            page.close()
        # FALSE means "print at actual size"; PDFium reports TRUE when the key is missing.
        assert pdfium_raw.FPDF_VIEWERREF_GetPrintScaling(pdf.raw) == 0
    finally:
        pdf.close()
    assert re.search(rb"/PrintScaling\s*/None", data)
    assert b"/FontFile2" in data


def test_summary_json_names_the_pdf_and_holds_its_sha256(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    case = CASES[0]
    register(run_cli, tmp_path, case.devices)
    printed = render(run_cli, "b1", "--template", case.template)
    pdf = output_dir / "b1.pdf"
    summary = json.loads((output_dir / "b1.json").read_text(encoding="utf-8"))
    assert {"labels", "pages", "template", "sha256", "batch", "pdf"} <= set(summary)
    assert summary["batch"] == "b1"
    assert summary["pdf"] == "b1.pdf"
    assert summary["template"] == case.template
    assert summary["labels"] == case.devices
    assert summary["pages"] == case.pages == len(decode_pdf(pdf))
    assert summary["sha256"] == hashlib.sha256(pdf.read_bytes()).hexdigest()
    assert printed["sha256"] == summary["sha256"]


# -- positions and the symbol itself ----------------------------------------------------------


@BOTH_DATABASES
def test_start_at_leaves_the_first_positions_of_page_one_empty(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path, keyring: Keyring
) -> None:
    t = load_template("avery-l7160")
    serials = register(run_cli, tmp_path, 20)
    summary = render(run_cli, "b1", "--template", t.name, "--start-at", "5")
    assert summary["start_at"] == 5
    first, second = decode_pages(output_dir / "b1.pdf")

    cells_1 = {cell_of(t, code): code.text for code in first.codes}
    assert len(first.codes) == len(cells_1) == t.per_page - 4
    assert sorted(cells_1) == list(range(4, t.per_page))  # positions 5..21, 1-based
    # Page 2 starts again at the first position.
    cells_2 = {cell_of(t, code): code.text for code in second.codes}
    assert len(second.codes) == len(cells_2) == 3
    assert sorted(cells_2) == [0, 1, 2]
    # Labels follow the manifest, row by row: the device of serial k sits in the k-th free cell.
    in_order = [cells_1[c] for c in sorted(cells_1)] + [cells_2[c] for c in sorted(cells_2)]
    ids = [verify_payload(url, keyring).device_id for url in in_order]
    assert ids == [device_id(keyring.pepper, s) for s in serials]


def test_start_at_beyond_the_sheet_fails_and_writes_nothing(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 2)
    result = run_cli("labels", "b1", "--template", "avery-l7160", "--start-at", "22")
    assert result.exit_code == 1
    assert "--start-at must be between 1 and 21" in result.stderr
    assert not output_dir.exists() or output_names(output_dir) == set()


def test_qr_is_uppercase_alphanumeric_full_qr_at_ecc_m(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 3)
    render(run_cli, "b1")
    (page,) = decode_pages(output_dir / "b1.pdf")
    assert len(page.codes) == 3
    for code in page.codes:
        assert code.format == zxingcpp.BarcodeFormat.QRCode  # not MicroQRCode
        assert code.ec_level == "M"
        assert code.text == code.text.upper()
        assert QR_ALPHANUMERIC.fullmatch(code.text), code.text
        reference = segno.make_qr(code.text, error="m", boost_error=False)
        assert reference.mode == "alphanumeric"
        assert reference.error == "M"
        assert not reference.is_micro
        # The label carries the very symbol segno makes for this content at ECC M.
        assert code.extra["Version"] == str(reference.version)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_qr_and_its_quiet_zone_lie_inside_the_label_cell(
    case: Case, run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    t = load_template(case.template)
    register(run_cli, tmp_path, min(case.devices, t.per_page))
    render(run_cli, "b1", "--template", case.template)
    pages = decode_pages(output_dir / "b1.pdf")
    checked = 0
    for page in pages:
        for code in page.codes:
            modules = 17 + 4 * int(code.extra["Version"])
            left, top, right, bottom = code_box(code)
            module_px = (right - left) / modules
            # At least the 2-dot minimum the template promises, and square.
            assert module_px >= max(t.min_module, 2 * t.dot) / MM_PER_INCH * DECODE_DPI - 0.5
            assert (bottom - top) / modules == pytest.approx(module_px, abs=0.1)
            qz = QUIET_ZONE * module_px
            outer = (left - qz, top - qz, right + qz, bottom + qz)
            cell = cell_px(t, cell_of(t, code))
            assert cell[0] - 1 <= outer[0] and outer[2] <= cell[2] + 1, (outer, cell)
            assert cell[1] - 1 <= outer[1] and outer[3] <= cell[3] + 1, (outer, cell)
            # The quiet zone is blank: no text or neighbour drawn into it.
            assert ink_in_ring(page.image, outer, (left, top, right, bottom)) == 0, code.text
            checked += 1
    assert checked == min(case.devices, t.per_page)


# -- reruns and atomic output -----------------------------------------------------------------


def test_rendering_a_batch_again_gives_the_identical_pdf(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 4)
    first = render(run_cli, "b1")
    bytes_first = (output_dir / "b1.pdf").read_bytes()
    second = render(run_cli, "b1")
    assert second["sha256"] == first["sha256"]
    assert (output_dir / "b1.pdf").read_bytes() == bytes_first


def test_a_run_leaves_no_temporary_files(run_cli: RunCLI, tmp_path: Path, output_dir: Path) -> None:
    register(run_cli, tmp_path, 3)
    render(run_cli, "b1")
    render(run_cli, "b1", "--template", "thermal-50x30")
    # A re-render with other content never overwrites: it is a new revision, named by the JSON.
    assert output_names(output_dir) == {"b1.pdf", "b1.r2.pdf", "b1.json"}
    summary = json.loads((output_dir / "b1.json").read_text())
    assert (summary["pdf"], summary["revision"], summary["template"]) == (
        "b1.r2.pdf",
        2,
        "thermal-50x30",
    )


def _crash_midway(monkeypatch: pytest.MonkeyPatch, output_dir: Path) -> list[set[str]]:
    """Make the renderer write part of a PDF, then fail at the third label."""
    real = pipeline.render_label_sheets
    seen: list[set[str]] = []

    def crashing(labels: Any, template: Template, out: Any, **kwargs: Any) -> Any:
        out.write(b"%PDF-1.4\n% half a sheet\n")

        def failing() -> Iterator[Any]:
            for i, label in enumerate(labels):
                if i == 2:
                    seen.append(output_names(output_dir))
                    raise RuntimeError("printer driver exploded")
                yield label

        return real(failing(), template, out, **kwargs)

    monkeypatch.setattr(pipeline, "render_label_sheets", crashing)
    return seen


def test_a_failing_render_leaves_no_pdf_and_no_summary(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(run_cli, tmp_path, 5)
    seen = _crash_midway(monkeypatch, output_dir)
    with pytest.raises(RuntimeError, match="exploded"):
        run_cli("labels", "b1")
    # Midway the PDF existed only under a hidden temporary name...
    (during,) = seen
    assert "b1.pdf" not in during
    assert any(n.startswith(".b1.pdf.") for n in during), during
    # ...which is gone now, and nothing a print station would pick up was written.
    assert output_names(output_dir) == set()


def test_a_failing_rerender_keeps_the_previous_pdf_and_summary(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(run_cli, tmp_path, 5)
    render(run_cli, "b1")
    pdf, summary = (output_dir / "b1.pdf").read_bytes(), (output_dir / "b1.json").read_bytes()
    _crash_midway(monkeypatch, output_dir)
    with pytest.raises(RuntimeError):
        run_cli("labels", "b1", "--template", "avery-5160")
    assert output_names(output_dir) == {"b1.pdf", "b1.json"}
    assert (output_dir / "b1.pdf").read_bytes() == pdf
    assert (output_dir / "b1.json").read_bytes() == summary


# -- what the label says ----------------------------------------------------------------------


def test_thermal_label_prints_the_serial_of_the_device_in_its_qr(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path, keyring: Keyring
) -> None:
    serials = register(run_cli, tmp_path, 3)
    render(run_cli, "b1", "--template", "thermal-50x30")
    pages = decode_pages(output_dir / "b1.pdf", dpi=203)  # the printer's own resolution
    assert len(pages) == 3
    printed = []
    for page in pages:
        found = re.findall(r"S/N (\S+)", page.text)
        assert len(found) == 1, page.text
        (code,) = page.codes
        check = verify_payload(code.text, keyring)
        assert check.valid
        # The serial on the label is the one of the device its QR activates.
        assert check.device_id == device_id(keyring.pepper, found[0])
        assert f"ID {check.device_id}" in page.text
        printed.append(found[0])
    assert printed == serials


def test_avery_l7160_label_does_not_print_the_serial(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path, keyring: Keyring
) -> None:
    serials = register(run_cli, tmp_path, 3)
    render(run_cli, "b1", "--template", "avery-l7160")
    (page,) = decode_pages(output_dir / "b1.pdf")
    assert "S/N" not in page.text
    assert not any(s in page.text for s in serials)
    ids = {device_id(keyring.pepper, s) for s in serials}
    assert set(re.findall(r"ID (\S+)", page.text)) == ids
    assert "sensor · M-1" in page.text


# -- templates --------------------------------------------------------------------------------

TINY = """\
name = "tiny"
dpi = 300

[page]
width_mm = 20
height_mm = {height}

[layout]
label_width_mm = 20
label_height_mm = {height}
"""


def test_template_too_small_for_a_readable_qr_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(height=10), encoding="utf-8")
    with pytest.raises(TemplateError, match="too small for a readable QR"):
        load_template(path)
    # The same design with room for the code loads.
    path.write_text(TINY.format(height=25), encoding="utf-8")
    assert load_template(path).name == "tiny"


def test_labels_with_a_too_small_template_file_exits_1_before_writing(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 2)
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(height=10), encoding="utf-8")
    result = run_cli("labels", "b1", "--template", str(path))
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "too small for a readable QR" in line
    assert not output_dir.exists() or output_names(output_dir) == set()


# Room for a version 4 QR (a typical URL) at 4 dots a module, but not for a version 5.
TIGHT = """\
name = "tight"
dpi = 300

[page]
width_mm = 60
height_mm = 15

[layout]
label_width_mm = 60
label_height_mm = 15
"""
LONG_BASE_URL = "https://activate.factory-floor.example.com"  # pushes the URL to version 5


def test_a_base_url_too_long_for_the_template_fails_instead_of_printing_tiny_modules(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    path = tmp_path / "tight.toml"
    path.write_text(TIGHT, encoding="utf-8")
    register(run_cli, tmp_path, 2)
    # With the usual base URL the tight label works, and its codes read...
    render(run_cli, "b1", "--template", str(path))
    assert [len(p) for p in decode_pdf(output_dir / "b1.pdf")] == [1, 1]
    (output_dir / "b1.pdf").unlink()
    (output_dir / "b1.json").unlink()
    # ...a longer base URL needs a bigger symbol: refuse rather than print unreadable modules.
    result = run_cli(
        "labels", "b1", "--template", str(path), env={"PROVISION_BASE_URL": LONG_BASE_URL}
    )
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "version 5" in line and "below the readable" in line
    assert output_names(output_dir) == set()


def test_unknown_template_name_exits_1_naming_the_builtins(run_cli: RunCLI) -> None:
    result = run_cli("labels", "b1", "--template", "avery-9999")
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "avery-9999" in line
    assert {"avery-5160", "avery-l7160", "thermal-50x30"} <= set(template_names())
    for name in template_names():
        assert name in line


# -- provision generate -----------------------------------------------------------------------


def _decode_png(path: Path) -> list[zxingcpp.Barcode]:
    """Decode a PNG; also check it is square and blank around the symbol's quiet zone."""
    with Image.open(path) as im:
        image = np.asarray(im.convert("L"))
    codes = list(zxingcpp.read_barcodes(image, formats=QR_MODEL2))
    for code in codes:
        modules = 17 + 4 * int(code.extra["Version"])
        left, top, right, bottom = code_box(code)
        module_px = (right - left) / modules
        assert image.shape == (round((modules + 2 * QUIET_ZONE) * module_px),) * 2
        assert left == top == QUIET_ZONE * module_px
        qz = QUIET_ZONE * module_px
        outer = (left - qz, top - qz, right + qz, bottom + qz)
        assert ink_in_ring(image, outer, (left, top, right, bottom)) == 0
    return codes


@BOTH_DATABASES
def test_generate_writes_png_and_pdf_named_by_device_id_that_decode_and_verify(
    run_cli: RunCLI, output_dir: Path, keyring: Keyring, db_url: str
) -> None:
    serial = "SN-GEN-0001"
    result = run_cli("generate", serial, "sensor", "--component", "battery=CR2032")
    assert result.exit_code == 0, result.output
    did = device_id(keyring.pepper, serial)
    url = re.search(r"^URL: (\S+)$", result.stdout, re.MULTILINE)
    assert url is not None, result.stdout
    assert f"Device {did} (registered" in result.stdout
    assert output_names(output_dir) == {f"{did}.png", f"{did}.pdf"}
    assert not any(serial in name for name in output_names(output_dir))

    (code,) = _decode_png(output_dir / f"{did}.png")
    assert code.format == zxingcpp.BarcodeFormat.QRCode and code.ec_level == "M"
    assert code.text == url.group(1)
    check = verify_payload(code.text, keyring)
    assert check.valid and check.device_id == did

    (page,) = decode_pages(output_dir / f"{did}.pdf", dpi=203)  # thermal-50x30 by default
    assert [c.text for c in page.codes] == [code.text]
    assert f"S/N {serial}" in page.text

    registry = Registry(db_url)
    try:
        dev = registry.devices.get(did)
        assert dev is not None
        comps = registry.devices.components_of(dev.id)
        assert [(c.component_type, c.component_spec) for c in comps] == [("battery", "CR2032")]
    finally:
        registry.close()


@BOTH_DATABASES
def test_generate_twice_says_already_registered_and_creates_no_second_device(
    run_cli: RunCLI, output_dir: Path, keyring: Keyring, db_url: str
) -> None:
    args = ("generate", "SN-GEN-0002", "sensor", "--component", "battery=CR2032")
    first = run_cli(*args, "--json")
    assert first.exit_code == 0, first.output
    second = run_cli(*args)
    assert second.exit_code == 0, second.output
    data = json.loads(first.stdout)
    assert data["created"] is True
    assert "already registered" in second.stdout
    assert f"Device {data['device_id']} " in second.stdout
    assert f"URL: {data['url']}" in second.stdout  # the stored payload, not a new signature
    assert output_names(output_dir) == {f"{data['device_id']}.png", f"{data['device_id']}.pdf"}
    (code,) = _decode_png(output_dir / f"{data['device_id']}.png")
    assert code.text == data["url"]

    registry = Registry(db_url)
    try:
        assert registry.devices.count() == 1
        assert registry.devices.count_components() == 1
    finally:
        registry.close()
