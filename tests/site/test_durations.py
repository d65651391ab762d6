from datetime import UTC, datetime, timedelta

import pytest

from opscore_site.durations import parse_duration, parse_moment


@pytest.mark.parametrize("text,expected", [
    ("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
    ("45s", timedelta(seconds=45)), (" 2H ", timedelta(hours=2)),
])
def test_it_reads_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "1.5h", "-3d", "0s", "3w", "1d2h"])
def test_it_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_moment_is_a_duration_ago_or_an_iso_time():
    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert parse_moment("2h", now=now) == datetime(2026, 1, 10, 10, 0, tzinfo=UTC)
    assert parse_moment("2026-01-09T08:00:00+01:00", now=now) == datetime(2026, 1, 9, 7, 0, tzinfo=UTC)
    assert parse_moment("2026-01-09 08:00", now=now) == datetime(2026, 1, 9, 8, 0, tzinfo=UTC)
    for bad in ("yesterday", "2026-13-40"):
        with pytest.raises(ValueError, match="neither a duration"):
            parse_moment(bad, now=now)


@pytest.mark.parametrize("text", ["36501d", "999999999d", "99999999999d", "99999999999999999999s"])
def test_a_duration_past_a_century_is_refused_not_an_overflow(text):
    with pytest.raises(ValueError, match="longer than 36500d"):
        parse_duration(text)
    with pytest.raises(ValueError, match="longer than 36500d"):
        parse_moment(text)
    assert parse_duration("36500d") == timedelta(days=36500)
