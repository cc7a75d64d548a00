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

import functools
from dataclasses import dataclass

import numpy as np
import segno
import zxingcpp

QUIET_ZONE = 4  # modules, as ISO/IEC 18004 requires


@dataclass(frozen=True, eq=False)
class QRSymbol:
    """A QR symbol as horizontal runs of dark modules, in row-major order (numpy arrays)."""

    size: int  # modules per side, without the quiet zone
    version: int
    rows: np.ndarray
    cols: np.ndarray  # first column of each run
    lengths: np.ndarray

    @property
    def size_with_quiet_zone(self) -> int:
        return self.size + 2 * QUIET_ZONE

    @property
    def runs(self) -> tuple[tuple[int, int, int], ...]:
        """(row, first column, length) of each run."""
        return tuple(
            zip(self.rows.tolist(), self.cols.tolist(), self.lengths.tolist(), strict=True)
        )

    def path_operators(self) -> bytes:
        """The runs as PDF path operators in module units, y down: `col row len 1 re` each.

        Built with numpy from a table of fixed-width numbers (about 10 us a symbol, where
        formatting each run in Python took 60 us); the padding spaces cost nothing compressed.
        """
        table = _number_table(len(str(self.size)))
        w = table.shape[1]
        out = np.empty((len(self.rows), 3 * w + len(_RE)), dtype=np.uint8)
        out[:, :w] = table[self.cols]
        out[:, w : 2 * w] = table[self.rows]
        out[:, 2 * w : 3 * w] = table[self.lengths]
        out[:, 3 * w :] = _RE
        return out.tobytes()


_RE = np.frombuffer(b"1 re\n", dtype=np.uint8)


@functools.cache
def _number_table(width: int) -> np.ndarray:
    """Row i: the ASCII digits of i right-aligned in `width` characters, then a space."""
    limit = 10**width
    return np.array([list(f"{i:>{width}} ".encode()) for i in range(limit)], dtype=np.uint8)


def encode_qr(content: str) -> QRSymbol:
    """Encode at ECC level M exactly (no boosting), so every label of a batch is alike."""
    code = zxingcpp.create_barcode(content, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    if code.format != zxingcpp.BarcodeFormat.QRCode or code.ec_level != "M":
        raise ValueError(f"the QR encoder made a {code.format} at level {code.ec_level!r}")
    dark = np.asarray(code.to_image(scale=1, add_quiet_zones=False)) == 0
    size = dark.shape[0]
    # Pad each row with a light module on both sides: then the changes from light to dark and
    # back alternate, start, end, start, end, ... in the flattened (size, size + 1) grid.
    padded = np.zeros((size, size + 2), dtype=bool)
    padded[:, 1:-1] = dark
    changes = np.flatnonzero(padded[:, 1:] != padded[:, :-1])
    starts, ends = changes[0::2], changes[1::2]
    rows, cols = np.divmod(starts, size + 1)
    return QRSymbol(size, (size - 17) // 4, rows, cols, ends - starts)


def save_png(content: str, path: str, scale: int = 10) -> None:
    """A PNG of the QR with its 4-module quiet zone (for `generate`)."""
    segno.make_qr(content, error="m", boost_error=False).save(
        path, kind="png", scale=scale, border=QUIET_ZONE
    )
