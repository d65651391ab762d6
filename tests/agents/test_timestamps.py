"""The one ISO 8601 parser (state reports and the webhook header)."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from agents.timestamps import parse_iso_timestamp
from agents.webhook import WebhookRefused, parse_timestamp


@pytest.mark.parametrize("value, expected", [
    ("2026-11-23T22:09:39.929454+00:00", datetime(2026, 11, 23, 22, 9, 39, 929454, tzinfo=UTC)),
    ("2026-11-23T22:09:39+00:00", datetime(2026, 11, 23, 22, 9, 39, tzinfo=UTC)),
    ("2026-11-23T23:09:39+01:00", datetime(2026, 11, 23, 22, 9, 39, tzinfo=UTC)),
    (" 2026-11-23T22:09:39Z ", datetime(2026, 11, 23, 22, 9, 39, tzinfo=UTC)),
])
def test_iso_timestamps_with_an_offset_become_utc(value, expected):
    parsed = parse_iso_timestamp(value)
    assert parsed == expected and parsed.tzinfo is UTC


@pytest.mark.parametrize("value, message", [
    ("yesterday", "must be ISO 8601"),
    ("", "must be ISO 8601"),
    ("2026-11-23T22:09:39", "must include a UTC offset"),
    ("0001-01-01T00:00:00+05:00", "is out of range"),
])
def test_bad_iso_timestamps_say_why(value, message):
    with pytest.raises(ValueError, match=message):
        parse_iso_timestamp(value)


def test_the_webhook_header_takes_unix_seconds_or_the_same_iso_format():
    at = datetime(2026, 11, 23, 22, 9, 39, tzinfo=timezone(timedelta(hours=2)))
    assert parse_timestamp("1795471675") == 1795471675.0
    assert parse_timestamp(at.isoformat()) == at.timestamp()
    for bad in ("²", "2026-11-23T22:09:39", "0001-01-01T00:00:00+05:00"):
        with pytest.raises(WebhookRefused) as caught:
            parse_timestamp(bad)
        assert caught.value.code == "bad_timestamp"
