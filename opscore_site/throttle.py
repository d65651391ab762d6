"""The API throttle's counters: one statement per request, in the table `opscore_throttle`.

A rate "N/period" (OPSCORE_THROTTLE_RATE, OPSCORE_STATE_THROTTLE_RATE) is a token bucket of
N requests refilled at N per period, kept as one number per counter, its *theoretical
arrival time* (GCRA): `tat` is when the bucket would be full again. A request at `now` is
allowed when `tat - now <= period - period/N` (at most N-1 requests already in the bucket),
and then moves `tat` on by `period/N`. So a quiet counter allows a burst of N at once, then
N per period on average; a refused request changes nothing, and `tat - now - (period -
period/N)` is exactly when the next one would be allowed (the 429's Retry-After).

The upsert that counts and decides is one statement (the row lock orders concurrent
requests of one counter, so every process sees the same numbers); only a refusal reads its
row again, for Retry-After. Another statement may carry the upsert as a CTE (`Hit`: the
state read does), so a request that reads one row costs one round trip, throttle included.

On PostgreSQL the table is UNLOGGED (a counter is not worth a WAL flush: a crash or a
failover to a standby empties it, which only lets a burst through) with room in each page
for HOT updates; `tat` is not indexed. A row whose `tat` has passed counts
nothing: `opscore_prune` deletes those (`throttle_prune`). The table is created by migration
`agents.0010` (like the cache table in `agents.0002`); this module imports no app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection

TABLE = "opscore_throttle"
KEY_MAX_LENGTH = 255

# PostgreSQL only: what the table is created with (migration agents.0010).
POSTGRESQL_STORAGE = {
    "fillfactor": "50",  # room for the HOT versions of a row that is rewritten by every request
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "2000",
    "autovacuum_vacuum_cost_delay": "0",
}

_COUNT = (
    f"INSERT INTO {TABLE} AS t (key, tat)"
    " VALUES (%(throttle_key)s{text}, %(throttle_now)s{num} + %(throttle_interval)s{num})"
    " ON CONFLICT (key) DO UPDATE"
    " SET tat = CASE WHEN t.tat > %(throttle_now)s{num} THEN t.tat ELSE %(throttle_now)s{num} END"
    " + %(throttle_interval)s{num}"
    " WHERE t.tat <= %(throttle_now)s{num} + %(throttle_tolerance)s{num}"
    " RETURNING tat"
)
COUNT_SQL = _COUNT.format(text="", num="")
# Typed parameters, for the prepared cursor of opscore_site.postgresql (it sends them untyped);
# also the CTE another prepared statement may carry (`agents.services.agent_state_read`).
COUNT_SQL_TYPED = _COUNT.format(text="::text", num="::float8")


@dataclass(frozen=True)
class Hit:
    """One request to count on counter `key` at `now` (Unix seconds), for a rate of
    `num_requests` per `duration` seconds (at least 1): the upsert's parameters, and what a
    statement that ran it (alone, or as a CTE) makes of its result."""

    key: str
    num_requests: int
    duration: float
    now: float

    def params(self) -> dict[str, Any]:
        interval = self.duration / self.num_requests
        return {"throttle_key": self.key, "throttle_now": self.now, "throttle_interval": interval,
                "throttle_tolerance": self.duration - interval}

    def run(self) -> bool:
        """The upsert alone: whether it counted the request (allowed)."""
        prepared = getattr(connection, "prepared_cursor", None)  # opscore_site.postgresql
        cursor_factory, sql = (prepared, COUNT_SQL_TYPED) if prepared else (connection.cursor, COUNT_SQL)
        with cursor_factory() as cursor:
            cursor.execute(sql, self.params())
            return cursor.fetchone() is not None

    def wait(self, *, counted: bool) -> float | None:
        """None when the upsert returned a row (counted: allowed); else the seconds to wait, read again."""
        if counted:
            return None
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT tat FROM {TABLE} WHERE key = %s", [self.key])
            row = cursor.fetchone()
        params = self.params()
        tat = row[0] if row else self.now + params["throttle_interval"]  # pruned in between: as if just refused
        # At least a millisecond, so Retry-After (rounded up) is never 0 for a refused request.
        return max(tat - params["throttle_tolerance"] - self.now, 0.001)


def create_table_sql(vendor: str) -> list[str]:
    if vendor == "postgresql":
        options = ", ".join(f"{name} = {value}" for name, value in POSTGRESQL_STORAGE.items())
        return [f"CREATE UNLOGGED TABLE {TABLE} (key varchar({KEY_MAX_LENGTH}) PRIMARY KEY,"
                f" tat double precision NOT NULL) WITH ({options})"]
    return [f"CREATE TABLE {TABLE} (key varchar({KEY_MAX_LENGTH}) PRIMARY KEY, tat double precision NOT NULL)"]


def drop_table_sql() -> list[str]:
    return [f"DROP TABLE {TABLE}"]


def throttle_hit(key: str, *, num_requests: int, duration: float, now: float) -> float | None:
    """Count one request on `key` at `now` (Unix seconds): None when allowed, else the seconds to wait."""
    if num_requests < 1:  # "0/min": nothing is allowed
        return float(duration)
    hit = Hit(key=key, num_requests=num_requests, duration=duration, now=now)
    return hit.wait(counted=hit.run())


def throttle_prune(*, now: float, dry_run: bool = False) -> int:
    """Delete the counters that count nothing any more (their `tat` has passed): how many (would) go."""
    with connection.cursor() as cursor:
        if dry_run:
            cursor.execute(f"SELECT count(*) FROM {TABLE} WHERE tat < %s", [now])
            return cursor.fetchone()[0]
        cursor.execute(f"DELETE FROM {TABLE} WHERE tat < %s", [now])
        return cursor.rowcount
