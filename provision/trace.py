"""Trace: every device that carries matching components, and its report (table, CSV, JSON, PDF).

A supplier reports a bad lot; `trace_components` finds the devices that carry it, with batch,
line, model, status, owner and the time of their newest action, and counts them by status and
by batch. A component serial is looked up through its keyed hash only (the registry keeps the
serial encrypted; nothing is decrypted to compare), and no report carries it in plaintext: a
query shows `component_serial_hash`. Every writer streams the devices, so a trace of a
million devices needs no more memory than one of ten.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape

from provision.errors import ProvisionError, UsageError
from provision.files import atomic_writer
from provision.keys import Keyring
from provision.registry import ComponentFilter, Registry, TraceRow
from provision.serials import component_serial_hash
from provision.text import escape_control, formula_safe, plural, text_problem

FORMATS = ("table", "csv", "json", "pdf")
COLUMNS = (
    "device_id",
    "batch",
    "line",
    "model",
    "status",
    "activated_at",
    "owner",
    "last_action_at",
)
MAX_FILTER_LENGTH = 128  # the columns' width in device_components
PDF_ROWS = 1000
"""Devices listed in a PDF report; the counts and charts cover all of them (the CSV lists all)."""
PDF_BATCH_BARS = 20  # batches charted one by one; the rest share a bar
REPORT_MODE = 0o600
"""Trace reports and owner exports name customers (user ids): readable by their owner only."""


@dataclass(frozen=True)
class TraceQuery:
    """What a trace looks for, as typed: every given field must match the same component."""

    lot: str | None = None
    supplier: str | None = None
    component_type: str | None = None
    component_serial: str | None = None

    def resolve(self, keyring: Keyring | None) -> ComponentFilter:
        """The registry's filter: each value checked, the serial replaced by its keyed hash."""
        values: dict[str, str | None] = {}
        for name in ("lot", "supplier", "component_type", "component_serial"):
            value = getattr(self, name)
            option = "--" + name.replace("_", "-")
            if value is not None:
                value = value.strip()
                if not value:
                    raise UsageError(f"{option} is empty")
                if len(value) > MAX_FILTER_LENGTH:
                    raise UsageError(f"{option} is longer than {MAX_FILTER_LENGTH} characters")
                if problem := text_problem(value):
                    raise UsageError(f"{option} {problem}")
            values[name] = value
        if not any(values.values()):
            raise UsageError(
                "give at least one of --lot, --supplier, --component-type, --component-serial"
            )
        serial = values.pop("component_serial")
        hashed = None
        if serial is not None:
            if keyring is None:
                raise ProvisionError("--component-serial needs the keyring (PROVISION_KEYRING)")
            hashed = component_serial_hash(keyring.pepper, serial)
        return ComponentFilter(component_serial_hash=hashed, **values)


@dataclass
class TraceSummary:
    """Devices counted by status and by batch."""

    by_status: Counter[str] = field(default_factory=Counter)
    by_batch: Counter[str] = field(default_factory=Counter)

    @property
    def devices(self) -> int:
        return sum(self.by_status.values())

    def add(self, row: TraceRow) -> None:
        self.by_status[row.status] += 1
        self.by_batch[row.batch] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "by_status": dict(sorted(self.by_status.items())),
            "by_batch": dict(sorted(self.by_batch.items())),
            "devices": self.devices,
        }


@dataclass(frozen=True)
class TraceResult:
    """A trace to read: `devices()` streams the rows (anew each call), `summary()` counts them."""

    registry: Registry
    filter: ComponentFilter

    @property
    def query(self) -> dict[str, str]:
        return self.filter.to_json()

    def devices(self, limit: int | None = None) -> Iterator[TraceRow]:
        """The devices (the first LIMIT of them, with LIMIT)."""
        return self.registry.recalls.trace(self.filter, limit)

    def summary(self) -> TraceSummary:
        by_status, by_batch = self.registry.recalls.trace_summary(self.filter)
        return TraceSummary(Counter(by_status), Counter(by_batch))

    def counted(self, summary: TraceSummary) -> Iterator[TraceRow]:
        """The devices, each counted into SUMMARY as it passes: the summary a report prints
        after its rows is that of the very rows it printed."""
        for row in self.devices():
            summary.add(row)
            yield row


def trace_components(registry: Registry, keyring: Keyring | None, query: TraceQuery) -> TraceResult:
    """The devices that carry components matching QUERY (the keyring only for a serial)."""
    return TraceResult(registry, query.resolve(keyring))


