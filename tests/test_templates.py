"""Label templates: the built-in library, the TOML format, and gLabels import.

Every built-in template renders a two-page batch of realistic, signed activation URLs; the PDF is
rasterised with PDFium at 300 dpi and at a thermal printer's 203 dpi and every QR code is read
back with zxing-cpp, found in the label cell it belongs to, and verified with the keyring.

The gLabels tests read hand-written XML in tests/data/glabels_*.xml, and the real gLabels
template database (Debian package glabels-data; `make test` installs it when missing).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pytest
import zxingcpp

from provision.errors import TemplateError
from provision.keys import Keyring, init_keyring
from provision.labels import glabels
from provision.labels.glabels import (
    CD,
    ELLIPSE,
    EQUIV,
    EXISTS,
    IMPORTED,
    PAPER,
    SKIP_CODES,
    find_glabels_dir,
    import_all_glabels,
    import_glabels,
    parse_length,
    template_name,
)
from provision.labels.render import LabelData, render_label_sheets
from provision.labels.templates import (
    GEOMETRY,
    MM_PER_INCH,
    TOO_SMALL,
    TYPICAL_QR_MODULES,
    Template,
    list_templates,
    load_template,
    parse_template,
    template_names,
    template_summary,
)
from provision.payload import payload_url, sign_token, verify_payload
from provision.qr import QUIET_ZONE, encode_qr
from tests.helpers import QR_MODEL2

DATA = Path(__file__).parent / "data"
UNITS_XML = DATA / "glabels_units.xml"
SHAPES_XML = DATA / "glabels_shapes.xml"
BASE_URL = "https://id.example.com"  # a realistic production base URL: 73-character QR URLs
PT_PER_MM = 72 / MM_PER_INCH

BUILTINS = [
    "avery-l7160",
    "avery-l7161",
    "avery-l7163",
    "avery-l7165",
    "avery-l7651",
    "avery-5160",
    "avery-5161",
    "avery-5163",
    "avery-5167",
    "avery-22806",
    "a4-3x8",
    "thermal-50x30",
    "thermal-2x1in",
    "thermal-4x6in",
    "thermal-100x50",
]
DECODE_DPIS = [300, 203]
GEOMETRY_ATTRS = (
    "page_width",
    "page_height",
    "label_width",
    "label_height",
    "columns",
    "rows",
    "left",
    "top",
    "pitch_x",
    "pitch_y",
)
TWIN_TOLERANCE_MM = 0.05


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return init_keyring(tmp_path_factory.mktemp("keys") / "keyring.json")


def make_labels(keyring: Keyring, n: int, prefix: str = "dev") -> list[LabelData]:
    """n labels with signed activation URLs, as the nightly batch makes them (no database)."""
    key = keyring.active
    assert key.secret is not None
    expires = int(time.time()) + 365 * 24 * 3600
    out = []
    for i in range(n):
        did = hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest()[:16]
        url = payload_url(BASE_URL, sign_token(key.id, key.secret, did, expires))
        out.append(
            LabelData(
                device_id=did,
                url=url,
                device_type="sensor",
                model="M-1",
                manufacturer="Acme",
                serial=f"SN-{i:06d}",
                batch="b1",
            )
        )
    return out


def render_pdf(labels: list[LabelData], template: Template) -> bytes:
    buf = io.BytesIO()
    render_label_sheets(labels, template, buf)
    return buf.getvalue()


@dataclass
class Page:
    size_pt: tuple[float, float]
    codes: list[zxingcpp.Barcode]
    text: str


def decode(pdf: bytes, dpi: int) -> list[Page]:
    """Rasterise every page with PDFium at `dpi` and read its QR codes with zxing-cpp."""
    pages = []
    doc = pdfium.PdfDocument(pdf)
    try:
        for page in doc:
            image = page.render(scale=dpi / 72, grayscale=True).to_numpy()
            codes = zxingcpp.read_barcodes(image, formats=QR_MODEL2)
            textpage = page.get_textpage()
            size = page.get_size()
            pages.append(Page((size[0], size[1]), list(codes), textpage.get_text_range()))
            textpage.close()
            page.close()
    finally:
        doc.close()
    return pages


def code_box_mm(code: zxingcpp.Barcode, dpi: int) -> tuple[float, float, float, float]:
    p = code.position
    corners = (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
    k = MM_PER_INCH / dpi
    xs, ys = [c.x * k for c in corners], [c.y * k for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def cell_of(t: Template, code: zxingcpp.Barcode, dpi: int) -> int:
    """The one label position whose cell holds the whole symbol (1 pixel of slack)."""
    left, top, right, bottom = code_box_mm(code, dpi)
    slack = MM_PER_INCH / dpi
    found = []
    for i in range(t.per_page):
        x, y = t.label_origin(i)
        if (
            x - slack <= left
            and right <= x + t.label_width + slack
            and y - slack <= top
            and bottom <= y + t.label_height + slack
        ):
            found.append(i)
    assert len(found) == 1, (code.text, (left, top, right, bottom), found)
    return found[0]


def batch_size(t: Template) -> int:
    """Enough labels for exactly two pages, the second partly filled (full on a roll)."""
    return t.per_page + max(1, t.per_page // 2)


def same_geometry(a: Template, b: Template, tol: float) -> dict[str, tuple[float, float]]:
    """The geometry attributes on which two templates differ by more than `tol`."""
    out = {}
    for attr in GEOMETRY_ATTRS:
        va, vb = getattr(a, attr), getattr(b, attr)
        if abs(va - vb) > tol:
            out[attr] = (va, vb)
    return out


@pytest.fixture(scope="module")
def rendered(keyring: Keyring) -> Callable[[str], tuple[Template, list[LabelData], bytes]]:
    """A two-page batch rendered once per built-in template, shared by the decode tests."""
    cache: dict[str, tuple[Template, list[LabelData], bytes]] = {}

    def get(name: str) -> tuple[Template, list[LabelData], bytes]:
        if name not in cache:
            t = load_template(name)
            labels = make_labels(keyring, batch_size(t), prefix=name)
            cache[name] = (t, labels, render_pdf(labels, t))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def glabels_dir() -> Path:
    """The installed gLabels template database; the test fails (never installs) without it."""
    found = find_glabels_dir()
    if found is None:
        where = ", ".join(str(d) for d in glabels.GLABELS_DIRS)
        pytest.fail(
            f"the gLabels template database is not installed (looked in {where}): "
            "run `apt-get install glabels-data` (make test does it)"
        )
    return found


# -- the built-in library ---------------------------------------------------------------------


def test_every_builtin_template_is_there_and_loads() -> None:
    assert set(BUILTINS) <= set(template_names())
    loaded = {t.name: t for t in list_templates()}
    assert set(BUILTINS) <= set(loaded)
    for name in BUILTINS:
        t = loaded[name]
        assert t.path.name == f"{name}.toml"
        assert t.description
        # Sheets are for 600 dpi office printers, rolls for 203 dpi thermal printers.
        assert t.dpi == (203 if name.startswith("thermal-") else 600)
        if name.startswith("thermal-"):
            assert t.per_page == 1
            assert (t.page_width, t.page_height) == (t.label_width, t.label_height)
            assert t.module_dots(TYPICAL_QR_MODULES) >= 4  # 0.5 mm at 203 dpi
            assert t.prints_serial


@pytest.mark.parametrize(
    ("name", "page_mm", "label_mm", "grid"),
    [
        ("avery-l7160", (210, 297), (63.5, 38.1), (3, 7)),
        ("avery-l7161", (210, 297), (63.5, 46.6), (3, 6)),
        ("avery-l7163", (210, 297), (99.1, 38.1), (2, 7)),
        ("avery-l7165", (210, 297), (99.1, 67.7), (2, 4)),
        ("avery-l7651", (210, 297), (38.1, 21.2), (5, 13)),
        ("a4-3x8", (210, 297), (70, 37), (3, 8)),
        ("avery-5160", (215.9, 279.4), (66.675, 25.4), (3, 10)),
        ("avery-5161", (215.9, 279.4), (101.6, 25.4), (2, 10)),
        ("avery-5163", (215.9, 279.4), (101.6, 50.8), (2, 5)),
        ("avery-5167", (215.9, 279.4), (44.45, 12.7), (4, 20)),
        ("avery-22806", (215.9, 279.4), (50.8, 50.8), (3, 4)),
        ("thermal-50x30", (50, 30), (50, 30), (1, 1)),
        ("thermal-2x1in", (50.8, 25.4), (50.8, 25.4), (1, 1)),
        ("thermal-4x6in", (101.6, 152.4), (101.6, 152.4), (1, 1)),
        ("thermal-100x50", (100, 50), (100, 50), (1, 1)),
    ],
)
def test_builtin_sheet_sizes(
    name: str, page_mm: tuple[float, float], label_mm: tuple[float, float], grid: tuple[int, int]
) -> None:
    t = load_template(name)
    assert (t.page_width, t.page_height) == pytest.approx(page_mm, abs=1e-9)
    assert (t.label_width, t.label_height) == pytest.approx(label_mm, abs=1e-9)
    assert (t.columns, t.rows) == grid
    # Symmetric sheets: the margin left of the first column is the one right of the last.
    right = t.page_width - (t.left + (t.columns - 1) * t.pitch_x + t.label_width)
    if name not in ("avery-5163",):  # gLabels and its equivalents: 0.1625 in left, 0.15 in right
        assert right == pytest.approx(t.left, abs=0.06)


@pytest.mark.parametrize("dpi", DECODE_DPIS)
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_two_page_batch_every_code_decodes_in_its_cell_and_verifies(
    name: str,
    dpi: int,
    rendered: Callable[[str], tuple[Template, list[LabelData], bytes]],
    keyring: Keyring,
) -> None:
    t, labels, pdf = rendered(name)
    assert all(encode_qr(label.url).size == TYPICAL_QR_MODULES for label in labels)
    pages = decode(pdf, dpi)
    assert len(pages) == 2
    page_pt = (t.page_width * PT_PER_MM, t.page_height * PT_PER_MM)
    expected_counts = [t.per_page, len(labels) - t.per_page]
    # zxing-cpp now and then reports one symbol of a dense sheet twice (the same text at the
    # same place): that is one code; a second, different code in a cell would fail below.
    cells_read = [{cell_of(t, code, dpi) for code in p.codes} for p in pages]
    assert [len(c) for c in cells_read] == expected_counts
    decoded = []
    for page_no, page in enumerate(pages):
        assert page.size_pt == pytest.approx(page_pt, abs=0.01)
        seen: dict[int, str] = {}
        for code in page.codes:
            assert code.format == zxingcpp.BarcodeFormat.QRCode and code.ec_level == "M"
            # Labels fill the sheet row by row: the label in cell k is the batch's next one.
            position = cell_of(t, code, dpi)
            assert code.text == labels[page_no * t.per_page + position].url
            if position in seen:
                continue  # the same symbol read twice (its text was checked just above)
            seen[position] = code.text
            # Modules are whole printer dots, never below the template's least module.
            left, _, right, _ = code_box_mm(code, dpi)
            module = (right - left) / TYPICAL_QR_MODULES
            assert module == pytest.approx(t.module_size(TYPICAL_QR_MODULES), abs=0.05)
            assert module >= t.least_module - MM_PER_INCH / dpi / TYPICAL_QR_MODULES
            decoded.append(code.text)
    assert sorted(decoded) == sorted(label.url for label in labels)
    for label in labels:
        check = verify_payload(label.url, keyring)
        assert check.valid and check.device_id == label.device_id


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_labels_print_the_full_device_id_and_their_fields(
    name: str, rendered: Callable[[str], tuple[Template, list[LabelData], bytes]]
) -> None:
    t, labels, pdf = rendered(name)
    text = "\n".join(p.text for p in decode(pdf, 72))
    for label in labels:
        assert f"ID {label.device_id}" in text  # never cut to "ID 65aa89b21a95…"
    assert ("S/N SN-000000" in text) == t.prints_serial


@pytest.mark.parametrize("name", BUILTINS)
def test_template_summary_for_the_cli(name: str) -> None:
    t = load_template(name)
    s = template_summary(t)
    assert json.loads(json.dumps(s)) == s
    assert s["name"] == name and s["description"] == t.description
    assert s["per_page"] == t.per_page == s["grid"]["columns"] * s["grid"]["rows"]
    assert s["dpi"] == t.dpi
    assert s["page"]["width_mm"] == pytest.approx(t.page_width, abs=1e-3)
    assert s["label"]["height_mm"] == pytest.approx(t.label_height, abs=1e-3)
    qr = s["qr"]
    assert qr["modules"] == TYPICAL_QR_MODULES
    assert qr["module_mm"] == pytest.approx(qr["module_dots"] * MM_PER_INCH / t.dpi, abs=1e-3)
    assert qr["module_mm"] >= qr["least_module_mm"] - 1e-3
    assert qr["size_mm"] == pytest.approx(
        (TYPICAL_QR_MODULES + 2 * QUIET_ZONE) * qr["module_mm"], abs=0.03
    )
    # The QR with its quiet zone fits inside the label, away from the edge.
    assert qr["size_mm"] <= min(t.label_width, t.label_height) - 2 * t.edge + 1e-6


def test_thermal_2x1in_prints_4_dot_modules() -> None:
    s = template_summary(load_template("thermal-2x1in"))
    assert s["qr"]["module_dots"] == 4
    assert s["qr"]["module_mm"] == pytest.approx(0.5, abs=0.001)


# -- the TOML format --------------------------------------------------------------------------

SHEET_MM = """\
name = "units"
dpi = 600
[page]
width_mm = 215.9
height_mm = 279.4
[layout]
label_width_mm = 66.675
label_height_mm = 25.4
corner_radius_mm = 1.5875
columns = 3
rows = 10
left_mm = 4.7625
top_mm = 12.7
pitch_x_mm = 69.85
pitch_y_mm = 25.4
"""
SHEET_IN = """\
name = "units"
dpi = 600
[page]
width_in = 8.5
height_in = 11
[layout]
label_width_in = 2.625
label_height_in = 1
corner_radius_in = 0.0625
columns = 3
rows = 10
left_in = 0.1875
top_in = 0.5
pitch_x_in = 2.75
pitch_y_in = 1
"""


def test_inch_keys_mean_the_same_as_millimetre_keys(tmp_path: Path) -> None:
    a = parse_template(SHEET_MM, tmp_path / "a.toml")
    b = parse_template(SHEET_IN, tmp_path / "b.toml")
    assert same_geometry(a, b, 1e-9) == {}
    assert a.corner_radius == pytest.approx(b.corner_radius)


def test_a_length_in_both_units_or_a_misspelt_key_is_refused(tmp_path: Path) -> None:
    both = SHEET_MM.replace("top_mm = 12.7", "top_mm = 12.7\ntop_in = 0.5")
    with pytest.raises(TemplateError, match="top_mm or top_in, not both"):
        parse_template(both, tmp_path / "both.toml")
    typo = SHEET_MM.replace("pitch_y_mm", "pitch_y_nm")
    with pytest.raises(TemplateError, match=r"unknown key in \[layout\]: \['pitch_y_nm'\]"):
        parse_template(typo, tmp_path / "typo.toml")
    with pytest.raises(TemplateError, match="shape must be one of"):
        parse_template(SHEET_MM + 'shape = "hexagon"\n', tmp_path / "shape.toml")


TWO_GRIDS = """\
name = "two-grids"
dpi = 600
[page]
width_in = 8.5
height_in = 11

