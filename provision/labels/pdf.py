"""A streaming PDF writer for label sheets: pages go to the file as they are made.

Why not reportlab's Canvas for the batch sheets: a Canvas keeps every page in memory until
`save()` (about 6 MB per 1,000 labels, so a million-label batch would not fit in 1 GB), and its
TrueType subsets number the characters in the order one Canvas first meets them, so pages drawn
by several processes could not share a font. Here a page's content refers to glyphs by their
glyph ids in the font file (a Type 0 font, Identity-H, as PDF 1.7 section 9.7 describes): the
same in every process. Each page is written as soon as it is complete, and the font, subset
with fontTools to the glyphs the pages used (keeping their ids), comes last. reportlab still
draws the alignment page and the reconciliation report, which are small.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from fontTools import subset as ft_subset
from fontTools.ttLib import TTFont, TTLibError

HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
PAGES_PER_NODE = 64  # kids of one node of the page tree: a reader finds page k in two steps
BFCHAR_BLOCK = 100  # the most entries one beginbfchar block may hold


class FontError(ValueError):
    """A font file that cannot be embedded (missing, not TrueType, no outlines)."""


@dataclass
class FontMetrics:
    """What a page needs from a TrueType font: glyph ids and advance widths (1/1000 em)."""

    path: str
    gids: dict[int, int]  # code point -> glyph id
    widths: list[float]  # glyph id -> advance width, in thousandths of the em
    postscript_name: str

    @classmethod
    def load(cls, path: str) -> FontMetrics:
        font = _open(path)
        try:
            upem = font["head"].unitsPerEm
            order = {name: gid for gid, name in enumerate(font.getGlyphOrder())}
            cmap = _cmap(font)
            if not cmap:
                raise FontError(f"{path} maps no Unicode character to a glyph (no usable cmap)")
            metrics = font["hmtx"].metrics
            widths = [metrics[name][0] * 1000 / upem for name in font.getGlyphOrder()]
            ps_name = _postscript_name(font)
        finally:
            font.close()
        return cls(path, {cp: order[name] for cp, name in cmap.items()}, widths, ps_name)

    def __post_init__(self) -> None:
        # Per character, for the two calls made for every line of every label.
        self._advance = {chr(cp): self.widths[gid] for cp, gid in self.gids.items()}
        self._hex = {chr(cp): f"{gid:04X}" for cp, gid in self.gids.items()}

    def width(self, text: str, size: float) -> float:
        """The advance of `text` at `size` points (no kerning, as reportlab draws it)."""
        advance, missing = self._advance, self.widths[0]
        return sum([advance.get(c, missing) for c in text]) * size / 1000

    def encode(self, text: str, used: dict[int, str]) -> str:
        """`text` as a PDF hex string of 2-byte glyph ids; records each glyph's character."""
        gids = self.gids
        for c in dict.fromkeys(text):
            gid = gids.get(ord(c), 0)  # 0: .notdef, as any PDF writer shows a missing glyph
            if gid:  # .notdef stands for every missing character (U+FFFD in ToUnicode)
                add_glyph(used, gid, c)
        hexes = self._hex
        return "<" + "".join([hexes.get(c, "0000") for c in text]) + ">"


def add_glyph(used: dict[int, str], gid: int, char: str) -> None:
    """Record that glyph `gid` shows `char`. Where a font draws several characters with one glyph
    (space and no-break space, say), the lowest code point names it in ToUnicode: the same choice
    whichever label, page, process or hash seed met it first, so the same labels, same bytes."""
    known = used.get(gid)
    if known is None or char < known:
        used[gid] = char


def merge_glyphs(into: dict[int, str], glyphs: Iterable[tuple[int, str]]) -> None:
    for gid, char in glyphs:
        add_glyph(into, gid, char)