def describe(query: dict[str, str]) -> str:
    """`lot L1, supplier ACME`: a query in a line."""
    names = {"component_type": "type", "component_serial_hash": "serial hash"}
    return ", ".join(
        f"{names.get(k, k)} {v[:16] + '...' if k == 'component_serial_hash' else v}"
        for k, v in query.items()
    )


def row_json(row: TraceRow) -> dict[str, Any]:
    return {
        "device_id": row.device_id,
        "batch": row.batch,
        "line": row.line,
        "model": row.model,
        "status": row.status,
        "activated_at": _iso(row.activated_at),
        "owner": row.owner,
        "last_action_at": _iso(row.last_action_at),
    }


def safe_cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text (provision.text.formula_safe); datetimes in
    ISO 8601."""
    return formula_safe(value.isoformat() if isinstance(value, datetime) else value)


def write_csv_rows(fh: TextIO, header: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> None:
    """Stream rows to FH as formula-safe CSV, flushed now and then, never held."""
    out = csv.writer(fh, lineterminator="\n")
    out.writerow(header)
    for n, row in enumerate(rows, start=1):
        out.writerow([safe_cell(v) for v in row])
        if n % 10_000 == 0:
            fh.flush()


def _cells(row: TraceRow) -> tuple[Any, ...]:
    return (
        row.device_id,
        row.batch,
        row.line,
        row.model,
        row.status,
        row.activated_at,
        row.owner,
        row.last_action_at,
    )


def write_csv(result: TraceResult, fh: TextIO) -> TraceSummary:
    summary = TraceSummary()
    write_csv_rows(fh, COLUMNS, (_cells(r) for r in result.counted(summary)))
    return summary


def write_json(result: TraceResult, fh: TextIO) -> TraceSummary:
    """{"query", "devices", "summary"}, written a device at a time."""
    summary = TraceSummary()
    fh.write('{\n  "query": ' + json.dumps(result.query) + ',\n  "devices": [')
    for n, row in enumerate(result.counted(summary)):
        fh.write(("," if n else "") + "\n    " + json.dumps(row_json(row)))
    fh.write(("\n  " if summary.devices else "") + "],\n")
    fh.write('  "summary": ' + json.dumps(summary.to_json()) + "\n}\n")
    return summary


_TABLE = "{:<16}  {:<9}  {:<20}  {:<10}  {:<12}  {:<16}  {:<24}  {}"


def write_table(result: TraceResult, fh: TextIO) -> TraceSummary:
    """A terminal table, then the counts; every stored value escaped (no forged lines)."""
    summary = TraceSummary()
    fh.write(f"Trace: {escape_control(describe(result.query))}\n")
    fh.write(
        _TABLE.format(
            "DEVICE", "STATUS", "BATCH", "LINE", "MODEL", "ACTIVATED", "OWNER", "LAST ACTION"
        )
        + "\n"
    )
    for row in result.counted(summary):
        cells = [
            row.device_id,
            row.status,
            row.batch,
            row.line or "-",
            row.model or "-",
            _minute(row.activated_at),
            row.owner or "-",
            _minute(row.last_action_at),
        ]
        fh.write(_TABLE.format(*(escape_control(str(c)) for c in cells)).rstrip() + "\n")
    fh.write("\n" + "\n".join(summary_lines(summary)) + "\n")
    return summary


def summary_lines(summary: TraceSummary) -> list[str]:
    return [
        plural(summary.devices, "device"),
        f"By status: {_counts(summary.by_status)}",
        f"By batch: {_counts(summary.by_batch)}",
    ]


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{escape_control(k)} {n:,}" for k, n in sorted(c.items())) or "-"


def write_pdf(result: TraceResult, path: str | Path) -> TraceSummary:
    """The report as a PDF (summary, charts by status and batch, the first PDF_ROWS devices),
    written atomically: a reader never sees half of it."""
    summary = TraceSummary()
    first: list[TraceRow] = []
    for row in result.counted(summary):
        if len(first) < PDF_ROWS:
            first.append(row)
    with atomic_writer(path, REPORT_MODE) as fh:
        _render_pdf(result.query, summary, first, fh)
    return summary


def write_trace(
    result: TraceResult, fmt: str, path: str | Path | None, stdout: TextIO
) -> TraceSummary:
    """Write the report in FMT to PATH (atomically) or, but for a PDF, to STDOUT."""
    if fmt not in FORMATS:
        raise UsageError(f"--format: choose from {', '.join(FORMATS)}")
    if fmt == "pdf":
        if path is None:
            raise UsageError("--format pdf needs --output PATH")
        return write_pdf(result, path)
    writer = {"csv": write_csv, "json": write_json, "table": write_table}[fmt]
    with text_output(path, stdout) as fh:
        return writer(result, fh)


@contextlib.contextmanager
def text_output(path: str | Path | None, stdout: TextIO) -> Iterator[TextIO]:
    """PATH written atomically as UTF-8 text (mode REPORT_MODE), or STDOUT when PATH is None."""
    if path is None:
        yield stdout
        stdout.flush()
        return
    with atomic_writer(path, REPORT_MODE) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # atomic_writer closes the file itself, after the rename


def _render_pdf(
    query: dict[str, str], summary: TraceSummary, first: list[TraceRow], fh: Any
) -> None:
    # Here, not at the top: reportlab costs every other trace format 150 ms of imports.
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table

    styles = getSampleStyleSheet()
    story: list[Any] = [
        Paragraph(f"Trace: {escape(describe(query))}", styles["Title"]),
        Paragraph(
            f"{plural(summary.devices, 'device')} carry matching components "
            f"(counts by status: {escape(_counts(summary.by_status))}).",
            styles["Normal"],
        ),
        Spacer(1, 6 * mm),
    ]
    statuses = sorted(summary.by_status.items())
    story.append(_bar_chart("Devices by status", statuses, 250 * mm, 60 * mm))
    batches = summary.by_batch.most_common()
    shown = sorted(batches[:PDF_BATCH_BARS])
    if len(batches) > PDF_BATCH_BARS:
        rest = batches[PDF_BATCH_BARS:]
        shown.append((f"{len(rest)} more", sum(n for _, n in rest)))
    story += [Spacer(1, 4 * mm), _bar_chart("Devices by batch", shown, 250 * mm, 70 * mm)]
    story.append(PageBreak())
    listed = "" if summary.devices <= len(first) else f" (first {len(first):,})"
    story.append(Paragraph(f"Devices{listed}", styles["Heading2"]))
    header = [
        "Device",
        "Batch",
        "Line",
        "Model",
        "Status",
        "Activated (UTC)",
        "Owner",
        "Last action (UTC)",
    ]
    data = [header] + [
        [
            r.device_id,
            _clip(r.batch),
            _clip(r.line),
            _clip(r.model),
            r.status,
            _minute(r.activated_at),
            _clip(r.owner),
            _minute(r.last_action_at),
        ]
        for r in first
    ]
    table = Table(data, repeatRows=1, hAlign="LEFT")
    table.setStyle(
        [
            ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 7.5),
            ("FONT", (0, 1), (-1, -1), "Helvetica", 7),
            ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
            ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f4f7")]),
        ]
    )
    story.append(table)
    doc = SimpleDocTemplate(
        fh,
        pagesize=landscape(A4),
        title="provision trace",
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=14 * mm,
        bottomMargin=14 * mm,
    )
    doc.build(story)


def _bar_chart(title: str, bars: list[tuple[str, int]], width: float, height: float) -> Any:
    """A titled vertical bar chart of (label, count) bars, as the reconciliation report draws."""
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.shapes import Drawing, String
    from reportlab.lib import colors
    from reportlab.lib.units import mm

    d = Drawing(width, height)
    chart = VerticalBarChart()
    chart.x, chart.y = 15 * mm, 15 * mm
    chart.width, chart.height = width - 25 * mm, height - 28 * mm
    chart.data = [[n for _, n in bars] or [0]]
    labels = [_clip(label, 18) for label, _ in bars]
    chart.categoryAxis.categoryNames = labels or [""]
    chart.categoryAxis.labels.fontSize = 7
    chart.categoryAxis.labels.angle = 30 if len(labels) > 8 else 0
    chart.categoryAxis.labels.dy = -8 if len(labels) > 8 else -2
    chart.valueAxis.valueMin = 0
    # Whole devices: a step of at least 1, about five gridlines.
    chart.valueAxis.valueStep = max(1, -(-max((n for _, n in bars), default=1) // 5))
    chart.valueAxis.labels.fontSize = 7
    chart.bars[0].fillColor = colors.HexColor("#0b6bcb")
    d.add(chart)
    d.add(String(0, height - 8 * mm, title, fontName="Helvetica-Bold", fontSize=10))
    return d


def _clip(value: str | None, size: int = 28) -> str:
    if not value:
        return ""
    text = escape_control(value)
    return text if len(text) <= size else text[: size - 1] + "…"


def _minute(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
