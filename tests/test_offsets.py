"""Calibration offsets that would print labels off the page are refused, naming label and edge.

The PDF sheets, the ZPL roll, the alignment page and a station profile all refuse an offset
that moves the content of any label (its QR code with the quiet zone, and its text column) over
an edge of the page, before a byte is written; small offsets still print. And the ZPL renderer
counts the labels it prints, copies included, as the PDF renderer does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from provision.errors import TemplateError
from provision.keys import Keyring
from provision.labels.layout import check_offsets, place
from provision.labels.render import LabelData, render_alignment_page, render_label_sheets
from provision.labels.stations import Station, load_stations, save_station
from provision.labels.templates import Template, load_template
from provision.labels.zpl import check_zpl_offsets, render_zpl
from provision.payload import payload_url, sign_token
from provision.serials import device_id
from tests.conftest import RunCLI
from tests.test_labels import register

BASE_URL = "http://localhost:5001"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """What is tested here is the print file, not the registry: SQLite is enough."""
    return sqlite_url


@pytest.fixture
def sheet() -> Template:
    return load_template("avery-5160")  # US Letter, 3 x 10 labels of 2 5/8 x 1 in


@pytest.fixture
def roll() -> Template:
    return load_template("thermal-50x30")  # one 50 x 30 mm label a page, 203 dpi


def files_in(folder: Path) -> list[str]:
    """Every file in the folder (hidden temporary files too); none if it does not exist."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def error_line(stderr: str) -> str:
    """The command's error: the last line (a warning may come before it)."""
    return stderr.splitlines()[-1]


def make_labels(keyring: Keyring, n: int) -> list[LabelData]:
    key = keyring.active
    out = []
    for i in range(n):
        did = device_id(keyring.pepper, f"OFF-{i:04d}")
        token = sign_token(key.id, key.secret or b"", did, 2_000_000_000)
        out.append(LabelData(did, payload_url(BASE_URL, token), "meter", "M-1", serial=f"S{i}"))
    return out


# -- the check itself ---------------------------------------------------------------------------


def test_offset_x_plus_50_puts_label_3_off_the_right_edge(sheet: Template) -> None:
    with pytest.raises(TemplateError) as caught:
        check_offsets(sheet, 50.0, 0.0)
    assert str(caught.value) == (
        "template avery-5160: offset x +50.0 mm puts label 3 (row 1, column 3) "
        "off the right edge of the page by 44.24 mm"
    )


def test_offset_x_minus_50_puts_label_1_off_the_left_edge(sheet: Template) -> None:
    with pytest.raises(
        TemplateError, match=r"offset x -50\.0 mm puts label 1 \(row 1, column 1\) "
    ):
        check_offsets(sheet, -50.0, 0.0)
    with pytest.raises(TemplateError, match="off the left edge of the page"):
        check_offsets(sheet, -50.0, 0.0)