def _open(path: str) -> TTFont:
    try:
        # recalcTimestamp off: a subset saved now must not carry the time (same labels, same bytes)
        font = TTFont(path, lazy=True, recalcTimestamp=False)
    except (OSError, TTLibError) as exc:
        raise FontError(f"cannot read {path}: {exc}") from None
    if "glyf" not in font or "loca" not in font:
        font.close()
        raise FontError(f"{path} has no TrueType outlines (glyf); use a .ttf font")
    for table in ("head", "hhea", "hmtx", "maxp", "cmap"):
        if table not in font:
            font.close()
            raise FontError(f"{path} lacks the {table!r} table")
    return font


def _cmap(font: TTFont) -> dict[int, str]:
    """Code point -> glyph name: the font's Unicode cmap; else, as reportlab reads such fonts,
    a Windows symbol cmap (3,0: U+F020.. stand for ASCII) or a Macintosh Roman one (1,0)."""
    best = font.getBestCmap()
    if best:
        return dict(best)
    table = font["cmap"]
    symbol = table.getcmap(3, 0)
    if symbol is not None and symbol.cmap:
        out: dict[int, str] = {}
        for code, name in symbol.cmap.items():
            out.setdefault(code - 0xF000 if 0xF020 <= code <= 0xF0FF else code, name)
        return out
    mac = table.getcmap(1, 0)
    if mac is not None and mac.cmap:
        return {ord(bytes([code]).decode("mac_roman")): name for code, name in mac.cmap.items()}
    return {}


def _postscript_name(font: TTFont) -> str:
    name = font["name"].getDebugName(6) if "name" in font else None
    clean = "".join(c for c in (name or "Font") if (c.isascii() and c.isalnum()) or c in "-_")
    return clean or "Font"


@dataclass
class _Font:
    metrics: FontMetrics
    resource: str  # /F1, /F2: the name the pages use
    ref: int  # object number of the Type 0 font
    used: dict[int, str] = field(default_factory=dict)  # glyph id -> a character it shows


