"""Charts drawn on the server as SVG: no JavaScript, no external request, nothing for the CSP
to allow. Each function returns the SVG as markup for a template (values escaped)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 40


@dataclass(frozen=True)
class Series:
    """One set of bars: its name (the legend and each bar's tooltip) and CSS class."""

    name: str
    css: str
    values: Sequence[int]


def _ticks(top: int) -> list[int]:
    """Up to 5 round gridline values from 0 to at least TOP."""
    if top <= 0:
        return [0, 1]
    step = 1
    while top / step > 5:
        for mult in (2, 5, 10):
            if top / (step * mult) <= 5:
                step *= mult
                break
        else:
            step *= 10
    return list(range(0, top + step, step))


def bar_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, label_every: int = 1
) -> Markup:
    """Grouped bars, one group per label; a gridline scale on the left; a legend below."""
    n, k = len(labels), max(len(series), 1)
    top = max((v for s in series for v in s.values), default=0)
    ticks = _ticks(top)
    high = ticks[-1] or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    bar = max(slot * 0.8 / k, 1.0)
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for t in ticks:
        y = TOP + plot_h - plot_h * t / high
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{t:,}</text>'
        )
    for i, label in enumerate(labels):
        x0 = LEFT + slot * i + slot * 0.1
        for j, s in enumerate(series):
            v = s.values[i]
            h = plot_h * v / high
            x, y = x0 + bar * j, TOP + plot_h - h
            out.append(
                f'<rect class="{escape(s.css)}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}"><title>{escape(label)}: {v:,} {escape(s.name)}</title></rect>'
            )
        if i % label_every == 0:
            cx = LEFT + slot * i + slot / 2
            out.append(
                f'<text class="label" x="{cx:.1f}" y="{HEIGHT - BOTTOM + 14}" '
                f'text-anchor="middle">{escape(label[:14])}</text>'
            )
    x = LEFT
    for s in series:
        out.append(
            f'<rect class="{escape(s.css)}" x="{x}" y="{HEIGHT - 14}" width="10" height="10"/>'
            f'<text class="legend" x="{x + 14}" y="{HEIGHT - 5}">{escape(s.name)}</text>'
        )
        x += 20 + 8 * len(s.name)
    out.append("</svg>")
    return Markup("".join(out))