@pytest.mark.parametrize(
    ("offset_y", "label", "edge"),
    [(50.0, "label 25 (row 9, column 1)", "bottom"), (-50.0, "label 1 (row 1, column 1)", "top")],
)
def test_a_y_offset_names_the_top_or_bottom_edge(
    sheet: Template, offset_y: float, label: str, edge: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        check_offsets(sheet, 0.0, offset_y)
    message = str(caught.value)
    assert f"offset y {offset_y:+.1f} mm puts {label} off the {edge} edge of the page" in message
    assert "\n" not in message


def test_the_message_names_the_first_offending_label_in_label_order(sheet: Template) -> None:
    # Both columns 3 and rows 9-10 are off; label 3 comes first.
    with pytest.raises(TemplateError, match=r"label 3 \(row 1, column 3\) off the right edge"):
        check_offsets(sheet, 50.0, 50.0)


def test_an_offset_may_use_the_blank_margin_but_not_pass_the_content_over_the_edge(
    sheet: Template,
) -> None:
    # The third column's text column ends edge + 0.5 mm inside its label: 5.76 mm from the
    # page's right edge on this sheet.
    right = place(sheet, 2, 33).content(sheet).right
    assert sheet.page_width - right == pytest.approx(5.7625)
    check_offsets(sheet, 5.7, 0.0)
    with pytest.raises(TemplateError, match=r"label 3 .* right edge"):
        check_offsets(sheet, 6.0, 0.0)


@pytest.mark.parametrize("name", ["avery-5160", "avery-l7160", "avery-22806", "thermal-50x30"])
def test_no_offset_and_small_offsets_pass_on_every_kind_of_template(name: str) -> None:
    template = load_template(name)
    for dx, dy in [(0.0, 0.0), (0.5, 0.5), (-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5)]:
        check_offsets(template, dx, dy)


# -- the renderers refuse before writing -----------------------------------------------------


@pytest.mark.parametrize(("dx", "edge"), [(50.0, "right"), (-50.0, "left")])
def test_label_sheets_refuse_before_writing_a_byte(
    keyring: Keyring, sheet: Template, tmp_path: Path, dx: float, edge: str
) -> None:
    out = io.BytesIO()
    with pytest.raises(TemplateError, match=f"off the {edge} edge of the page"):
        render_label_sheets(make_labels(keyring, 3), sheet, out, offset_x_mm=dx)
    assert out.getvalue() == b""
    path = tmp_path / "out" / "sheet.pdf"
    path.parent.mkdir()
    with pytest.raises(TemplateError, match=f"off the {edge} edge"):
        render_label_sheets(make_labels(keyring, 3), sheet, path, offset_x_mm=dx)
    assert files_in(path.parent) == []


def test_label_sheets_refuse_a_bad_offset_even_with_no_labels(sheet: Template) -> None:
    out = io.BytesIO()
    with pytest.raises(TemplateError, match="label 3"):
        render_label_sheets([], sheet, out, offset_x_mm=50.0)
    assert out.getvalue() == b""


@pytest.mark.parametrize(("dx", "dy"), [(0.5, 0.5), (-0.5, -0.5), (0.5, -0.5)])
def test_label_sheets_with_small_offsets_still_render(
    keyring: Keyring, sheet: Template, dx: float, dy: float
) -> None:
    out = io.BytesIO()
    result = render_label_sheets(
        make_labels(keyring, 31), sheet, out, offset_x_mm=dx, offset_y_mm=dy, workers=1
    )
    assert (result.labels, result.pages) == (31, 2)
    assert out.getvalue().startswith(b"%PDF-")


@pytest.mark.parametrize(
    ("dx", "dy", "edge"),
    [(5.0, 0.0, "right"), (-5.0, 0.0, "left"), (0.0, 5.0, "bottom"), (0.0, -5.0, "top")],
)
def test_zpl_refuses_an_offset_off_the_label_before_writing_a_byte(
    keyring: Keyring, roll: Template, dx: float, dy: float, edge: str
) -> None:
    out = io.BytesIO()
    axis, value = ("x", dx) if dx else ("y", dy)
    with pytest.raises(TemplateError) as caught:
        render_zpl(make_labels(keyring, 2), roll, out, offset_x_mm=dx, offset_y_mm=dy)
    assert str(caught.value).startswith(
        f"template thermal-50x30: offset {axis} {value:+.1f} mm puts label 1 off the {edge} "
        "edge of the label by "
    )
    assert out.getvalue() == b""
    with pytest.raises(TemplateError, match=f"{edge} edge"):
        check_zpl_offsets(roll, dx, dy)


def test_zpl_with_small_offsets_still_renders(keyring: Keyring, roll: Template) -> None:
    out = io.BytesIO()
    result = render_zpl(make_labels(keyring, 2), roll, out, offset_x_mm=0.5, offset_y_mm=-0.5)
    assert result.labels == 2 and out.getvalue().count(b"^XA") == 2


@pytest.mark.parametrize(("dx", "dy", "edge"), [(50.0, 0.0, "right"), (0.0, -50.0, "top")])
def test_the_alignment_page_refuses_what_the_sheets_refuse(
    sheet: Template, dx: float, dy: float, edge: str
) -> None:
    out = io.BytesIO()
    with pytest.raises(TemplateError, match=f"off the {edge} edge of the page"):
        render_alignment_page(sheet, out, offset_x_mm=dx, offset_y_mm=dy)
    assert out.getvalue() == b""
    small = io.BytesIO()
    assert render_alignment_page(sheet, small, offset_x_mm=0.5, offset_y_mm=-0.5).pages == 1
    assert small.getvalue().startswith(b"%PDF-")


# -- ZPL counts copies -----------------------------------------------------------------------


def test_zpl_counts_every_copy_as_the_pdf_does_on_the_same_roll(
    keyring: Keyring, roll: Template
) -> None:
    labels = make_labels(keyring, 3)
    zpl = render_zpl(labels, roll, io.BytesIO(), copies=2)
    pdf = render_label_sheets(labels, roll, io.BytesIO(), copies=2, workers=1)
    assert (pdf.labels, pdf.pages) == (6, 6)
    assert (zpl.labels, zpl.pages) == (pdf.labels, pdf.pages)


# -- station profiles ------------------------------------------------------------------------


def test_a_station_whose_offsets_lose_its_templates_labels_is_not_saved(tmp_path: Path) -> None:
    path = tmp_path / "stations.toml"
    save_station(path, Station("laser-1", 0.4, -0.6, "avery-5160"))
    before = path.read_bytes()
    with pytest.raises(TemplateError) as caught:
        save_station(path, Station("laser-2", 10.0, 0.0, "avery-5160"))
    assert str(caught.value).startswith(
        "station laser-2: template avery-5160: offset x +10.0 mm puts label 3 (row 1, column 3) "
        "off the right edge of the page by "
    )
    assert path.read_bytes() == before
    assert list(load_stations(path)) == ["laser-1"]


def test_a_roll_station_is_checked_for_its_zpl_label_too(tmp_path: Path) -> None:
    path = tmp_path / "stations.toml"
    with pytest.raises(TemplateError, match=r"station dock: .* bottom edge"):
        save_station(path, Station("dock", 0.0, 5.0, "thermal-50x30", "zpl"))
    assert not path.exists()
    save_station(path, Station("dock", 0.5, -0.25, "thermal-50x30", "zpl"))
    assert load_stations(path)["dock"].offset_y_mm == -0.25


def test_a_station_naming_no_template_keeps_its_offsets(tmp_path: Path) -> None:
    # Nothing to check them against until a render names the template.
    path = tmp_path / "stations.toml"
    save_station(path, Station("spare", 10.0, 0.0))
    assert load_stations(path)["spare"].offset_x_mm == 10.0


# -- through the CLI -------------------------------------------------------------------------


def test_labels_with_offset_x_50_exits_1_naming_label_3_and_the_right_edge(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 5)
    result = run_cli("labels", "b1", "--template", "avery-5160", "--offset-x", "50")
    assert result.exit_code == 1
    assert error_line(result.stderr) == (
        "Error: template avery-5160: offset x +50.0 mm puts label 3 (row 1, column 3) "
        "off the right edge of the page by 44.24 mm"
    )
    assert files_in(output_dir) == []  # no PDF, no summary, no temporary file


def test_labels_with_a_station_profile_off_the_page_exits_1(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    # A profile written by hand, never through `stations set`: the render still refuses it.
    stations = tmp_path / "stations.toml"
    stations.write_text('[laser]\noffset_x_mm = 0.0\noffset_y_mm = 15.0\ntemplate = "avery-5160"\n')
    register(run_cli, tmp_path, 2)
    result = run_cli(
        "labels", "b1", "--station", "laser", env={"PROVISION_STATIONS": str(stations)}
    )
    assert result.exit_code == 1
    assert "offset y +15.0 mm puts label 28 (row 10, column 1) off the bottom edge" in error_line(
        result.stderr
    )
    assert files_in(output_dir) == []


def test_labels_zpl_with_an_offset_off_the_roll_exits_1(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 2)
    result = run_cli(
        "labels", "b1", "--template", "thermal-50x30", "--format", "zpl", "--offset-y", "-5"
    )
    assert result.exit_code == 1
    assert error_line(result.stderr).startswith(
        "Error: template thermal-50x30: offset y -5.0 mm puts label 1 off the top edge"
    )
    assert files_in(output_dir) == []


def test_the_alignment_page_with_offset_x_minus_50_exits_1_and_writes_nothing(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 1)
    result = run_cli(
        "labels", "b1", "--template", "avery-5160", "--alignment-page", "--offset-x", "-50"
    )
    assert result.exit_code == 1
    assert "puts label 1 (row 1, column 1) off the left edge of the page" in error_line(
        result.stderr
    )
    assert files_in(output_dir) == []


def test_run_with_an_offset_off_the_page_exits_1_and_publishes_no_pdf(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    (tmp_path / "s.csv").write_text("serial,device_type\nR-1,meter\nR-2,meter\n")
    job = tmp_path / "job.toml"
    job.write_text('batch = "r1"\nserials = "s.csv"\ntemplate = "avery-5160"\noffset_x_mm = 50.0\n')
    result = run_cli("run", str(job))
    assert result.exit_code == 1
    assert "offset x +50.0 mm puts label 3 (row 1, column 3) off the right edge" in error_line(
        result.stderr
    )
    assert files_in(output_dir) == []


def test_stations_set_refuses_an_offset_that_loses_its_templates_labels(
    run_cli: RunCLI, tmp_path: Path
) -> None:
    stations = tmp_path / "stations.toml"
    env = {"PROVISION_STATIONS": str(stations)}
    result = run_cli(
        "stations", "set", "laser", "--template", "avery-5160", "--offset-x", "10", env=env
    )
    assert result.exit_code == 1
    assert error_line(result.stderr).startswith(
        "Error: station laser: template avery-5160: offset x +10.0 mm puts label 3 "
        "(row 1, column 3) off the right edge of the page by "
    )
    assert not stations.exists()
    ok = run_cli(
        "stations", "set", "laser", "--template", "avery-5160", "--offset-x", "0.5", env=env
    )
    assert ok.exit_code == 0, ok.output


def test_the_zpl_summary_counts_copies_like_the_pdf_summary(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 3)
    args = ("labels", "b1", "--template", "thermal-50x30", "--copies", "2", "--json")
    pdf = json.loads(run_cli(*args, "--format", "pdf").stdout)
    zpl = json.loads(run_cli(*args, "--format", "zpl").stdout)
    assert (pdf["labels"], pdf["pages"]) == (6, 6)
    assert (zpl["labels"], zpl["pages"]) == (6, 6)
    summary = json.loads((output_dir / "b1.json").read_text())
    assert (summary["format"], summary["labels"], summary["copies"]) == ("zpl", 6, 2)
