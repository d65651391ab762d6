"""opscore_site.statements: a read compiled once gives what its queryset gives, for every value."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from agents.models import Agent
from opscore_site.statements import Statement
from sessions.models import Task, TaskEvent
from tests.agents.factories import AgentFactory
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.sql import sql_of

pytestmark = pytest.mark.django_db


def _locked(task_id, since):
    """The shape of the dispatch claim: three tables, an annotation, a locking clause, one row."""
    return (Task.objects.select_related("agent", "session")
            .select_for_update(no_key=True, of=("agent", "self", "session"))
            .annotate(recent=Exists(Task.objects.filter(agent_id=OuterRef("agent_id"), created_at__gte=since)),
                      next_sequence=F("sequence") + 1)
            .filter(pk=task_id, status=Task.Status.QUEUED).order_by("pk")[:1])


def _same_task(got: Task, want: Task) -> None:
    fields = [f.attname for f in Task._meta.concrete_fields]
    assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
    assert got.agent.__dict__.keys() == want.agent.__dict__.keys()
    assert [getattr(got.agent, f.attname) for f in Agent._meta.concrete_fields] == [
        getattr(want.agent, f.attname) for f in Agent._meta.concrete_fields]
    assert got.session.pk == want.session.pk and got.session.status == want.session.status
    assert (got.recent, got.next_sequence) == (want.recent, want.next_sequence)


def test_a_statement_gives_what_its_queryset_gives_for_each_value(django_assert_num_queries):
    statement = Statement(_locked)
    tasks = [TaskFactory(), TaskFactory(), TaskFactory(status=Task.Status.COMPLETED)]
    now = timezone.now()
    with transaction.atomic():
        for task in tasks:
            for since in (now - timedelta(hours=1), now + timedelta(hours=1)):
                want = _locked(task.pk, since).first()
                with django_assert_num_queries(1) as captured:
                    got = statement.first(task_id=task.pk, since=since)
                assert sql_of(captured.captured_queries[0]).endswith(
                    'FOR NO KEY UPDATE OF "agents_agent", "opscore_sessions_task", "opscore_sessions_session"')
                if want is None:
                    assert got is None  # the completed task
                else:
                    _same_task(got, want)
                    assert got.recent is (since < now)
    assert statement.first(task_id=tasks[0].pk, since=now - timedelta(hours=1)).agent.state == Agent.State.IDLE


def test_values_list_rows_come_back_as_the_queryset_gives_them():
    def build(agent_id):
        return Agent.objects.filter(pk=agent_id).annotate(
            busy=Exists(Task.objects.filter(agent_id=agent_id, status__in=Task.IN_FLIGHT))).values_list("pk", "busy")

    statement = Statement(build)
    idle, busy = AgentFactory(), AgentFactory()
    TaskFactory(agent=busy, session__agent=busy, status=Task.Status.DISPATCHED)
    for agent in (idle, busy, idle):
        assert statement.rows(agent_id=agent.pk) == list(build(agent.pk))
    assert statement.rows(agent_id="nobody") == []
    assert statement.rows(agent_id=busy.pk) == [(busy.pk, True)]


def test_the_queryset_is_built_and_compiled_once():
    built = []

    def build(agent_id):
        built.append(agent_id)
        return Agent.objects.filter(pk=agent_id).values_list("name", flat=True)

    statement = Statement(build)
    agents = AgentFactory.create_batch(3)
    assert [statement.first(agent_id=a.pk) for a in agents] == [a.name for a in agents]
    assert len(built) == 2 and not set(built) & {a.pk for a in agents}  # by the first call, with sentinels


def test_a_value_transformed_on_its_way_to_sql_is_refused_on_the_first_call():
    contains = Statement(lambda name: Agent.objects.filter(name__contains=name))  # becomes '%name%'
    with pytest.raises(ImproperlyConfigured, match=r"\['name'\]"):
        contains.rows(name="Agent")
    computed = Statement(lambda since: Agent.objects.filter(state_received_at__gte=since - timedelta(seconds=5)))
    with pytest.raises(ImproperlyConfigured, match=r"\['since'\]"):
        computed.rows(since=timezone.now())
    inlined = Statement(lambda count: Agent.objects.order_by("pk")[:count])  # LIMIT is written into the SQL
    with pytest.raises(ImproperlyConfigured, match="SQL depends on the values"):
        inlined.rows(count=3)


def test_none_is_refused_because_it_would_compile_to_is_null():
    statement = Statement(lambda since: Agent.objects.filter(state_received_at__gte=since))
    with pytest.raises(ValueError, match="'since' is None"):
        statement.rows(since=None)


def test_off_postgresql_every_call_runs_the_queryset_itself(monkeypatch):
    built = []

    def build(agent_id):
        built.append(agent_id)
        return Agent.objects.filter(pk=agent_id).values_list("pk", flat=True)

    statement = Statement(build)
    agent = AgentFactory()
    monkeypatch.setattr(connection, "vendor", "sqlite")
    assert statement.rows(agent_id=agent.pk) == [agent.pk]
    assert statement.rows(agent_id=agent.pk) == [agent.pk]
    assert built == [agent.pk, agent.pk]


@pytest.mark.django_db(transaction=True)  # not inside the test's own transaction
def test_a_locking_statement_outside_a_transaction_is_refused_as_django_refuses_it():
    statement = Statement(lambda agent_id: Agent.objects.filter(pk=agent_id).select_for_update())
    agent = AgentFactory()
    with transaction.atomic():
        assert [a.pk for a in statement.rows(agent_id=agent.pk)] == [agent.pk]  # compiled in a transaction
    with pytest.raises(transaction.TransactionManagementError, match="outside of a transaction"):
        statement.rows(agent_id=agent.pk)


def test_the_statement_is_prepared_once_per_connection_and_takes_each_values_types():
    def build(agent_id, since, task_id):
        return Task.objects.filter(agent_id=agent_id, created_at__gte=since, pk=task_id).values_list("pk", flat=True)

    statement = Statement(build)
    task = TaskFactory()
    since = task.created_at - timedelta(seconds=1)
    for _ in range(3):
        assert statement.rows(agent_id=task.agent_id, since=since, task_id=task.pk) == [task.pk]
    assert statement.rows(agent_id=task.agent_id, since=task.created_at + timedelta(seconds=1), task_id=task.pk) == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                       ['%"opscore_sessions_task"."created_at" >= $%'])
        assert cursor.fetchone()[0] == 1


def test_an_integer_value_goes_wrapped_as_django_wraps_it():
    def build(task_id, number):
        return Task.objects.filter(pk=task_id, attempt__gte=number).values_list("attempt", flat=True)

    statement = Statement(build)
    task = TaskFactory(attempt=3)
    assert [statement.rows(task_id=task.pk, number=n) for n in (2, 3, 4)] == [[3], [3], []]
    # Past the field's range Django compiles the lookup to "nothing matches": the queryset runs itself.
    assert statement.rows(task_id=task.pk, number=2**40) == list(build(task.pk, 2**40)) == []
    assert statement.rows(task_id=task.pk, number=-(2**40)) == list(build(task.pk, -(2**40))) == [3]


def test_an_update_changes_what_queryset_update_changes(django_assert_num_queries):
    from opscore_site.statements import Update

    move = Update(lambda pk, old: Task.objects.filter(pk=pk, status=old))
    tasks = TaskFactory.create_batch(3)
    now = timezone.now()
    with django_assert_num_queries(1):  # the first call compiles, and sends only the UPDATE
        changed = move.run(where={"pk": tasks[0].pk, "old": "queued"},
                           changes={"status": "dispatched", "updated_at": now, "result": {"a": [1]}, "timeout_at": None})
    assert changed == 1
    assert move.run(where={"pk": tasks[0].pk, "old": "queued"},
                    changes={"status": "dispatched", "updated_at": now, "result": {}, "timeout_at": None}) == 0
    assert move.run(where={"pk": tasks[1].pk, "old": "queued"},
                    changes={"status": "running", "updated_at": now, "result": None, "timeout_at": now}) == 1
    first, second, third = (Task.objects.get(pk=t.pk) for t in tasks)
    assert (first.status, first.result, first.timeout_at, first.updated_at) == ("dispatched", {"a": [1]}, None, now)
    assert (second.status, second.result, second.timeout_at) == ("running", None, now)
    assert third.status == "queued"
    # Another set of fields is another shape; an expression goes through update() itself.
    assert move.run(where={"pk": tasks[2].pk, "old": "queued"}, changes={"attempt": F("attempt") + 2}) == 1
    assert move.run(where={"pk": tasks[2].pk, "old": "queued"}, changes={"step_id": "other"}) == 1
    third.refresh_from_db()
    assert (third.attempt, third.step_id) == (2, "other")


def test_an_update_refuses_none_in_its_where_and_a_transformed_value():
    from opscore_site.statements import Update

    with pytest.raises(ValueError, match="'old' is None"):
        Update(lambda pk, old: Task.objects.filter(pk=pk, status=old)).run(
            where={"pk": TaskFactory().pk, "old": None}, changes={"status": "queued"})
    with pytest.raises(ImproperlyConfigured, match=r"\['name'\]"):
        Update(lambda name: Agent.objects.filter(name__startswith=name)).run(where={"name": "A"},
                                                                            changes={"version": "2"})


def _columns(obj) -> list:
    return [getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields]


def _events(session, n: int, **extra) -> list:
    extra.setdefault("created_at", timezone.now())
    return [TaskEvent(session=session, task=None, old_status="", new_status=f"s{i}", actor="system",
                      reason=f"event {i}", attempt=i or None, **extra) for i in range(n)]


def test_an_insert_stores_what_save_stores_and_sets_the_returned_key(django_assert_num_queries):
    from opscore_site.statements import Insert

    insert = Insert(TaskEvent)
    session = SessionFactory()
    for n in (1, 3, 1, 3):  # a single row (VALUES) and several (Django's UNNEST), each compiled once
        at = timezone.now()
        mine, theirs = _events(session, n, created_at=at), _events(session, n, created_at=at)
        with django_assert_num_queries(1) as captured:
            insert.save(*mine)
        [query] = captured.captured_queries
        assert query["sql"].startswith("QUERY = ")  # the prepared cursor's
        assert sql_of(query).startswith('INSERT INTO "opscore_sessions_taskevent"')
        for event in theirs:
            event.save(force_insert=True)
        for got, want in zip(mine, theirs):
            assert got.pk is not None and not got._state.adding and got._state.db == "default"
            stored, expected = TaskEvent.objects.get(pk=got.pk), TaskEvent.objects.get(pk=want.pk)
            assert _columns(stored)[1:] == _columns(expected)[1:] == _columns(got)[1:]
    assert len({e.pk for e in TaskEvent.objects.all()}) == TaskEvent.objects.count() == 16


def test_an_insert_of_a_model_with_its_own_key_takes_json_and_none_as_save_does():
    from opscore_site.statements import Insert

    insert = Insert(Task)
    session = SessionFactory()
    tasks = [Task(session=session, agent=session.agent, step_id="a", name="A", sequence=1,
                  payload={"x": [1, "two", None]}, result=None),
             Task(session=session, agent=session.agent, step_id="b", name="B", sequence=2, payload={}, result=[])]
    pks = [t.pk for t in tasks]
    insert.save(*tasks)
    stored = [Task.objects.get(pk=pk) for pk in pks]
    assert [t.pk for t in tasks] == pks  # the key was the instance's own
    assert [(t.payload, t.result) for t in stored] == [({"x": [1, "two", None]}, None), ({}, [])]
    assert [_columns(s) for s in stored] == [_columns(t) for t in tasks]


def test_an_expression_or_a_receiver_sends_each_row_through_save():
    from django.db.models import signals
    from django.db.models.functions import Now

    from opscore_site.statements import Insert

    insert = Insert(TaskEvent)
    session = SessionFactory()
    [event] = _events(session, 1, created_at=Now())
    insert.save(event)
    assert TaskEvent.objects.get(pk=event.pk).created_at is not None
    seen = []

    def receiver(sender, instance, created, **_):
        seen.append((instance.new_status, created))

    signals.post_save.connect(receiver, sender=TaskEvent)
    try:
        insert.save(*_events(session, 2))
    finally:
        signals.post_save.disconnect(receiver, sender=TaskEvent)
    assert seen == [("s0", True), ("s1", True)]


def test_an_insert_refuses_what_save_refuses_and_what_it_cannot_compile():
    from opscore_site.statements import Insert

    with pytest.raises(ValueError, match="unsaved related object 'actor_user'"):
        Insert(TaskEvent).save(*_events(SessionFactory(), 1, actor_user=get_user_model()(username="new")))
    with pytest.raises(ImproperlyConfigured, match="database defaults"):
        Insert(Agent)  # quarantine_state has a db_default


def test_off_postgresql_an_insert_is_save_itself(monkeypatch, django_assert_num_queries):
    from opscore_site.statements import Insert

    session = SessionFactory()
    monkeypatch.setattr(connection, "vendor", "sqlite")
    events = _events(session, 2)
    with django_assert_num_queries(2):  # one save() each
        Insert(TaskEvent).save(*events)
    monkeypatch.undo()
    assert sorted(TaskEvent.objects.filter(pk__in=[e.pk for e in events]).values_list("new_status", flat=True)) == [
        "s0", "s1"]
