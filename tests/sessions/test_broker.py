"""The LISTEN/NOTIFY job broker on real PostgreSQL connections (committed data: transaction=True).

Each broker here reads its own queue name, so nothing else in the database can take its jobs.
A `Pusher` thread calls `dequeue()` in a loop as django-q2's pusher process does; `Conf.POLL`
is set to an hour where a test must prove that a notification, not the poll, woke it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.db import connection, connections, transaction
from django.db import OperationalError
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

from sessions.broker import ListenNotifyBroker

pytestmark = pytest.mark.django_db(transaction=True)

HANG_GUARD = 60  # seconds before a broken wake-up fails the test instead of hanging it
HOUR = 3600


class Rollback(Exception):
    pass


@pytest.fixture
def make_broker(monkeypatch):
    brokers: list[ListenNotifyBroker] = []
    key = f"test-broker-{uuid.uuid4().hex[:12]}"

    def make(*, poll: float = HOUR) -> ListenNotifyBroker:
        monkeypatch.setattr(Conf, "POLL", poll)
        broker = ListenNotifyBroker(list_key=key)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close_listener()
    OrmQ.objects.filter(key=key).delete()


def watch_waits(broker: ListenNotifyBroker) -> list[tuple[int, threading.Event]]:
    """Record each wait the broker starts: the listener's backend pid, and an event set when
    the wait ended with its outcome appended (True: notified)."""
    waits: list = []
    original = broker.wait

    def wait(listener, timeout):
        entry = {"pid": listener.info.backend_pid, "started": threading.Event(), "notified": None}
        waits.append(entry)
        entry["started"].set()
        entry["notified"] = original(listener, timeout)
        return entry["notified"]

    broker.wait = wait
    return waits


def wait_for(predicate, what: str):
    """Spin until predicate() is true (a hang guard, not a timing assertion)."""
    done = threading.Event()
    for _ in range(HANG_GUARD * 100):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"never happened: {what}")


class Pusher(threading.Thread):
    """Calls broker.dequeue() until it has `want` jobs (or, without `want`, until stopped)."""

    def __init__(self, broker: ListenNotifyBroker, want: int | None = None) -> None:
        super().__init__(daemon=True)
        self.broker, self.want = broker, want
        self.jobs: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set() and (self.want is None or len(self.jobs) < self.want):
                self.jobs.extend(self.broker.dequeue() or [])
        finally:
            connections.close_all()

    def finish(self) -> list[tuple[int, str]]:
        self.stop.set()
        self.join(HANG_GUARD)
        assert not self.is_alive(), "dequeue did not return"
        return self.jobs


def test_a_committed_job_wakes_a_waiting_dequeue_which_returns_it(make_broker):
    broker = make_broker(poll=HOUR)
    waits = watch_waits(broker)
    pusher = Pusher(broker, want=1)
    pusher.start()
    wait_for(lambda: waits and waits[0]["started"].is_set(), "dequeue waiting")

    job_id = broker.enqueue("the job")

    assert pusher.finish() == [(job_id, "the job")]
    assert waits[0]["notified"] is True


def test_enqueue_and_acknowledge_are_one_statement_each_and_touch_only_their_job(make_broker,
                                                                                django_assert_num_queries):
    broker = make_broker()
    with transaction.atomic():
        with django_assert_num_queries(1):
            job_id = broker.enqueue("mine")
        other = broker.enqueue("another")
    row = OrmQ.objects.get(pk=job_id)
    assert (row.key, row.payload) == (broker.list_key, "mine")
    assert row.lock <= timezone.now()  # visible at once, as django-q2's ORM broker writes it
    with django_assert_num_queries(1):
        broker.acknowledge(job_id)
    assert list(OrmQ.objects.filter(key=broker.list_key).values_list("pk", flat=True)) == [other]
    broker.fail(other)  # a failed job acknowledged (ack_failures) goes the same way
    assert not OrmQ.objects.filter(key=broker.list_key).exists()


def test_a_job_enqueued_in_a_transaction_that_rolls_back_is_never_announced_nor_delivered(make_broker):
    broker = make_broker(poll=HOUR)
    listener = broker.listener()

    with pytest.raises(Rollback), transaction.atomic():
        broker.enqueue("rolled back")
        raise Rollback
    assert broker.claim() == []
    committed = broker.enqueue("committed")

    # Notifications arrive in commit order: one from the rolled-back job would come first.
    heard = [n.payload for n in listener.notifies(timeout=HANG_GUARD, stop_after=1)]
    heard += [n.payload for n in listener.notifies(timeout=0)]
    assert heard == [broker.list_key]
    assert broker.claim() == [(committed, "committed")]
    assert broker.claim() == []


def test_the_job_is_visible_and_announced_only_at_commit_in_the_callers_transaction(make_broker):
    broker = make_broker(poll=HOUR)
    listener = broker.listener()
    other = connections.create_connection("default")  # another cluster's view
    try:
        with transaction.atomic():
            job_id = broker.enqueue("inside")
            assert list(listener.notifies(timeout=0)) == []
            with other.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM django_q_ormq WHERE id = %s", [job_id])
                assert cursor.fetchone() == (0,)
        assert [n.payload for n in listener.notifies(timeout=HANG_GUARD, stop_after=1)] == [broker.list_key]
    finally:
        other.close()
    assert broker.claim() == [(job_id, "inside")]


def test_a_job_committed_before_the_cluster_started_is_read_at_once(make_broker):
    job_id = make_broker().enqueue("sent to nobody")  # no listener anywhere: the notification is lost
    late = make_broker(poll=HOUR)
    waits = watch_waits(late)

    assert late.dequeue() == [(job_id, "sent to nobody")]
    assert waits == []


def test_a_job_that_becomes_visible_without_a_notification_is_picked_up_by_the_poll(make_broker):
    dead_cluster = make_broker()
    job_id = dead_cluster.enqueue("leased by a cluster that died")
    assert dead_cluster.claim() == [(job_id, "leased by a cluster that died")]
    broker = make_broker(poll=0.2)
    waits = watch_waits(broker)
    pusher = Pusher(broker, want=1)
    pusher.start()
    wait_for(lambda: waits and waits[0]["started"].is_set(), "dequeue waiting")

    # The lease runs out: an UPDATE, which notifies nobody.
    OrmQ.objects.filter(pk=job_id).update(lock=timezone.now() - timedelta(seconds=1))

    assert pusher.finish() == [(job_id, "leased by a cluster that died")]
    assert all(wait["notified"] is False for wait in waits)


def test_two_brokers_never_lease_one_job_twice(make_broker):
    first, second = make_broker(poll=0.1), make_broker(poll=0.1)
    pushers = [Pusher(first), Pusher(second)]
    waits = [watch_waits(first), watch_waits(second)]
    for pusher in pushers:
        pusher.start()
    wait_for(lambda: all(w and w[0]["started"].is_set() for w in waits), "both dequeues waiting")

    with transaction.atomic():  # one commit wakes both at once
        ids = [first.enqueue(f"job {i}") for i in range(200)]
    wait_for(lambda: sum(len(p.jobs) for p in pushers) >= len(ids), "every job leased")

    leased = [pusher.finish() for pusher in pushers]
    first_ids, second_ids = ({job_id for job_id, _ in jobs} for jobs in leased)
    assert first_ids.isdisjoint(second_ids)
    assert sorted(first_ids | second_ids) == ids
    assert len(leased[0]) + len(leased[1]) == len(ids)
    assert first_ids and second_ids  # both took part
    assert not OrmQ.objects.filter(pk__in=ids, lock__lt=timezone.now()).exists()


def test_a_killed_listener_connection_is_reopened_and_wakes_dequeue_again(make_broker):
    broker = make_broker(poll=HOUR)
    killed = broker.listener().info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [killed])
    waits = watch_waits(broker)
    pusher = Pusher(broker, want=1)
    pusher.start()
    wait_for(lambda: any(w["pid"] != killed and w["started"].is_set() for w in waits), "a new listener waiting")

    job_id = broker.enqueue("after the kill")

    assert pusher.finish() == [(job_id, "after the kill")]
    assert waits[0]["pid"] == killed and waits[0]["notified"] is False
    assert waits[-1]["notified"] is True
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [waits[-1]["pid"]])
        assert cursor.fetchone() == (1,)


def test_a_database_gone_under_the_read_is_one_log_line_then_the_queue_is_read_again(make_broker, caplog):
    broker = make_broker(poll=0.01)
    job_id = broker.enqueue("after the outage")
    with connection.cursor() as cursor:  # the broker's read runs on this thread's connection
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    broker._idle = False  # between jobs (a busy cluster): its connection is trusted without a check
    with caplog.at_level("WARNING", logger="sessions.broker"):
        assert broker.dequeue() is None  # the read failed: no exception out of the pusher's call
        broker.database_unavailable(OperationalError("still down"))  # a second failure within the interval
    lines = [r.getMessage() for r in caplog.records if "database is unavailable" in r.getMessage()]
    assert len(lines) == 1 and "reading again every" in lines[0]
    assert not any(r.exc_info for r in caplog.records)
    jobs = broker.dequeue() or broker.dequeue()  # reconnected
    assert jobs == [(job_id, "after the outage")]


def test_an_acknowledge_on_a_connection_the_database_dropped_reconnects_as_the_orm_brokers_did(make_broker):
    """The monitor acknowledges on its own connection, idle between jobs: after a database restart
    the acknowledge checks it first (django-q2's ORM broker's cleanup, Django's health check) and
    runs on a new connection instead of failing on the dead one."""
    broker = make_broker()
    job_id = broker.enqueue("acknowledged after a restart")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    broker.acknowledge(job_id)
    assert not OrmQ.objects.filter(pk=job_id).exists()


def test_the_monitors_acknowledges_skip_the_health_check_after_an_acknowledged_job(make_broker, monkeypatch):
    """django-q2's monitor sends post_execute after each acknowledge: the next acknowledge within
    FRESH_SECONDS trusts the connection (no `SELECT 1`); one after an idle spell checks it again."""
    from django_q.signals import post_execute

    from opscore_site.postgresql import base

    broker = make_broker()
    jobs = [broker.enqueue(f"job {i}") for i in range(4)]
    checks = []
    usable = connection.is_usable
    monkeypatch.setattr(connection, "is_usable", lambda: checks.append(1) or usable())

    def monitor_acknowledges(job_id):  # django_q.monitor.monitor, for one finished job
        broker.acknowledge(job_id)
        post_execute.send(sender="django_q", task={"ack_id": job_id})

    monitor_acknowledges(jobs[0])
    assert len(checks) == 1  # the first: nothing vouches for the connection yet
    monitor_acknowledges(jobs[1])
    monitor_acknowledges(jobs[2])
    assert len(checks) == 1
    connection.good_at -= base.FRESH_SECONDS  # an idle spell
    monitor_acknowledges(jobs[3])
    assert len(checks) == 2
    assert not OrmQ.objects.filter(pk__in=jobs).exists()


def test_postgresql_uses_this_broker_and_sqlite_keeps_the_orm_broker(tmp_path):
    assert type(get_broker()) is ListenNotifyBroker
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "opscore_site.settings_test",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}"}
    code = "from django_q.brokers import get_broker; b = get_broker(); print(type(b).__module__, type(b).__name__)"
    result = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=Path(__file__).parents[2],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ORM.__module__, ORM.__name__]
