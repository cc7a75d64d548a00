"""ZPL for thermal rolls, checked by parsing the ZPL back and by drawing its QR codes ourselves.

The parser below knows nothing of provision.labels.zpl: it splits the output into ^XA ... ^XZ
formats, the formats into commands and the commands into fields (^FO ... ^FS), decodes ^FH hex
escapes, and every field is then compared with the label data it came from. The QR codes are
interpreted the way a printer would: the ^FD switches give the error correction level and the
character mode, segno encodes the data that way, the matrix is drawn at the ^BQ magnification
where ^FO (plus the ^BY height the firmware adds) puts it, and zxing-cpp must read it back.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import segno
import zxingcpp

from provision.errors import ProvisionError, TemplateError
from provision.keys import Keyring
from provision.labels.render import LabelData
from provision.labels.templates import Template, load_template
from provision.labels.zpl import render_zpl
from provision.payload import payload_url, sign_token, verify_payload
from provision.qr import QUIET_ZONE
from provision.serials import device_id
from tests.helpers import QR_MODEL2

BASE_URL = "http://localhost:5001"
MM_PER_INCH = 25.4
QR_ALPHANUMERIC = re.compile(r"[0-9A-Z $%*+\-./:]+")
QR_ONLY = zxingcpp.BarcodeFormats(QR_MODEL2)
BY_HEIGHT_POWER_UP = 10  # ^BY h at power-up: what ^BQ adds above the symbol when ^BY is absent


# --- a small ZPL reader --------------------------------------------------------------------


@dataclass
class Field:
    """One ^FO ... ^FS field: origin, what draws it and its (^FH-decoded) data."""

    x: int
    y: int
    commands: dict[str, str] = field(default_factory=dict)
    data: str = ""

    @property
    def is_qr(self) -> bool:
        return "BQ" in self.commands

    @property
    def is_text(self) -> bool:
        return "A0" in self.commands


@dataclass
class Format:
    """One ^XA ... ^XZ label format."""

    commands: list[tuple[str, str]]
    fields: list[Field]

    def value(self, name: str) -> str | None:
        values = [args for n, args in self.commands if n == name]
        assert len(values) <= 1, f"^{name} given {len(values)} times"
        return values[0] if values else None

    @property
    def qr(self) -> Field:
        qrs = [f for f in self.fields if f.is_qr]
        assert len(qrs) == 1
        return qrs[0]

    @property
    def texts(self) -> list[Field]:
        return [f for f in self.fields if f.is_text]


def unhex(data: str, indicator: str) -> str:
    """Undo ^FH escapes: indicator + two hex digits is one byte (UTF-8 under ^CI28)."""
    out, i, raw = bytearray(), 0, data.encode("utf-8")
    ind = indicator.encode()
    while i < len(raw):
        if raw[i : i + 1] == ind:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8")


def parse_zpl(zpl: bytes) -> list[Format]:
    text = zpl.decode("utf-8")
    assert "~" not in text, "a raw ~ starts a control command, even inside field data"
    blocks = re.findall(r"\^XA(.*?)\^XZ", text, flags=re.S)
    # Nothing but white space between formats.
    assert re.sub(r"\^XA.*?\^XZ", "", text, flags=re.S).strip() == ""
    formats = []
    for block in blocks:
        # Field data never holds a raw ^ (it is escaped), so every ^ starts a command; ZPL
        # ignores line breaks between commands. Command names are two characters (^A0 is font
        # 0 of ^A, which is how it reads).
        commands = [
            (piece[:2], piece[2:].rstrip("\r\n")) for piece in block.split("^") if piece.strip()
        ]
        fields: list[Field] = []
        current: Field | None = None
        pending: dict[str, str] = {}
        for name, args in commands:
            if name == "FO":
                x, y = (int(v) for v in args.split(","))
                current = Field(x, y, dict(pending))
                pending = {}
            elif name == "FS":
                assert current is not None, "^FS without ^FO"
                fields.append(current)
                current = None
            elif name == "FD":
                assert current is not None, "^FD without ^FO"
                indicator = current.commands.get("FH")
                current.data = unhex(args, indicator or "_") if indicator is not None else args
            elif name in ("A0", "BQ", "FH"):
                # ^A0 may come before ^FO (as we write it); ^BQ and ^FH come after.
                if current is None:
                    pending[name] = args
                else:
                    current.commands[name] = args
        assert current is None and not pending, "unterminated field"
        formats.append(Format(commands, fields))
    return formats


@dataclass(frozen=True)
class QRField:
    ecc: str
    mode: str  # segno's name: "alphanumeric" or "byte"
    data: str


def qr_field_data(fd: str) -> QRField:
    """The ^BQ switches (normal mode): <ECC><input>,[<character mode>]<data>."""
    m = re.fullmatch(r"([HQML])([AM]),(.*)", fd, flags=re.S)
    assert m, f"not ^BQ normal-mode field data: {fd!r}"
    ecc, data_input, rest = m.groups()
    assert data_input == "M", "manual input states the character mode"
    if rest.startswith("A"):
        return QRField(ecc, "alphanumeric", rest[1:])
    m = re.fullmatch(r"B(\d{4})(.*)", rest, flags=re.S)
    assert m, f"unexpected character mode in {fd!r}"
    count, data = int(m.group(1)), m.group(2)
    assert len(data) == count
    return QRField(ecc, "byte", data)


# --- label data ----------------------------------------------------------------------------


def make_labels(keyring: Keyring, n: int, model: str = "M-1") -> list[LabelData]:
    key = keyring.active
    assert key.secret is not None
    expires = int((datetime.now(UTC) + timedelta(days=30)).timestamp())
    labels = []
    for i in range(n):
        serial = f"SN{i:06d}"
        did = device_id(keyring.pepper, serial)
        labels.append(
            LabelData(
                device_id=did,
                url=payload_url(BASE_URL, sign_token(key.id, key.secret, did, expires)),
                device_type="sensor",
                model=model,
                manufacturer="Acme",
                serial=serial,
                batch="line1-20261128",
            )
        )
    return labels


def thermal(tmp_path: Path, dpi: int, width: float = 50.0, height: float = 30.0) -> Template:
    """A thermal roll template at `dpi`, written as a TOML file like the built-ins."""
    path = tmp_path / f"thermal-{width:g}x{height:g}-{dpi}.toml"
    path.write_text(
        f"""name = "{path.stem}"