[[layout]]
label_width_in = 2
label_height_in = 1
columns = 3
rows = 5
left_in = 0.5
top_in = 0.5
pitch_x_in = 2.5
pitch_y_in = 1

[[layout]]
columns = 2
rows = 4
left_in = 1.75
top_in = {top}
pitch_x_in = 3
pitch_y_in = 1.25
"""


def test_several_layouts_count_through_the_first_grid_then_the_next(tmp_path: Path) -> None:
    t = parse_template(TWO_GRIDS.format(top=6), tmp_path / "two.toml")
    assert t.per_page == 15 + 8
    assert (t.columns, t.rows) == (3, 5)  # the first grid, for code that knows only one
    assert t.label_origin(0) == pytest.approx((12.7, 12.7))
    assert t.label_origin(14) == pytest.approx((12.7 + 2 * 63.5, 12.7 + 4 * 25.4))
    assert t.label_origin(15) == pytest.approx((1.75 * 25.4, 6 * 25.4))
    assert t.label_origin(22) == pytest.approx(((1.75 + 3) * 25.4, (6 + 3 * 1.25) * 25.4))
    with pytest.raises(IndexError):
        t.label_origin(23)
    # A second grid on top of the first is refused.
    with pytest.raises(TemplateError, match=r"labels \d+ and 16 \(different layouts\) overlap"):
        parse_template(TWO_GRIDS.format(top=4.5), tmp_path / "overlap.toml")


def test_the_readme_examples_load(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "templates" / "README.md").read_text(encoding="utf-8")
    blocks = readme.split("```toml\n")[1:]
    assert len(blocks) == 2
    single = blocks[0].split("```")[0]
    t = parse_template(single, tmp_path / "single.toml")
    assert same_geometry(t, load_template("avery-l7160"), 1e-9) == {}
    page = "[page]\nwidth_in = 8.5\nheight_in = 11\n"
    multi = parse_template(page + blocks[1].split("```")[0], tmp_path / "multi.toml")
    assert len(multi.layouts) == 2 and multi.per_page == 25


ROUND = """\
name = "round"
dpi = 600
[page]
width_mm = 210
height_mm = 297
[layout]
shape = "round"
label_width_mm = {d}
label_height_mm = {d}
columns = 4
rows = 6
left_mm = 10
top_mm = 10
pitch_x_mm = 46
pitch_y_mm = 46
[design]
edge_mm = 0.5
"""


def test_a_round_label_holds_its_qr_in_the_inscribed_square(tmp_path: Path) -> None:
    t = parse_template(ROUND.format(d=40), tmp_path / "round.toml")
    assert t.shape == "round" and t.corner_radius == 20
    room = (40 - 2 * 0.5) / math.sqrt(2)
    dots = math.floor(room / (TYPICAL_QR_MODULES + 2 * QUIET_ZONE) / t.dot)
    assert t.module_dots(TYPICAL_QR_MODULES) == dots
    # 15 mm across: a 15 mm square holds the code (8-dot, 0.339 mm modules), the circle does not.
    square = parse_template(ROUND.format(d=15).replace('shape = "round"\n', ""), tmp_path / "sq")
    assert square.module_size(TYPICAL_QR_MODULES) >= 0.3
    with pytest.raises(TemplateError, match=r"round label of 15\.0 mm diameter is too small"):
        parse_template(ROUND.format(d=15), tmp_path / "small.toml")


# -- gLabels: units, aliases, shapes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mm"),
    [
        ("72", 25.4),  # no unit: points
        ("72pt", 25.4),
        ("1in", 25.4),
        ("25.4mm", 25.4),
        ("2.54cm", 25.4),
        ("6pc", 25.4),
        ("0.5in", 12.7),
        ("181.4", 181.4 * 25.4 / 72),
        ("1.5e1mm", 15.0),
        (".5cm", 5.0),
        ("3MM", 3.0),
    ],
)
def test_every_glabels_unit_converts(text: str, mm: float) -> None:
    assert parse_length(text) == pytest.approx(mm, abs=1e-9)


@pytest.mark.parametrize("text", ["", "mm", "12px", "1,5mm", "abc", "1in2"])
def test_a_bad_glabels_length_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_length(text)


def test_the_same_sheet_in_every_unit_imports_to_the_same_geometry() -> None:
    results = {r.part: r for r in import_glabels(UNITS_XML)}  # its root has an xmlns
    assert set(results) == {
        "UNITS-PT",
        "UNITS-BARE",
        "UNITS-IN",
        "UNITS-MM",
        "UNITS-CM",
        "UNITS-PC",
        "UNITS-MIXED",
        "COUNTS-HEX-OCTAL",
        "ALIAS-OF-MM",
        "ALIAS-OF-ALIAS",
    }
    assert all(r.imported and r.code == IMPORTED and r.path is None for r in results.values())
    reference = results["UNITS-MM"].template
    assert reference is not None
    assert (reference.page_width, reference.page_height) == (210, 297)
    assert (reference.label_width, reference.label_height) == pytest.approx((63.5, 38.1))
    assert (reference.left, reference.top) == pytest.approx((6.35, 12.7))
    assert (reference.pitch_x, reference.pitch_y) == pytest.approx((69.85, 38.1))
    assert reference.corner_radius == pytest.approx(3.175)
    for part, r in results.items():
        assert r.template is not None
        assert same_geometry(r.template, reference, 1e-3) == {}, part
        assert r.template.corner_radius == pytest.approx(3.175, abs=1e-3), part


def test_an_equiv_alias_takes_its_targets_geometry() -> None:
    (alias,) = import_glabels(UNITS_XML, part="ALIAS-OF-MM")
    (target,) = import_glabels(UNITS_XML, part="UNITS-MM")
    (chain,) = import_glabels(UNITS_XML, part="ALIAS-OF-ALIAS")
    assert alias.equiv == "UNITS-MM" and chain.equiv == "ALIAS-OF-MM"
    assert "alias of Test UNITS-MM" in alias.reason
    assert alias.name == "glabels-test-alias-of-mm"
    for r in (alias, chain):
        assert r.template is not None and target.template is not None
        assert same_geometry(r.template, target.template, 1e-9) == {}
    assert chain.template is not None and "Alias of an alias" in chain.template.description


def test_part_matches_number_brand_and_name_and_an_unknown_part_is_an_error() -> None:
    for part in ("units-in", "Test UNITS-IN", "glabels-test-units-in"):
        assert [r.part for r in import_glabels(UNITS_XML, part=part)] == ["UNITS-IN"]
    with pytest.raises(TemplateError, match="no template with part 'L9999'"):
        import_glabels(UNITS_XML, part="L9999")


def test_template_names_are_lower_case_and_safe() -> None:
    assert template_name("Avery", "L7160") == "glabels-avery-l7160"
    assert template_name("Online Labels", "OL320 (round)") == "glabels-online-labels-ol320-round"
    assert template_name("Ü../..", "/etc/passwd") == "glabels-etc-passwd"


def test_shapes_and_failures_are_reported_with_their_reason(tmp_path: Path) -> None:
    results = {r.part: r for r in import_glabels(SHAPES_XML, dest_dir=tmp_path)}
    codes = {part: r.code for part, r in results.items()}
    assert codes == {
        "TINY": TOO_SMALL,
        "ROUND-40": IMPORTED,
        "ROUND-SMALL": TOO_SMALL,
        "TWO-LAYOUTS": IMPORTED,
        "CD": CD,
        "OVAL": ELLIPSE,
        "NOWHERE": EQUIV,
        "ODD-PAPER": PAPER,
        "OFF-THE-PAGE": GEOMETRY,
    }
    assert "label 20.0 x 10.0 mm is too small for a readable QR code" in results["TINY"].reason
    assert "round label of 12.5 mm diameter is too small" in results["ROUND-SMALL"].reason
    assert "CD/DVD" in results["CD"].reason
    assert "'NO-SUCH-PART'" in results["NOWHERE"].reason
    assert "'Tabloid-ish'" in results["ODD-PAPER"].reason
    assert "beyond the 210 x 297 mm page" in results["OFF-THE-PAGE"].reason
    # Only what imported was written, and it loads back as the same template.
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["glabels-test-round-40.toml", "glabels-test-two-layouts.toml"]
    for r in results.values():
        assert set(SKIP_CODES) | {IMPORTED} >= {r.code}
        assert (r.path is not None) == r.imported
        assert json.loads(json.dumps(r.to_json()))["code"] == r.code
        if r.imported:
            assert r.path is not None and r.template is not None
            loaded = load_template(r.path)
            assert loaded.name == r.name
            assert same_geometry(loaded, r.template, 1e-9) == {}

    round_ = load_template(tmp_path / "glabels-test-round-40.toml")
    assert round_.shape == "round" and (round_.label_width, round_.label_height) == (40, 40)
    assert round_.corner_radius == 20 and round_.per_page == 24
    assert 'shape = "round"' in (tmp_path / "glabels-test-round-40.toml").read_text()

    two = load_template(tmp_path / "glabels-test-two-layouts.toml")
    assert "2 layouts" in results["TWO-LAYOUTS"].reason
    assert len(two.layouts) == 2 and two.per_page == 23
    assert two.label_origin(15) == pytest.approx((1.75 * 25.4, 6 * 25.4))


def test_reimporting_keeps_an_edited_file_unless_told_to_overwrite(tmp_path: Path) -> None:
    (first,) = import_glabels(UNITS_XML, part="UNITS-MM", dest_dir=tmp_path)
    assert first.imported and first.path is not None
    original = first.path.read_text(encoding="utf-8")
    (again,) = import_glabels(UNITS_XML, part="UNITS-MM", dest_dir=tmp_path)
    assert again.imported  # identical content: nothing to do
    first.path.write_text(original.replace("font_size_pt = 8", "font_size_pt = 9"))
    (kept,) = import_glabels(UNITS_XML, part="UNITS-MM", dest_dir=tmp_path)
    assert kept.code == EXISTS and not kept.imported and "exists" in kept.reason
    assert "font_size_pt = 9" in first.path.read_text(encoding="utf-8")
    (forced,) = import_glabels(UNITS_XML, part="UNITS-MM", dest_dir=tmp_path, overwrite=True)
    assert forced.imported and first.path.read_text(encoding="utf-8") == original
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files


def test_an_imported_multi_layout_sheet_prints_every_code_in_its_cell(
    tmp_path: Path, keyring: Keyring
) -> None:
    (r,) = import_glabels(SHAPES_XML, part="TWO-LAYOUTS", dest_dir=tmp_path)
    assert r.path is not None
    t = load_template(r.path)
    labels = make_labels(keyring, t.per_page + 3, prefix="two")
    pages = decode(render_pdf(labels, t), 300)
    assert [len(p.codes) for p in pages] == [t.per_page, 3]
    for page_no, page in enumerate(pages):
        for code in page.codes:
            assert code.text == labels[page_no * t.per_page + cell_of(t, code, 300)].url
            assert verify_payload(code.text, keyring).valid


# -- the installed gLabels database -----------------------------------------------------------

# Built-in template -> a gLabels entry for the same sheet (the published geometry). gLabels'
# own Avery L71xx/5160 entries differ from Avery's published figures by up to 1.4 mm; where they
# do, an equivalent sheet of another brand in the database carries the published geometry.
TWINS = [
    ("avery-l7160", "endisch-templates.xml", "6406338x"),
    ("avery-l7161", "endisch-templates.xml", "6406346x"),
    ("avery-l7163", "endisch-templates.xml", "6409938x"),
    ("avery-l7165", "endisch-templates.xml", "6409967x"),
    ("a4-3x8", "igepa-templates.xml", "EA-700x370"),
    ("avery-5160", "worldlabel-us-templates.xml", "WL-875"),
    ("avery-5161", "avery-us-templates.xml", "5161"),
    ("avery-5163", "avery-us-templates.xml", "5163"),
    ("avery-5167", "avery-us-templates.xml", "5167"),
    ("avery-22806", "online-templates.xml", "OL2679"),
]


@pytest.mark.parametrize(("builtin", "xml", "part"), TWINS, ids=[t[0] for t in TWINS])
def test_an_imported_glabels_template_has_the_geometry_of_its_builtin_twin(
    builtin: str, xml: str, part: str, glabels_dir: Path, tmp_path: Path
) -> None:
    (r,) = import_glabels(glabels_dir / xml, part=part, dest_dir=tmp_path)
    assert r.imported, r.reason
    assert r.path is not None
    imported, twin = load_template(r.path), load_template(builtin)
    assert same_geometry(imported, twin, TWIN_TOLERANCE_MM) == {}
    assert imported.per_page == twin.per_page


def test_glabels_avery_l7160_is_an_alias_of_7160(glabels_dir: Path) -> None:
    xml = glabels_dir / "avery-iso-templates.xml"
    (alias,) = import_glabels(xml, part="L7160")
    (target,) = import_glabels(xml, part="Avery 7160")
    assert alias.name == "glabels-avery-l7160" and alias.equiv == "7160"
    assert alias.template is not None and target.template is not None
    assert same_geometry(alias.template, target.template, 1e-9) == {}
    # Grid, pitch and page are the built-in's; gLabels draws the labels 0.5 mm wider.
    builtin = load_template("avery-l7160")
    differs = same_geometry(alias.template, builtin, TWIN_TOLERANCE_MM)
    assert not {"page_width", "page_height", "columns", "rows", "pitch_x", "pitch_y"} & set(differs)


def test_import_every_glabels_template(
    glabels_dir: Path, tmp_path: Path, keyring: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = import_all_glabels(glabels_dir, tmp_path)
    with capsys.disabled():
        print(
            f"\ngLabels {glabels_dir}: {summary.total} templates in {summary.files} files, "
            f"{summary.imported} imported, skipped: {summary.skipped}"
        )
    assert summary.imported + sum(summary.skipped.values()) == summary.total
    # Most of the database is rectangular and round sheets; they import.
    assert summary.imported >= 0.75 * summary.total
    assert set(summary.skipped) <= set(SKIP_CODES) - {EXISTS}
    assert summary.skipped.get(CD, 0) > 0 and summary.skipped.get(TOO_SMALL, 0) > 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == summary.imported == len({r.name for r in summary.results if r.imported})
    assert all(n.startswith("glabels-") and n.endswith(".toml") for n in written)
    shapes = {"rect": 0, "round": 0}
    multi = 0
    for r in summary.results:
        assert r.reason or r.imported, r
        if r.imported:
            assert r.path is not None
            t = load_template(r.path)
            shapes[t.shape] += 1
            multi += len(t.layouts) > 1
    assert shapes["rect"] > 0 and shapes["round"] > 0 and multi > 0

    # A sample of the imported sheets prints scannable, verifiable codes in every cell.
    rect = [r for r in summary.results if r.imported and r.template and r.template.shape == "rect"]
    for r in rect[:: max(1, len(rect) // 8)]:
        assert r.path is not None
        t = load_template(r.path)
        labels = make_labels(keyring, t.per_page, prefix=r.name)
        (page,) = decode(render_pdf(labels, t), 300)
        assert len(page.codes) == t.per_page, r.name
        for code in page.codes:
            assert code.text == labels[cell_of(t, code, 300)].url, r.name
