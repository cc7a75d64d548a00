"""The reconciliation PDF: summary table, charts, first rows of the critical categories."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from provision.categories import CATEGORIES

if TYPE_CHECKING:
    from provision.categories import ReconcileResult

FIRST_ROWS = 25
SEVERITY_COLOURS = {
    "critical": colors.HexColor("#b42318"),
    "warning": colors.HexColor("#b54708"),
    "info": colors.HexColor("#344054"),
}


def _bar_chart(
    title: str,
    labels: list[str],
    values: list[int],
    width: float = 170 * mm,
    height: float = 70 * mm,
) -> Drawing:
    d = Drawing(width, height)
    chart = VerticalBarChart()
    chart.x, chart.y = 15 * mm, 15 * mm
    chart.width, chart.height = width - 25 * mm, height - 28 * mm
    chart.data = [values or [0]]
    chart.categoryAxis.categoryNames = labels or [""]
    chart.categoryAxis.labels.fontSize = 7
    chart.categoryAxis.labels.angle = 30 if len(labels) > 8 else 0
    chart.categoryAxis.labels.dy = -8 if len(labels) > 8 else -2
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    chart.bars[0].fillColor = colors.HexColor("#0b6bcb")
    d.add(chart)
    d.add(String(0, height - 8 * mm, title, fontName="Helvetica-Bold", fontSize=10))
    return d


def _histogram(days: np.ndarray) -> tuple[list[str], list[int]]:
    if len(days) == 0:
        return [], []
    edges = [0, 1, 2, 3, 5, 7, 14, 21, 30, 60, 90, 180, 365]
    top = max(float(days.max()), 0) + 1
    bins = [e for e in edges if e < top] + [top]
    counts, _ = np.histogram(np.clip(days, 0, None), bins=bins)
    labels = [
        f"{int(a)}-{int(b) - 1}" if b - a > 1 else f"{int(a)}" for a, b in itertools.pairwise(bins)
    ]
    labels[-1] = f"{int(bins[-2])}+"
    return labels, [int(c) for c in counts]


def render_reconciliation_pdf(result: ReconcileResult, path: Path) -> None:
    styles = getSampleStyleSheet()
    story: list = []
    story.append(Paragraph("Reconciliation: activations vs shipments", styles["Title"]))
    story.append(
        Paragraph(
            f"As of {result.as_of.isoformat()} &middot; shipments file "
            f"<font face='Courier'>{Path(result.shipments_file).name}</font>",
            styles["Normal"],
        )
    )
    story.append(Spacer(1, 6 * mm))
    rows = [["Category", "Severity", "Count", "Meaning"]]
    for c in CATEGORIES:
        rows.append([c.name, c.severity, f"{result.counts[c.name]:,}", c.description])
    table = Table(rows, colWidths=[52 * mm, 20 * mm, 20 * mm, 78 * mm])
    style = [
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 8.5),
        ("ALIGN", (2, 0), (2, -1), "RIGHT"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f4f7")]),
    ]
    for i, c in enumerate(CATEGORIES, start=1):
        style.append(("TEXTCOLOR", (1, i), (1, i), SEVERITY_COLOURS[c.severity]))
    table.setStyle(TableStyle(style))
    story += [table, Spacer(1, 8 * mm)]

    days = result.matched_days if result.matched_days is not None else np.empty(0)
    labels, counts = _histogram(days)
    story.append(_bar_chart("Days from shipping to activation (matched devices)", labels, counts))
    story.append(Spacer(1, 4 * mm))
    buckets = list(result.aging)
    story.append(
        _bar_chart(
            "Shipped, not activated: age in days",
            buckets,
            [result.aging[b] for b in buckets],
            height=60 * mm,
        )
    )

    for c in CATEGORIES:
        if c.severity != "critical":
            continue
        frame = result.frames[c.name]
        count = result.counts[c.name]
        story.append(Spacer(1, 6 * mm))
        story.append(
            Paragraph(
                f"{c.name}: {count:,} rows"
                + (f" (first {FIRST_ROWS})" if count > FIRST_ROWS else ""),
                styles["Heading3"],
            )
        )
        if len(frame) == 0:
            story.append(Paragraph("None.", styles["Normal"]))
            continue
        head = frame.head(FIRST_ROWS)
        cols = [col for col in head.columns if col not in ("status",)][:6]
        data = [cols] + [[_cell(v) for v in row] for row in head[cols].itertuples(index=False)]
        t = Table(data, repeatRows=1)
        t.setStyle(
            TableStyle(
                [
                    ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 7.5),
                    ("FONT", (0, 1), (-1, -1), "Helvetica", 7),
                    ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ]
            )
        )
        story.append(t)
    doc = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        title="provision reconciliation",
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
    )
    doc.build(story)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if hasattr(value, "strftime"):
        try:
            return value.strftime("%Y-%m-%d %H:%M")  # type: ignore[no-any-return]
        except ValueError:
            return ""
    text = str(value)
    return text if len(text) <= 28 else text[:27] + "…"
