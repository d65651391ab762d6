"""Django's PostgreSQL backend: no health check for a connection in use, and prepared statements on request.

With CONN_HEALTH_CHECKS, Django tests a persistent connection with a `SELECT 1` round trip
before the first query of every request: one of the two round trips of a state report. A
connection that ended its previous request without a database error less than
FRESH_SECONDS ago is trusted without it (under load: every request; in a qcluster worker, every
job after a job that ended well, the same way; in its monitor, every acknowledge after one it
made). An idle connection is still checked. If the server went away within that second anyway, that one request fails
(500) and Django closes the connection at its end (`errors_occurred`), as it would for a
server lost in the middle of a request.

`prepared_cursor()` gives a cursor with server-side parameters whose statements are
prepared once per connection (parsed and planned once, then executed by name): for the one
statement of a state report, the throttle's, the job queue's (sessions/broker.py), and the
engine's reads, UPDATEs and INSERTs compiled once per process (opscore_site/statements.py,
whose `prepared_cursor(connection)` falls back to Django's own cursor on other backends).
Django's own cursors stay client-side, as configured.
(A pooler in transaction mode in front of PostgreSQL would need `prepared_cursor` unused.)
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.core.signals import request_finished
from django.db import connections
from django.db.backends.postgresql import base

FRESH_SECONDS = 1.0


class PreparedCursor(psycopg.Cursor):
    """Server-side binding; every statement prepared (psycopg keeps them per connection)."""

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = True, binary: bool | None = None):
        return super().execute(query, params, prepare=prepare, binary=binary)


class DatabaseWrapper(base.DatabaseWrapper):
    good_at = float("-inf")  # monotonic time a request ended with this connection intact

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        # Django leaves psycopg's threshold at None, which refuses even an explicit prepare;
        # a threshold never reached keeps every other statement unprepared (they are client-side anyway).
        if connection.prepare_threshold is None:
            connection.prepare_threshold = 2**31 - 1
        return connection

    def prepared_cursor(self):
        """Like `cursor()` (health check, query logging, error wrapping), but a PreparedCursor.

        Strings are sent untyped: PostgreSQL types a parameter from its context (`col = %s`), and
        one it cannot (a bare `%s` in a select list) must be cast in the SQL (`%(x)s::text`).
        """
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            return self._prepare_cursor(PreparedCursor(self.connection))

    def close_if_health_check_failed(self) -> None:
        if (self.connection is not None and not self.health_check_done
                and time.monotonic() - self.good_at < FRESH_SECONDS):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def close(self) -> None:
        self.good_at = float("-inf")
        super().close()


def mark_good(**_) -> None:
    """Receiver of request_finished (here) and of django-q2's post_execute_in_worker (connected by
    the sessions app): a request or job that ended with its connection intact."""
    # Connected after Django's own close_old_connections: a connection it closed is None here.
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if isinstance(conn, DatabaseWrapper) and conn.connection is not None and not conn.errors_occurred:
            conn.good_at = now


request_finished.connect(mark_good, dispatch_uid="opscore_site.postgresql.mark_good")