description = "Thermal roll, {width:g} x {height:g} mm, {dpi} dpi"
dpi = {dpi}

[page]
width_mm = {width}
height_mm = {height}

[layout]
label_width_mm = {width}
label_height_mm = {height}
corner_radius_mm = 1.0

[design]
edge_mm = 1.0
font_size_pt = 6.5
fields = ["device_id", "type_model", "serial"]
""",
        encoding="utf-8",
    )
    return load_template(path)


@pytest.fixture(params=[203, 300], ids=["203dpi", "300dpi"])
def roll(request: pytest.FixtureRequest, tmp_path: Path) -> Template:
    if request.param == 203:
        return load_template("thermal-50x30")  # the built-in
    return thermal(tmp_path, request.param)


def render(labels: list[LabelData], template: Template, **options: object) -> list[Format]:
    out = io.BytesIO()
    result = render_zpl(labels, template, out, **options)  # type: ignore[arg-type]
    copies = options.get("copies", 1)
    assert isinstance(copies, int)
    assert result.labels == result.pages == len(labels) * copies
    return parse_zpl(out.getvalue())


def dots(mm: float, dpi: int) -> int:
    return round(mm * dpi / MM_PER_INCH)


def module_dots(template: Template, url: str) -> tuple[int, int]:
    """(symbol size in modules, module in dots) as the PDF renderer sizes them."""
    size = len(segno.make_qr(url, error="m", boost_error=False).matrix)
    return size, round(template.module_size(size) / template.dot)


# --- tests ---------------------------------------------------------------------------------


def test_one_format_per_label_sized_as_the_template(keyring: Keyring, roll: Template) -> None:
    labels = make_labels(keyring, 3)
    formats = render(labels, roll)
    assert len(formats) == len(labels)
    for fmt in formats:
        assert fmt.value("CI") == "28"
        assert fmt.value("PW") == str(dots(roll.label_width, roll.dpi))
        assert fmt.value("LL") == str(dots(roll.label_height, roll.dpi))
        assert fmt.value("LH") == "0,0"
        assert fmt.value("PQ") is None
        assert len(fmt.fields) == 1 + len(roll.fields)


def test_builtin_thermal_is_400_by_240_dots(keyring: Keyring) -> None:
    (fmt,) = render(make_labels(keyring, 1), load_template("thermal-50x30"))
    assert (fmt.value("PW"), fmt.value("LL")) == ("400", "240")


def test_qr_field_is_the_url_at_ecc_m_alphanumeric_with_whole_dot_modules(
    keyring: Keyring, roll: Template
) -> None:
    labels = make_labels(keyring, 3)
    for label, fmt in zip(labels, render(labels, roll), strict=True):
        qr = fmt.qr
        orientation, model, magnification = qr.commands["BQ"].split(",")
        assert (orientation, model) == ("N", "2")
        _, module = module_dots(roll, label.url)
        assert int(magnification) == module
        assert module >= 4
        assert "FH" not in qr.commands  # nothing to escape in an activation URL
        fd = qr_field_data(qr.data)
        assert (fd.ecc, fd.mode, fd.data) == ("M", "alphanumeric", label.url)
        assert QR_ALPHANUMERIC.fullmatch(fd.data)


def test_text_lines_are_the_label_fields_right_of_the_quiet_zone(
    keyring: Keyring, roll: Template
) -> None:
    labels = make_labels(keyring, 3)
    height = dots(roll.font_size * MM_PER_INCH / 72, roll.dpi)
    for label, fmt in zip(labels, render(labels, roll), strict=True):
        expected = [label.field_text(f) for f in roll.fields]
        assert [t.data for t in fmt.texts] == [s for s in expected if s]
        assert "· M-1" in fmt.texts[1].data  # type · model, as the PDF prints it (UTF-8)
        size, module = module_dots(roll, label.url)
        qr = fmt.qr
        quiet_right = qr.x + (size + QUIET_ZONE) * module
        ys = [t.y for t in fmt.texts]
        assert ys == sorted(ys) and len(set(ys)) == len(ys)
        for t in fmt.texts:
            assert t.commands["A0"].startswith("N,")
            h, w = (int(v) for v in t.commands["A0"].split(",")[1:])
            assert h == height and 0 < w <= h
            assert t.x >= quiet_right
            assert t.y >= 0 and t.y + h <= int(fmt.value("LL") or 0)


def test_quiet_zone_lies_inside_the_label(keyring: Keyring, roll: Template) -> None:
    labels = make_labels(keyring, 2)
    for label, fmt in zip(labels, render(labels, roll), strict=True):
        size, module = module_dots(roll, label.url)
        width, height = int(fmt.value("PW") or 0), int(fmt.value("LL") or 0)
        # The format pins ^BY's height, which the firmware adds above a ^FO-placed QR code.
        assert fmt.value("BY") == f"2,3,{BY_HEIGHT_POWER_UP}"
        left, top = fmt.qr.x, fmt.qr.y + BY_HEIGHT_POWER_UP
        zone_left, zone_top = left - QUIET_ZONE * module, top - QUIET_ZONE * module
        assert zone_left >= 0 and zone_top >= 0
        assert zone_left + (size + 2 * QUIET_ZONE) * module <= width
        assert zone_top + (size + 2 * QUIET_ZONE) * module <= height


def test_qr_lands_where_the_pdf_puts_it(keyring: Keyring, roll: Template) -> None:
    """Quiet zone at the edge margin, vertically centred: the ^BY height is compensated."""
    (label,) = make_labels(keyring, 1)
    (fmt,) = render([label], roll)
    size, module = module_dots(roll, label.url)
    total = (size + 2 * QUIET_ZONE) * module
    left = round(roll.edge / roll.dot) + QUIET_ZONE * module
    top = round((roll.label_height / roll.dot - total) / 2) + QUIET_ZONE * module
    assert (fmt.qr.x, fmt.qr.y + BY_HEIGHT_POWER_UP) == (left, top)


def test_round_label_centres_the_qr_in_the_circle(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "round-40.toml"
    path.write_text(
        'name = "round-40"\ndpi = 203\n[page]\nwidth_mm = 40\nheight_mm = 40\n'
        '[layout]\nlabel_width_mm = 40\nlabel_height_mm = 40\nshape = "round"\n'
        "[design]\nedge_mm = 1.0\n",
        encoding="utf-8",
    )
    t = load_template(path)
    (label,) = make_labels(keyring, 1)
    (fmt,) = render([label], t)
    assert fmt.texts == []
    size, module = module_dots(t, label.url)
    half = (size + 2 * QUIET_ZONE) * module / 2
    cx = fmt.qr.x - QUIET_ZONE * module + half
    cy = fmt.qr.y + BY_HEIGHT_POWER_UP - QUIET_ZONE * module + half
    radius = t.label_width / 2 / t.dot
    assert abs(cx - radius) <= 1 and abs(cy - radius) <= 1
    # Every corner of the quiet zone lies inside the circle.
    assert (half * 2**0.5) + 1 <= radius


def test_copies_add_pq_to_every_format(keyring: Keyring, roll: Template) -> None:
    formats = render(make_labels(keyring, 2), roll, copies=3)
    assert [fmt.value("PQ") for fmt in formats] == ["3", "3"]
    assert [fmt.value("PQ") for fmt in render(make_labels(keyring, 1), roll, copies=1)] == [None]
    with pytest.raises(ProvisionError, match="copies"):
        render(make_labels(keyring, 1), roll, copies=0)


@pytest.mark.parametrize(("offset_x", "offset_y"), [(1.5, 0.0), (0.0, 1.0), (0.8, -0.5)])
def test_offsets_move_every_field_origin(
    keyring: Keyring, roll: Template, offset_x: float, offset_y: float
) -> None:
    labels = make_labels(keyring, 2)
    plain = render(labels, roll)
    moved = render(labels, roll, offset_x_mm=offset_x, offset_y_mm=offset_y)
    dx = round(offset_x * roll.dpi / MM_PER_INCH)
    dy = round(offset_y * roll.dpi / MM_PER_INCH)
    for a, b in zip(plain, moved, strict=True):
        assert len(a.fields) == len(b.fields) > 1
        for fa, fb in zip(a.fields, b.fields, strict=True):
            assert (fb.x - fa.x, fb.y - fa.y) == (dx, dy)
            assert (fb.data, fb.commands) == (fa.data, fa.commands)
        assert b.value("LH") == "0,0"  # applied to the fields, not twice through ^LH


def test_offset_off_the_label_is_an_error(keyring: Keyring, roll: Template) -> None:
    with pytest.raises(TemplateError, match="offset"):
        render(make_labels(keyring, 1), roll, offset_x_mm=-20.0)


def test_caret_tilde_and_underscore_in_a_model_name_are_hex_escaped(
    keyring: Keyring, roll: Template
) -> None:
    model = "X^FS~JA_5E"
    out = io.BytesIO()
    render_zpl(make_labels(keyring, 1, model=model), roll, out)
    raw = out.getvalue().decode("utf-8")
    # The model's ^FS does not end its field early (a QR payload may itself end in "X", so
    # look for the model's own text, and count one ^FS per ^FD), and its ~JA is not a command.
    assert "~" not in raw and model not in raw and "^FS~" not in raw
    assert raw.count("^FS") == raw.count("^FD") and raw.count("^XZ") == 1
    (fmt,) = parse_zpl(out.getvalue())
    (text,) = [t for t in fmt.texts if "X" in t.data]
    assert text.commands["FH"] == "_"
    assert text.data == f"sensor · {model}"
    # Fields without those characters are sent as they are.
    assert all("FH" not in t.commands for t in fmt.texts if t is not text)


def test_control_characters_in_text_print_as_spaces(keyring: Keyring, roll: Template) -> None:
    (fmt,) = render(make_labels(keyring, 1, model="A\nB\tC"), roll)
    assert fmt.texts[1].data == "sensor · A B C"


def test_long_text_is_condensed_then_cut(keyring: Keyring, roll: Template) -> None:
    model = "Model-" + "W" * 60
    (fmt,) = render(make_labels(keyring, 1, model=model), roll)
    line = fmt.texts[1]
    h, w = (int(v) for v in line.commands["A0"].split(",")[1:])
    assert w < h
    assert line.data.endswith("...")
    assert f"sensor · {model}".startswith(line.data.removesuffix("..."))


def test_sheet_template_is_refused(keyring: Keyring) -> None:
    out = io.BytesIO()
    with pytest.raises(TemplateError, match="roll"):
        render_zpl(make_labels(keyring, 1), load_template("avery-l7160"), out)
    assert out.getvalue() == b""


def test_no_labels_write_nothing(roll: Template) -> None:
    out = io.BytesIO()
    result = render_zpl([], roll, out)
    assert (result.labels, result.pages, out.getvalue()) == (0, 0, b"")


def test_300_dpi_roll_uses_300_dpi_dots(keyring: Keyring, tmp_path: Path) -> None:
    t = thermal(tmp_path, 300)
    (label,) = make_labels(keyring, 1)
    (fmt,) = render([label], t)
    assert (fmt.value("PW"), fmt.value("LL")) == ("591", "354")
    _, module = module_dots(t, label.url)
    assert fmt.qr.commands["BQ"] == f"N,2,{module}"
    assert module * t.dot >= 0.3 and module >= 4


def test_magnification_never_exceeds_10(keyring: Keyring, tmp_path: Path) -> None:
    """A 4 x 6 in label would take 19-dot modules; ^BQ accepts 1 to 10 on older firmware."""
    t = thermal(tmp_path, 203, width=101.6, height=152.4)
    (label,) = make_labels(keyring, 1)
    (fmt,) = render([label], t)
    assert fmt.qr.commands["BQ"] == "N,2,10"
    size, _ = module_dots(t, label.url)
    top = fmt.qr.y + BY_HEIGHT_POWER_UP - QUIET_ZONE * 10
    assert fmt.qr.x - QUIET_ZONE * 10 >= 0 and top >= 0
    assert top + (size + 2 * QUIET_ZONE) * 10 <= int(fmt.value("LL") or 0)


def raster(fmt: Format) -> np.ndarray:
    """The label as the printer would draw its QR code: 1 pixel = 1 dot, text left out."""
    width, height = int(fmt.value("PW") or 0), int(fmt.value("LL") or 0)
    image = np.full((height, width), 255, dtype=np.uint8)
    qr = fmt.qr
    module = int(qr.commands["BQ"].split(",")[2])
    fd = qr_field_data(qr.data)
    matrix = segno.make_qr(fd.data, error=fd.ecc.lower(), mode=fd.mode, boost_error=False).matrix
    top = qr.y + int((fmt.value("BY") or "2,3,10").split(",")[2])
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark & 1:
                y, x = top + r * module, qr.x + c * module
                image[y : y + module, x : x + module] = 0
    # The quiet zone around the symbol is white (nothing else drawn there).
    size = len(matrix)
    zone = image[
        top - QUIET_ZONE * module : top + (size + QUIET_ZONE) * module,
        qr.x - QUIET_ZONE * module : qr.x + (size + QUIET_ZONE) * module,
    ]
    assert zone.shape == ((size + 2 * QUIET_ZONE) * module,) * 2
    return image


def test_every_qr_code_scans_and_verifies(keyring: Keyring, roll: Template) -> None:
    labels = make_labels(keyring, 4)
    for label, fmt in zip(labels, render(labels, roll), strict=True):
        results = zxingcpp.read_barcodes(raster(fmt), formats=QR_ONLY)
        assert [r.text for r in results] == [label.url]
        assert results[0].ec_level == "M"
        v = verify_payload(results[0].text, keyring)
        assert v.valid and v.device_id == label.device_id


def test_url_outside_the_alphanumeric_set_goes_in_byte_mode(roll: Template) -> None:
    url = "https://example.com/a/x_y^z~w?q=1"
    (fmt,) = render([LabelData(device_id="0" * 16, url=url)], roll)
    fd = qr_field_data(fmt.qr.data)
    assert (fd.ecc, fd.mode, fd.data) == ("M", "byte", url)
    assert fmt.qr.commands["FH"] == "_"
    results = zxingcpp.read_barcodes(raster(fmt), formats=QR_ONLY)
    assert [r.text for r in results] == [url]


def test_non_ascii_url_is_refused(roll: Template) -> None:
    with pytest.raises(ProvisionError, match="ASCII"):
        render([LabelData(device_id="0" * 16, url="HTTPS://EXAMPLE.COM/É")], roll)
