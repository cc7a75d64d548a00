"""Reconciliation as data: its categories and its result (apart from reconcile.py, so the CLI
loads fast, and so that the reconciliation and its PDF report both depend on this, not on each
other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


@dataclass(frozen=True)
class Category:
    """One kind of discrepancy (or agreement) between the registry and the shipments."""

    name: str
    severity: str  # critical | warning | info
    description: str


CATEGORIES: tuple[Category, ...] = (
    Category("matched", "info", "shipped, then activated"),
    Category("activated_not_shipped", "critical", "activated with no shipment record"),
    Category("activated_before_shipped", "warning", "activated earlier than its shipped_at"),
    Category("shipped_not_activated", "info", "shipped and still pending"),
    Category("shipped_unknown_serial", "warning", "shipped but never registered"),
    Category("duplicate_shipment", "warning", "the same serial shipped more than once"),
    Category("shipped_revoked", "critical", "a shipped device that is revoked"),
    Category("registered_not_shipped", "info", "registered, never shipped, never activated"),
)
CATEGORY_NAMES = tuple(c.name for c in CATEGORIES)
AGING_BUCKETS = ("0-30", "31-90", "91+")


@dataclass
class ReconcileResult:
    as_of: date
    shipments_file: str
    counts: dict[str, int]
    report_dir: str | None
    files: list[str] = field(default_factory=list)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    aging: dict[str, int] = field(default_factory=dict)
    days_to_activation: dict[str, float | None] = field(default_factory=dict)
    # Days from shipping to activation of every matched device (frames may hold only the
    # first rows of each category, when the report was built a part at a time).
    matched_days: np.ndarray | None = field(default=None, repr=False)
    since: date | None = None
    until: date | None = None
    batch: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "shipments_file": self.shipments_file,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "batch": self.batch,
            "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "counts": self.counts,
            "severity": {c.name: c.severity for c in CATEGORIES},
            "aging_buckets": self.aging,
            "days_to_activation": self.days_to_activation,
            "report_dir": self.report_dir,
            "files": self.files,
        }
