"""Durations and moments as maintainers type them on the command line: 30d, 12h, 90m, 45s."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime

_DURATION = re.compile(r"^\s*(\d+)\s*([dhms])\s*$", re.IGNORECASE)
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# A century: longer is a typo, and far longer no longer fits a datetime (an OverflowError).
MAX_DURATION = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m` or `45s` as a timedelta; ValueError with the reason otherwise."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"'{text}' is not a duration: use a whole number with d, h, m or s (e.g. 30d, 12h, 90m, 45s)")
    value, unit = int(match.group(1)), match.group(2).lower()
    if value <= 0:
        raise ValueError(f"'{text}' is not a positive duration")
    if value * _SECONDS[unit] > MAX_DURATION.total_seconds():
        raise ValueError(f"'{text}' is longer than {MAX_DURATION.days}d")
    return timedelta(**{_UNITS[unit]: value})


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """A duration ago (`2h` = two hours before now) or an ISO 8601 time (naive = UTC)."""
    now = now or timezone.now()
    if _DURATION.match(text or ""):
        return now - parse_duration(text)  # its own error (zero, too long) says more
    try:
        moment = parse_datetime(text.strip())
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(f"'{text}' is neither a duration (30d, 12h, 90m, 45s) nor an ISO 8601 time")
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment
