"""How the fleet is doing: `provision stats`, grouped by batch, model, type, line, maker, week
or month of registration.

Definitions (each figure is exact; tests/test_stats.py checks every one on a known registry):
- a group is a set of devices: those registered (created) in the period [SINCE, UNTIL), and
  with that batch, model, ... or ISO week (`2026-W48`) or month (`2026-11`) of registration;
- `registered` counts them; `activated` those ever activated (activated_at set, revoked since
  or not); `revoked` those revoked now; `activation_rate` = activated / registered;
- `days_to_activation`: days from registration to activation of the activated ones, the 50th
  and 90th percentiles, linearly interpolated (numpy's and PostgreSQL's percentile_cont);
- `scans`: the group's devices' activation attempts, by result and by reason; attempts that
  name no registered device are counted apart (`unattached_scans`);
- usage, at NOW (the end of the period, or the current time): `active_7d` and `active_30d`
  count devices with at least one action in the 7 and 30 days before NOW;
  `actions_per_active_device_per_day` = actions of the last 30 days / active_30d / 30;
  `top_action_types` the three most frequent in those 30 days. Actions provision writes itself
  (activated, revoked, resigned, recall events) are not usage and are left out.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from provision.errors import UsageError
from provision.periods import moment
from provision.registry import Registry
from provision.registry import stats as q

GROUPINGS = q.GROUPINGS
TOP_ACTIONS = 3
QUERY_THREADS = 3  # aggregates at once (a 2-core machine gains most of it with 3)


@dataclass
class GroupStats:
    """The figures of one group (or of all of them: the totals)."""

    group: str
    registered: int = 0
    activated: int = 0
    revoked: int = 0
    days: list[float] = field(default_factory=list, repr=False)
    scans_by_result: Counter[str] = field(default_factory=Counter)
    scans_by_reason: Counter[str] = field(default_factory=Counter)
    active_7d: int = 0
    active_30d: int = 0
    actions_30d: int = 0
    action_types: Counter[str] = field(default_factory=Counter)

    @property
    def activation_rate(self) -> float | None:
        return round(self.activated / self.registered, 4) if self.registered else None

    def percentile(self, p: float) -> float | None:
        if not self.days:
            return None
        return round(float(np.percentile(np.asarray(self.days), p)), 2)

    @property
    def actions_per_active_device_per_day(self) -> float | None:
        if not self.active_30d:
            return None
        return round(self.actions_30d / self.active_30d / 30, 4)

    def top_action_types(self) -> list[dict[str, Any]]:
        ranked = sorted(self.action_types.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"action_type": t, "actions": n} for t, n in ranked[:TOP_ACTIONS]]

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "registered": self.registered,
            "activated": self.activated,
            "revoked": self.revoked,
            "activation_rate": self.activation_rate,
            "days_to_activation": {"p50": self.percentile(50), "p90": self.percentile(90)},
            "scans": {
                "by_result": dict(sorted(self.scans_by_result.items())),
                "by_reason": dict(sorted(self.scans_by_reason.items())),
            },
            "usage": {
                "active_7d": self.active_7d,
                "active_30d": self.active_30d,
                "actions_30d": self.actions_30d,
                "actions_per_active_device_per_day": self.actions_per_active_device_per_day,
                "top_action_types": self.top_action_types(),
            },
        }


@dataclass
class FleetStats:
    by: str
    since: datetime | None
    until: datetime | None
    now: datetime
    groups: list[GroupStats]
    totals: GroupStats
    unattached_scans: Counter[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "now": self.now.isoformat(),
            "groups": [g.to_json() for g in self.groups],
            "totals": self.totals.to_json(),
            "unattached_scans": dict(sorted(self.unattached_scans.items())),
        }


def fleet_stats(
    registry: Registry,
    by: str = "batch",
    *,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
    now: datetime | None = None,
) -> FleetStats:
    """The figures of each group of devices (see the module docstring for what each means)."""
    if by not in GROUPINGS:
        raise UsageError(f"--by: choose from {', '.join(GROUPINGS)}, not {by!r}")
    start, end = moment(since), moment(until, end=True)
    if start and end and start >= end:
        raise UsageError("--since must come before --until")
    # Usage is counted up to the end of the period, or now when that is still to come.
    at = now or (min(end, datetime.now(UTC)) if end else datetime.now(UTC))
    store = registry.store
    groups: dict[str, GroupStats] = {}

    def group(name: str) -> GroupStats:
        if name not in groups:
            groups[name] = GroupStats(name)
        return groups[name]

    month_ago, week_ago = at - timedelta(days=30), at - timedelta(days=7)
    # The six aggregates are independent: they run at once, each on its own connection (the
    # drivers release the GIL while the database works), so the wall time is the slowest one's
    # rather than their sum.
    with ThreadPoolExecutor(max_workers=QUERY_THREADS) as pool:
        counts = pool.submit(q.device_counts, store, by, start, end)
        delays = pool.submit(lambda: list(q.activation_delays(store, by, start, end)))
        scans = pool.submit(q.scan_counts, store, by, start, end)
        types = pool.submit(q.action_type_counts, store, by, start, end, month_ago, at)
        active = pool.submit(q.active_devices, store, by, start, end, month_ago, week_ago, at)
        junk = pool.submit(q.unattached_scans, store)

    for name, registered, activated, revoked in counts.result():
        g = group(name)
        g.registered, g.activated, g.revoked = registered, activated, revoked
    days: dict[str, list[float]] = defaultdict(list)
    for name, delay in delays.result():
        days[name].append(delay)
    for name, values in days.items():
        group(name).days = values
    for name, result, reason, n in scans.result():
        g = group(name)
        g.scans_by_result[result] += n
        if reason:
            g.scans_by_reason[reason] += n
    for name, action_type, n in types.result():
        g = group(name)
        g.action_types[action_type] += n
        g.actions_30d += n
    for name, (month, week) in active.result().items():
        group(name).active_30d, group(name).active_7d = month, week

    totals = GroupStats("(all)")
    for g in groups.values():
        totals.registered += g.registered
        totals.activated += g.activated
        totals.revoked += g.revoked
        totals.days += g.days
        totals.scans_by_result.update(g.scans_by_result)
        totals.scans_by_reason.update(g.scans_by_reason)
        totals.active_7d += g.active_7d  # a device is in one group only: the sums are exact
        totals.active_30d += g.active_30d
        totals.actions_30d += g.actions_30d
        totals.action_types.update(g.action_types)
    unattached: Counter[str] = Counter()
    for result, reason, n in junk.result():
        unattached[reason or result] += n
    ordered = [groups[k] for k in sorted(groups)]
    return FleetStats(by, start, end, at, ordered, totals, unattached)


def csv_row(g: GroupStats) -> dict[str, Any]:
    """One group as a CSV row (counters as `key=n;key=n`); its keys are the CSV's columns."""

    def pairs(c: Counter[str]) -> str:
        return ";".join(f"{k}={n}" for k, n in sorted(c.items()))

    return {
        "group": g.group,
        "registered": g.registered,
        "activated": g.activated,
        "revoked": g.revoked,
        "activation_rate": g.activation_rate,
        "days_to_activation_p50": g.percentile(50),
        "days_to_activation_p90": g.percentile(90),
        "scans": sum(g.scans_by_result.values()),
        "scans_by_result": pairs(g.scans_by_result),
        "scans_by_reason": pairs(g.scans_by_reason),
        "active_7d": g.active_7d,
        "active_30d": g.active_30d,
        "actions_per_active_device_per_day": g.actions_per_active_device_per_day,
        "top_action_types": ";".join(
            f"{t['action_type']}={t['actions']}" for t in g.top_action_types()
        ),
    }


CSV_COLUMNS = tuple(csv_row(GroupStats("")))
