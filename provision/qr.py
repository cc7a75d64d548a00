"""QR codes: segno `make_qr` (never Micro QR, which phone cameras cannot read) -> dark runs."""

from __future__ import annotations

from dataclasses import dataclass

import segno

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
    code = segno.make_qr(content, error="m", boost_error=False)
    runs: list[tuple[int, int, int]] = []
    for r, row in enumerate(code.matrix):
        c, n = 0, len(row)
        while c < n:
            if row[c] & 1:
                start = c
                while c < n and row[c] & 1:
                    c += 1
                runs.append((r, start, c - start))
            else:
                c += 1
    return QRSymbol(len(code.matrix), int(code.version), tuple(runs))


def save_png(content: str, path: str, scale: int = 10) -> None:
    """A PNG of the QR with its 4-module quiet zone (for `generate`)."""
    segno.make_qr(content, error="m", boost_error=False).save(
        path, kind="png", scale=scale, border=QUIET_ZONE
    )
