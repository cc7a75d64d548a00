"""Reconciliation categories as data (kept apart from reconcile.py so the CLI loads fast)."""

from __future__ import annotations

from dataclasses import dataclass


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
