"""django-q2's ORM broker, woken by PostgreSQL LISTEN/NOTIFY instead of sleeping `poll`.

Enqueueing is the ORM broker's: one `django_q_ormq` row (a plain INSERT, as `delete` is a plain
DELETE: no model machinery on the path of every step), written on the caller's connection
inside the caller's transaction (the job exists if and only if the caller's rows commit).
The INSERT, the DELETE and the claim go on opscore_site.postgresql's prepared cursor: each is
parsed and planned once per connection.
A trigger on that table (migration `0003_job_notify_trigger`, PostgreSQL only) sends
`pg_notify(CHANNEL, key)` for every inserted row in the inserting transaction, so PostgreSQL
delivers it at commit, exactly when the job becomes visible, and never for a rolled-back
job; no enqueueing code has to know (the engine, `async_task`, schedules).

`dequeue` (called in a loop by the qcluster's pusher process) claims jobs with one
`UPDATE ... FOR UPDATE SKIP LOCKED ... RETURNING`: clusters never wait on each other's
locks and a job is leased to one of them only. When it finds nothing it waits on its own
LISTENing connection (autocommit, opened in the pusher process, reopened when it dies) for
up to `Q_POLL` seconds, and reads again. Polling stays the safety net: notifications are
best-effort (a job whose lease ran out, one committed while the listener was down or before
the cluster started sends none), and every idle cluster reads the queue at least every
`Q_POLL` seconds whatever it hears.

While the database is unreachable, `dequeue` logs one line per failure class per
LOG_INTERVAL_SECONDS (opscore_site/dbdown.py) and reads again every `Q_POLL` seconds, instead
of raising into django-q2's pusher (a traceback, ten seconds' sleep and a restarted pusher each
time).

Used only on PostgreSQL (`settings.Q_CLUSTER["broker_class"]`); SQLite keeps the ORM broker.
"""

from __future__ import annotations

import logging
import os
from time import monotonic, sleep
from typing import Any

import psycopg
from django.db import connections
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

from opscore_site.dbdown import DATABASE_ERRORS, LOG_INTERVAL_SECONDS
from opscore_site.statements import prepared_cursor

logger = logging.getLogger(__name__)

CHANNEL = "django_q_ormq"


