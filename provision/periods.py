"""A period's bounds: a date or a date-time, as the UTC moment it stands for.

stats, alerts and the shipments feed all take `--since` and `--until` as a date (that day,
UTC) or a date-time (naive ones are UTC); this is the one place that says what they mean.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


def moment(value: date | datetime | None, *, end: bool = False) -> datetime | None:
    """A period's bound in UTC; a date-only END includes that whole day."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    start = datetime.combine(value, time.min, UTC)
    return start + timedelta(days=1) if end else start
