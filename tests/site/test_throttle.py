"""The API throttle's counters (opscore_site/throttle.py): a token bucket per counter, one statement a request.

Time is passed in, so nothing here waits or depends on the clock.
"""

from __future__ import annotations

import pytest
from django.db import connection

from opscore_site.throttle import TABLE, throttle_hit, throttle_prune

pytestmark = pytest.mark.django_db

T0 = 1_800_000_000.0  # Unix seconds


def hits(key: str, times: list[float], *, num_requests: int = 5, duration: float = 60) -> list[float | None]:
    return [throttle_hit(key, num_requests=num_requests, duration=duration, now=t) for t in times]


def test_a_burst_of_the_whole_rate_then_refusals_that_say_when_to_come_back():
    waits = hits("k", [T0] * 5 + [T0 + 1, T0 + 2])
    assert waits[:5] == [None] * 5
    # 5/min refills one request every 12 s: the first refill is due at T0 + 12.
    assert waits[5] == pytest.approx(11) and waits[6] == pytest.approx(10)


def test_the_rate_refills_and_refused_requests_do_not_count():
    hits("k", [T0] * 5)
    assert hits("k", [T0 + 11.9] * 20) == [pytest.approx(0.1)] * 20  # refused: nothing moved
    assert hits("k", [T0 + 12, T0 + 12]) == [None, pytest.approx(12)]  # one refilled, one taken
    assert hits("k", [T0 + 24 + 60]) == [None]  # a full minute quiet: the bucket is full again
    assert hits("k", [T0 + 84] * 5) == [None] * 4 + [pytest.approx(12)]


def test_over_a_long_flood_the_rate_is_held():
    times = [T0 + n * 0.125 for n in range(4800)]  # 8/s for 10 minutes (binary fractions: exact sums)
    allowed = [t - T0 for t, wait in zip(times, hits("k", times)) if wait is None]
    assert allowed == [0, 0.125, 0.25, 0.375, 0.5] + [12.0 * k for k in range(1, 50)]  # the burst, then 1 per 12 s


def test_counters_are_separate():
    hits("a", [T0] * 5)
    assert hits("a", [T0]) != [None]
    assert hits("b", [T0] * 5) == [None] * 5


def test_an_allowed_request_is_one_statement_and_a_refused_one_two(django_assert_num_queries):
    with django_assert_num_queries(1):
        assert hits("k", [T0], num_requests=1) == [None]
    with django_assert_num_queries(2):  # the upsert changes nothing, then Retry-After is read
        assert hits("k", [T0 + 1], num_requests=1) == [pytest.approx(59)]


def test_a_zero_rate_refuses_everything_for_a_period(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert hits("k", [T0], num_requests=0) == [60]


def empty_table() -> None:
    """Transactional tests (the schemathesis run) commit counters; this test's transaction hides them."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")


def test_prune_deletes_only_the_counters_at_rest():
    empty_table()
    hits("quiet", [T0])  # its bucket is full again at T0 + 12
    hits("busy", [T0 + 100] * 3)
    assert throttle_prune(now=T0 + 101, dry_run=True) == 1
    assert throttle_prune(now=T0 + 101) == 1
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key FROM {TABLE}")
        assert cursor.fetchall() == [("busy",)]
    assert hits("busy", [T0 + 101] * 3) == [None, None, pytest.approx(11)]  # kept its count


def test_the_table_is_unlogged_on_postgresql_with_room_for_hot_updates():
    with connection.cursor() as cursor:
        cursor.execute("SELECT relpersistence, reloptions FROM pg_class WHERE relname = %s", [TABLE])
        persistence, options = cursor.fetchone()
    assert persistence == "u" and "fillfactor=50" in options