class ListenNotifyBroker(ORM):
    """The ORM broker that claims with SKIP LOCKED and waits for a NOTIFY instead of sleeping."""

    def __init__(self, list_key: str | None = None) -> None:
        super().__init__(list_key)
        self._listener: psycopg.Connection | None = None
        self._listener_pid: int | None = None
        self._idle = True
        self._logged_at: dict[str, float] = {}

    def __setstate__(self, state: Any) -> None:
        super().__setstate__(state)
        self._listener, self._listener_pid, self._idle = None, None, True
        self._logged_at = {}

    def info(self) -> str:
        if not self._info:
            self._info = f"ORM {Conf.ORM} + LISTEN {CHANNEL}"
        return self._info

    # ------------------------------------------------------------------ writing

    def enqueue(self, task: str) -> int:
        """The ORM broker's `enqueue` in one plain INSERT (no model save: every step enqueues one)."""
        self.get_connection()  # as the ORM broker: stale-connection cleanup outside a transaction
        connection = connections[Conf.ORM]
        with prepared_cursor(connection) as cursor:
            cursor.execute(
                f"INSERT INTO {self._table(connection)} (key, payload, lock) VALUES (%s, %s, %s) RETURNING id",  # noqa: S608
                [self.list_key or Conf.CLUSTER_NAME, task, timezone.now()],
            )
            return cursor.fetchone()[0]

    def delete(self, task_id: int) -> None:
        """The ORM broker's `delete` (`acknowledge`, `fail`) in one plain DELETE (no deletion collector)."""
        self.get_connection()  # as the ORM broker: a connection broken by a database restart is replaced
        connection = connections[Conf.ORM]
        with prepared_cursor(connection) as cursor:
            cursor.execute(f"DELETE FROM {self._table(connection)} WHERE id = %s", [task_id])  # noqa: S608

    @staticmethod
    def _table(connection) -> str:
        return connection.ops.quote_name(OrmQ._meta.db_table)

    # ------------------------------------------------------------------ reading

    def dequeue(self) -> list[tuple[int, str]] | None:
        # LISTEN before the read: a job committed between the read and the wait is heard.
        listener = self.listener()
        try:
            jobs = self.claim()
            if jobs:
                return jobs
            if listener is None:
                sleep(Conf.POLL)
            else:
                self.wait(listener, Conf.POLL)
            return self.claim() or None
        except DATABASE_ERRORS as exc:
            self.database_unavailable(exc)
            return None

    def database_unavailable(self, exc: BaseException) -> None:
        """The database went away under the read (a restart, an outage): one log line per failure
        class per LOG_INTERVAL_SECONDS, not django-q2's traceback (and its pusher's restart) each
        time; the connection is dropped, and the next read, after `Q_POLL` seconds, reconnects."""
        connections[Conf.ORM].close()
        self._idle = True
        now = monotonic()
        name = type(exc).__name__
        if now - self._logged_at.get(name, float("-inf")) >= LOG_INTERVAL_SECONDS:
            self._logged_at[name] = now
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            logger.warning("job queue: the database is unavailable (%s: %s); reading again every %ss",
                           name, first_line, Conf.POLL)
        sleep(Conf.POLL)

    def claim(self) -> list[tuple[int, str]]:
        """Lease up to `bulk` visible jobs of this queue, oldest first; [(id, payload)]."""
        if self._idle:
            # The ORM broker's stale-connection cleanup (and Django's health check, one
            # SELECT 1), only when the connection may have sat unused: not between jobs.
            self.get_connection()
        connection = connections[Conf.ORM]
        table = self._table(connection)
        with prepared_cursor(connection) as cursor:
            cursor.execute(
                f"UPDATE {table} SET lock = %s WHERE id IN ("  # noqa: S608 (the table name is ours)
                f"SELECT id FROM {table} WHERE key = %s AND lock < %s ORDER BY id LIMIT %s "
                "FOR UPDATE SKIP LOCKED) RETURNING id, payload",
                [self.timeout(None), self.list_key, timezone.now(), Conf.BULK],
            )
            jobs = sorted(cursor.fetchall())
        self._idle = not jobs
        return jobs

    # ------------------------------------------------------------------ waiting

    def listener(self) -> psycopg.Connection | None:
        """This process's LISTENing connection, opened (again) if needed; None if it cannot be."""
        if self._listener_pid != os.getpid():
            # Forked: the parent's socket is not ours to use, nor to close.
            self._listener, self._listener_pid = None, os.getpid()
        if self._listener is not None and not self._listener.closed:
            return self._listener
        self._listener = None
        params = connections[Conf.ORM].get_connection_params()
        # A dead server or network shows up within a minute, not after the kernel's hours.
        for name, value in (("connect_timeout", 10), ("keepalives", 1), ("keepalives_idle", 30),
                            ("keepalives_interval", 10), ("keepalives_count", 3)):
            params.setdefault(name, value)
        try:
            listener = psycopg.connect(**params, autocommit=True)
            listener.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            logger.warning("job queue: cannot LISTEN (%s); polling every %ss", exc, Conf.POLL)
            return None
        self._listener = listener
        return listener

    def wait(self, listener: psycopg.Connection, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a job of this queue; True if one was announced.

        Drains what is already queued on the connection after the first match, so a burst
        of commits wakes the next wait once, not once per job. A broken connection is closed
        (the next `listener()` opens a new one) and the caller reads the queue at once.
        """
        deadline = monotonic() + timeout
        try:
            while (remaining := deadline - monotonic()) > 0:
                # Each generator is run to its end: a suspended one keeps the connection's lock.
                heard = [notify.payload for notify in listener.notifies(timeout=remaining, stop_after=1)]
                if self.list_key in heard:
                    list(listener.notifies(timeout=0))
                    return True
        except psycopg.Error as exc:
            logger.warning("job queue: LISTEN connection lost (%s); reopening", exc)
            self.close_listener()
        return False

    def close_listener(self) -> None:
        if self._listener is not None and self._listener_pid == os.getpid():
            self._listener.close()
        self._listener = None
