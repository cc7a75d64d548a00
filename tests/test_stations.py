"""Print stations: calibration offsets, profiles, copies, ZPL and the alignment page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from click.testing import CliRunner

from provision.cli import cli
from provision.labels.templates import MM_PER_INCH
from tests.conftest import RunCLI
from tests.test_labels import code_box, decode_pages, register, render

DPI = 300


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """What is tested here is the print file, not the registry: SQLite is enough."""
    return sqlite_url


def boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """Each decoded QR's bounding box in pixels at DPI, by content (page 1)."""
    page = decode_pages(path, DPI)[0]
    return {c.text: code_box(c) for c in page.codes}


def test_offsets_move_every_label_by_the_given_amount_measured_on_the_raster(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 9)
    plain = render(run_cli, "b1", "--template", "avery-l7160")
    moved = render(
        run_cli, "b1", "--template", "avery-l7160", "--offset-x", "2", "--offset-y", "-1.5"
    )
    assert (moved["revision"], moved["offset_x_mm"], moved["offset_y_mm"]) == (2, 2.0, -1.5)
    before, after = boxes(Path(plain["pdf"])), boxes(Path(moved["pdf"]))
    assert set(before) == set(after) and len(before) == 9
    px = DPI / MM_PER_INCH
    dx = [after[u][0] - before[u][0] for u in before] + [after[u][2] - before[u][2] for u in before]
    dy = [after[u][1] - before[u][1] for u in before] + [after[u][3] - before[u][3] for u in before]
    # Every label moved, each by about the offset (a decoder locates a corner to a pixel or
    # two; the dot-grid snap adds at most half a pixel); on average by the offset exactly.
    assert all(abs(d - 2.0 * px) <= 2.5 for d in dx), dx
    assert all(abs(d + 1.5 * px) <= 2.5 for d in dy), dy
    assert sum(dx) / len(dx) == pytest.approx(2.0 * px, abs=0.75)
    assert sum(dy) / len(dy) == pytest.approx(-1.5 * px, abs=0.75)