class SheetWriter:
    """Writes a PDF page by page; `close()` adds the fonts, the page tree and the xref table.

    Every object is written once, in the order it is made; object numbers are handed out
    ahead when a page must refer to an object written later (the fonts, its page-tree node).
    """

    def __init__(
        self,
        out: BinaryIO,
        page_size: tuple[float, float],
        fonts: Iterable[FontMetrics],
        *,
        title: str,
        creator: str = "provision",
        print_scaling_none: bool = True,
    ) -> None:
        self._out = out
        self._pos = 0
        self._offsets: dict[int, int] = {}
        self._next = 1
        self._catalog = self._alloc()
        self._root = self._alloc()
        self._info = self._alloc()
        self._resources = self._alloc()
        self._fonts: dict[str, _Font] = {}
        for metrics in fonts:
            if metrics.path not in self._fonts:
                n = len(self._fonts) + 1
                self._fonts[metrics.path] = _Font(metrics, f"F{n}", self._alloc())
        self._nodes: list[tuple[int, list[int]]] = []  # (object number, its pages)
        self._title, self._creator = title, creator
        self._scaling = print_scaling_none
        w, h = page_size
        self._media = f"[0 0 {pdf_number(w)} {pdf_number(h)}]".encode()
        self.pages = 0
        self._write(HEADER)
        fonts_dict = " ".join(f"/{f.resource} {f.ref} 0 R" for f in self._fonts.values())
        self._object(
            self._resources,
            f"<< /Font << {fonts_dict} >> /ProcSet [/PDF /Text] >>".encode(),
        )

    def resource(self, path: str) -> str:
        """The page resource name (F1, ...) of the font loaded from `path`."""
        return self._fonts[path].resource

    def add_page(self, content: bytes, used: dict[str, dict[int, str]]) -> None:
        """One page: its content stream, already Flate-compressed, and the glyphs it shows."""
        for path, glyphs in used.items():
            merge_glyphs(self._fonts[path].used, glyphs.items())
        if not self._nodes or len(self._nodes[-1][1]) == PAGES_PER_NODE:
            self._nodes.append((self._alloc(), []))
        node, kids = self._nodes[-1]
        contents, page = self._alloc(), self._alloc()
        self._stream(contents, b"/Filter /FlateDecode", content)
        self._object(
            page,
            b"<< /Type /Page /Parent %d 0 R /MediaBox %s /Resources %d 0 R /Contents %d 0 R >>"
            % (node, self._media, self._resources, contents),
        )
        kids.append(page)
        self.pages += 1

    def close(self) -> None:
        if not self.pages:  # a PDF needs a page: an empty batch gets one blank sheet
            self.add_page(zlib.compress(b""), {})
        for font in self._fonts.values():
            self._write_font(font)
        for node, kids in self._nodes:
            refs = " ".join(f"{k} 0 R" for k in kids)
            self._object(
                node,
                f"<< /Type /Pages /Parent {self._root} 0 R /Kids [{refs}] "
                f"/Count {len(kids)} >>".encode(),
            )
        nodes = " ".join(f"{n} 0 R" for n, _ in self._nodes)
        self._object(
            self._root,
            f"<< /Type /Pages /Kids [{nodes}] /Count {self.pages} >>".encode(),
        )
        self._object(
            self._info,
            b"<< /Title "
            + _text(self._title)
            + b" /Creator "
            + _text(self._creator)
            + b" /Producer (provision) >>",
        )
        prefs = b" /ViewerPreferences << /PrintScaling /None >>" if self._scaling else b""
        self._object(self._catalog, b"<< /Type /Catalog /Pages %d 0 R%s >>" % (self._root, prefs))
        xref = self._pos
        size = self._next
        missing = [n for n in range(1, size) if n not in self._offsets]
        if missing:
            raise RuntimeError(f"PDF objects {missing} were numbered but never written")
        lines = [b"xref\n0 %d\n0000000000 65535 f \n" % size]
        lines += [b"%010d 00000 n \n" % self._offsets[n] for n in range(1, size)]
        self._write(b"".join(lines))
        self._write(
            b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (size, self._catalog, self._info, xref)
        )

    # -- fonts -------------------------------------------------------------------------------

    def _write_font(self, font: _Font) -> None:
        """Type 0 font -> CIDFontType2 (glyph ids as CIDs) -> a subset of the TrueType file."""
        m = font.metrics
        # .notdef, drawn for any character the font lacks, copies out as U+FFFD
        used = {0: "\ufffd"} | dict(sorted(font.used.items()))
        program, info = _subset(m.path, sorted(used))
        tag = _subset_tag(m.postscript_name, used)
        base = f"{tag}+{m.postscript_name}"
        cid, descriptor, file_, tounicode = (self._alloc() for _ in range(4))
        self._stream(file_, b"/Length1 %d /Filter /FlateDecode" % len(program), _deflate(program))
        widths = " ".join(f"{gid} [{pdf_number(m.widths[gid])}]" for gid in used)
        self._object(
            descriptor,
            (
                f"<< /Type /FontDescriptor /FontName /{base} /Flags {info.flags} "
                f"/FontBBox [{' '.join(pdf_number(v) for v in info.bbox)}] "
                f"/ItalicAngle {pdf_number(info.italic_angle)} /Ascent {pdf_number(info.ascent)} "
                f"/Descent {pdf_number(info.descent)} /CapHeight {pdf_number(info.cap_height)} "
                f"/StemV {info.stem_v} /FontFile2 {file_} 0 R >>"
            ).encode(),
        )
        self._object(
            cid,
            (
                f"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /{base} "
                "/CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> "
                f"/FontDescriptor {descriptor} 0 R /CIDToGIDMap /Identity "
                f"/DW {pdf_number(m.widths[0])} /W [{widths}] >>"
            ).encode(),
        )
        self._stream(tounicode, b"/Filter /FlateDecode", _deflate(_to_unicode(used)))
        self._object(
            font.ref,
            (
                f"<< /Type /Font /Subtype /Type0 /BaseFont /{base} /Encoding /Identity-H "
                f"/DescendantFonts [{cid} 0 R] /ToUnicode {tounicode} 0 R >>"
            ).encode(),
        )

    # -- objects -----------------------------------------------------------------------------

    def _alloc(self) -> int:
        n = self._next
        self._next += 1
        return n

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._pos += len(data)

    def _object(self, n: int, body: bytes) -> None:
        self._offsets[n] = self._pos
        self._write(b"%d 0 obj\n%s\nendobj\n" % (n, body))

    def _stream(self, n: int, entries: bytes, data: bytes) -> None:
        self._offsets[n] = self._pos
        self._write(b"%d 0 obj\n<< /Length %d %s >>\nstream\n" % (n, len(data), entries))
        self._write(data)
        self._write(b"\nendstream\nendobj\n")


