"""ISO 8601 timestamps as agents and AgentKit send them: one parser for state reports and the webhook."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_iso_timestamp(value: str) -> datetime:
    """`value` (ISO 8601 with a UTC offset, with or without microseconds) as an aware UTC datetime.

    ValueError says what is wrong, phrased to follow a field name ("must ...", "is ...").
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError("must be ISO 8601, e.g. 2026-11-23T22:09:39.929454+00:00") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("must include a UTC offset (e.g. +00:00)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
