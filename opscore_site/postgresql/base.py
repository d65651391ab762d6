"""Django's PostgreSQL backend with the per-request health check skipped for a connection in use.

With CONN_HEALTH_CHECKS, Django tests a persistent connection with a `SELECT 1` round trip
before the first query of every request: one of the two round trips of a state report. A
connection that ended its previous request without a database error less than
FRESH_SECONDS ago is trusted without it (under load: every request). An idle connection is
still checked. If the server went away within that second anyway, that one request fails
(500) and Django closes the connection at its end (`errors_occurred`), as it would for a
server lost in the middle of a request.
"""

from __future__ import annotations

import time

from django.core.signals import request_finished
from django.db import connections
from django.db.backends.postgresql import base

FRESH_SECONDS = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    good_at = float("-inf")  # monotonic time a request ended with this connection intact

    def close_if_health_check_failed(self) -> None:
        if (self.connection is not None and not self.health_check_done
                and time.monotonic() - self.good_at < FRESH_SECONDS):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def close(self) -> None:
        self.good_at = float("-inf")
        super().close()


def _mark_good(**_) -> None:
    # Connected after Django's own close_old_connections: a connection it closed is None here.
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if isinstance(conn, DatabaseWrapper) and conn.connection is not None and not conn.errors_occurred:
            conn.good_at = now


request_finished.connect(_mark_good, dispatch_uid="opscore_site.postgresql.mark_good")
