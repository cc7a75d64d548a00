"""QR codes: zxing-cpp's encoder (never Micro QR, which phone cameras cannot read) -> dark runs.

Why zxing-cpp and not segno for the labels: segno chooses the data mask in pure Python (about
2 ms a code, 80 % of it scoring the eight masks), zxing-cpp in C++ (about 0.1 ms). Both score
the masks by the penalty rules of ISO/IEC 18004 (7.8.3: N1 runs, N2 blocks, N3 finder-like
patterns, N4 dark proportion) and take the lowest; zxing-cpp scores each masked symbol with its
format information in place, as ZXing and most encoders do, while segno scores it before the
format information is added, so for about a quarter of the codes the two pick different, equally
standard masks. The data codewords are the same (alphanumeric mode for an uppercase activation
URL, ECC level M, the smallest version), so the version, the size and what a scanner reads do not
change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import segno
import zxingcpp

QUIET_ZONE = 4  # modules, as ISO/IEC 18004 requires


@dataclass(frozen=True)
class QRSymbol:
    """A QR symbol as horizontal runs of dark modules: (row, first column, length)."""

    size: int  # modules per side, without the quiet zone
    version: int
    runs: tuple[tuple[int, int, int], ...]

    @property
    def size_with_quiet_zone(self) -> int:
        return self.size + 2 * QUIET_ZONE


def encode_qr(content: str) -> QRSymbol:
    """Encode at ECC level M exactly (no boosting), so every label of a batch is alike."""
    code = zxingcpp.create_barcode(content, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    if code.format != zxingcpp.BarcodeFormat.QRCode or code.ec_level != "M":
        raise ValueError(f"the QR encoder made a {code.format} at level {code.ec_level!r}")
    dark = np.asarray(code.to_image(scale=1, add_quiet_zones=False)) == 0
    size = dark.shape[0]
    # Run boundaries: +1 where a dark run starts, -1 just after it ends (row-major order).
    edges = np.zeros((size, size + 2), dtype=np.int8)
    edges[:, 1:-1] = dark
    steps = np.diff(edges, axis=1)
    rows, starts = np.nonzero(steps == 1)
    ends = np.nonzero(steps == -1)[1]
    runs = tuple(zip(rows.tolist(), starts.tolist(), (ends - starts).tolist(), strict=True))
    return QRSymbol(size, (size - 17) // 4, runs)


def save_png(content: str, path: str, scale: int = 10) -> None:
    """A PNG of the QR with its 4-module quiet zone (for `generate`)."""
    segno.make_qr(content, error="m", boost_error=False).save(
        path, kind="png", scale=scale, border=QUIET_ZONE
    )