@dataclass(frozen=True)
class _FontInfo:
    flags: int
    bbox: tuple[float, float, float, float]
    italic_angle: float
    ascent: float
    descent: float
    cap_height: float
    stem_v: int


def _subset(path: str, gids: list[int]) -> tuple[bytes, _FontInfo]:
    """The font program with only `gids` (and .notdef) kept, at their original glyph ids."""
    font = _open(path)
    try:
        options = ft_subset.Options()
        options.retain_gids = True  # the pages refer to glyph ids of the whole font
        options.notdef_outline = True
        options.layout_features = []  # no shaping: PDF text is positioned glyph by glyph
        options.name_IDs = [0, 1, 2, 3, 4, 5, 6]  # copyright, names, version (licence terms)
        options.drop_tables += ["GSUB", "GPOS", "GDEF", "kern", "DSIG", "FFTM"]
        subsetter = ft_subset.Subsetter(options)
        subsetter.populate(gids=gids)
        # fontTools warns of each table it cannot subset and drops; a nightly cron job's output
        # is no place for that (what it keeps is what the pages need).
        quiet = logging.getLogger("fontTools.subset")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            subsetter.subset(font)
        finally:
            quiet.setLevel(level)
        upem = font["head"].unitsPerEm
        head, hhea = font["head"], font["hhea"]
        os2 = font.get("OS/2")
        post = font.get("post")

        def em(v: float) -> float:
            return v * 1000 / upem

        italic = float(post.italicAngle) if post is not None else 0.0
        weight = os2.usWeightClass if os2 is not None else 400
        cap = getattr(os2, "sCapHeight", 0) if os2 is not None else 0
        info = _FontInfo(
            flags=4 | (64 if italic else 0),  # symbolic (glyph ids, no standard encoding)
            bbox=(em(head.xMin), em(head.yMin), em(head.xMax), em(head.yMax)),
            italic_angle=italic,
            ascent=em(hhea.ascent),
            descent=em(hhea.descent),
            cap_height=em(cap or hhea.ascent),
            stem_v=50 + int((weight / 65) ** 2),  # the usual estimate from the weight class
        )
        buf = io.BytesIO()
        font.save(buf)
    finally:
        font.close()
    return buf.getvalue(), info


def _subset_tag(name: str, used: dict[int, str]) -> str:
    """Six capital letters naming this subset (PDF 9.6.4), the same for the same glyphs."""
    digest = hashlib.sha256((name + repr(sorted(used))).encode()).digest()
    return "".join(chr(ord("A") + b % 26) for b in digest[:6])


def _to_unicode(used: dict[int, str]) -> bytes:
    """The CMap that lets a reader copy and search the text: glyph id -> its character."""
    entries = [f"<{gid:04X}> <{c.encode('utf-16-be').hex().upper()}>" for gid, c in used.items()]
    blocks = []
    for i in range(0, len(entries), BFCHAR_BLOCK):
        part = entries[i : i + BFCHAR_BLOCK]
        blocks.append(f"{len(part)} beginbfchar\n" + "\n".join(part) + "\nendbfchar")
    return (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
        + "\n".join(blocks)
        + "\nendcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
    ).encode("ascii")


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, 6)


def _text(value: str) -> bytes:
    """A PDF text string: literal when ASCII, else UTF-16BE with its byte order mark."""
    if value.isascii():
        escaped = value.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        escaped = escaped.replace("\r", "\\r").replace("\n", "\\n")
        return f"({escaped})".encode("ascii")
    return b"<FEFF" + value.encode("utf-16-be").hex().upper().encode() + b">"


def pdf_number(value: float) -> str:
    """A PDF number: 6 decimals (a millionth of a point), no trailing zeros."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