def test_a_station_profile_supplies_offsets_template_and_format(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    stations = tmp_path / "stations.toml"
    env = {"PROVISION_STATIONS": str(stations)}
    result = run_cli(
        "stations",
        "set",
        "dock-zebra",
        "--offset-x",
        "0.5",
        "--offset-y",
        "-0.25",
        "--template",
        "thermal-50x30",
        "--format",
        "zpl",
        "--json",
        env=env,
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(run_cli("stations", "list", "--json", env=env).stdout)
    assert listed == {
        "stations": [
            {
                "name": "dock-zebra",
                "offset_x_mm": 0.5,
                "offset_y_mm": -0.25,
                "template": "thermal-50x30",
                "format": "zpl",
                "payload": None,  # compact, unless the profile says digital-link
            }
        ]
    }
    register(run_cli, tmp_path, 3)
    out = json.loads(
        run_cli(
            "labels", "b1", "--station", "dock-zebra", "--copies", "2", "--json", env=env
        ).stdout
    )
    assert (out["format"], out["template"], out["offset_x_mm"], out["copies"]) == (
        "zpl",
        "thermal-50x30",
        0.5,
        2,
    )
    zpl = (output_dir / "b1.zpl").read_text()
    assert zpl.count("^XA") == 3 and zpl.count("^PQ2") == 3
    summary = json.loads((output_dir / "b1.json").read_text())
    assert (summary["format"], summary["zpl"], summary["revision"]) == ("zpl", "b1.zpl", 1)
    # A command-line offset wins over the profile's.
    again = json.loads(
        run_cli(
            "labels", "b1", "--station", "dock-zebra", "--offset-x", "0", "--json", env=env
        ).stdout
    )
    assert again["offset_x_mm"] == 0.0 and again["revision"] == 2


def test_an_unknown_station_is_a_one_line_error(run_cli: RunCLI, tmp_path: Path) -> None:
    register(run_cli, tmp_path, 1)
    result = run_cli(
        "labels", "b1", "--station", "nope", env={"PROVISION_STATIONS": str(tmp_path / "none.toml")}
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no station 'nope' in ")
    assert len(result.stderr.splitlines()) == 1


def test_copies_repeat_each_label_in_a_row(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 4)
    out = render(run_cli, "b1", "--template", "avery-l7160", "--copies", "3")
    assert (out["labels"], out["pages"]) == (12, 1)
    codes = sorted(
        decode_pages(output_dir / "b1.pdf", DPI)[0].codes,
        key=lambda c: (round(code_box(c)[1] / 50), code_box(c)[0]),
    )
    texts = [c.text for c in codes]
    assert len(texts) == 12 and len(set(texts)) == 4
    assert all(texts[i] == texts[i - i % 3] for i in range(12))


def test_zpl_refuses_a_sheet_template(run_cli: RunCLI, tmp_path: Path, output_dir: Path) -> None:
    register(run_cli, tmp_path, 2)
    result = run_cli("labels", "b1", "--format", "zpl", "--template", "avery-l7160")
    assert result.exit_code == 1
    assert "Error: " in result.stderr and "zpl" in result.stderr.lower()
    assert not output_dir.exists() or list(output_dir.iterdir()) == []


def test_alignment_page_has_outlines_and_no_codes(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    register(run_cli, tmp_path, 1)
    result = run_cli("labels", "b1", "--template", "avery-5160", "--alignment-page", "--json")
    out: dict[str, Any] = json.loads(result.stdout)
    path = Path(out["alignment_page"])
    assert path.name == "alignment-avery-5160.pdf"
    pdf = pdfium.PdfDocument(str(path))
    assert len(pdf) == 1 and pdf[0].get_size() == pytest.approx((612, 792), abs=0.01)
    text = pdf[0].get_textpage().get_text_range()
    assert "avery-5160" in text and "30" in text  # the last position's number
    assert decode_pages(path, DPI)[0].codes == []


def test_templates_list_show_and_import() -> None:
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["templates", "list", "--json"]).stdout)
    names = {t["name"] for t in listed["templates"]}
    assert len(names) >= 15 and {"avery-l7160", "avery-5160", "thermal-50x30"} <= names
    shown = runner.invoke(cli, ["templates", "show", "thermal-50x30", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["dpi"] == 203


def test_templates_import_writes_a_loadable_template(tmp_path: Path) -> None:
    xml = Path(__file__).parent / "data" / "glabels_units.xml"
    result = CliRunner().invoke(
        cli, ["templates", "import", str(xml), "--dest", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["results"]
    written = [Path(r["path"]) for r in results if r["imported"]]
    assert written and all(p.parent == tmp_path and p.exists() for p in written)
    loaded = CliRunner().invoke(cli, ["templates", "show", str(written[0]), "--json"])
    assert loaded.exit_code == 0, loaded.output


def test_a_job_file_can_name_a_station(run_cli: RunCLI, tmp_path: Path, output_dir: Path) -> None:
    env = {"PROVISION_STATIONS": str(tmp_path / "stations.toml")}
    run_cli("stations", "set", "laser-1", "--offset-y", "0.3", "--template", "avery-5160", env=env)
    (tmp_path / "s.csv").write_text("serial,device_type\nJ-1,meter\nJ-2,meter\n")
    job = tmp_path / "job.toml"
    job.write_text('batch = "j1"\nserials = "s.csv"\nstation = "laser-1"\ncopies = 2\n')
    out = json.loads(run_cli("run", str(job), "--json", env=env).stdout)
    assert (out["labels"]["template"], out["labels"]["offset_y_mm"], out["labels"]["labels"]) == (
        "avery-5160",
        0.3,
        4,
    )


def test_a_template_can_embed_its_own_truetype_font(tmp_path: Path) -> None:
    import reportlab

    from provision.keys import init_keyring
    from provision.labels.render import LabelData, render_label_sheets
    from provision.labels.templates import load_template
    from provision.payload import payload_url, sign_token

    font = Path(reportlab.__file__).parent / "fonts" / "VeraIt.ttf"
    base = (Path(__file__).parents[1] / "templates" / "thermal-50x30.toml").read_text()
    toml = tmp_path / "italic.toml"
    toml.write_text(base.replace("[design]", f'[design]\nfont = "{font}"'))
    template = load_template(toml)
    assert template.font == str(font)
    key = init_keyring(tmp_path / "k.json").active
    url = payload_url(
        "http://localhost:5001",
        sign_token(key.id, key.secret or b"", "00112233445566ff", 2_000_000_000),
    )
    out = tmp_path / "italic.pdf"
    render_label_sheets([LabelData("00112233445566ff", url, "meter")], template, out)
    data = out.read_bytes()
    assert b"Oblique" in data and b"/FontFile2" in data  # Vera Sans Oblique, embedded
    (page,) = decode_pages(out, DPI)
    assert [c.text for c in page.codes] == [url]
    assert "ID 00112233445566ff" in page.text

    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace("[design]", '[design]\nfont = "missing.ttf"'))
    with pytest.raises(Exception, match="no TrueType file"):
        load_template(bad)
