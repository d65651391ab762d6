import pytest
from django.db import IntegrityError, connection, transaction

from sessions import engine
from sessions.models import QuarantineEvent, Session, Task, TaskAttempt, TaskEvent
from tests.agents.factories import AgentFactory
from tests.sessions.factories import SessionFactory, TaskFactory
from django.utils import timezone


def test_an_agent_cannot_have_two_tasks_in_flight(db):
    agent = AgentFactory()
    TaskFactory(session=SessionFactory(agent=agent), status=Task.Status.DISPATCHED)
    with pytest.raises(IntegrityError, match="task_one_in_flight_per_agent"), transaction.atomic():
        TaskFactory(session=SessionFactory(agent=agent), status=Task.Status.RUNNING)
    assert Task.objects.filter(agent=agent, status__in=Task.IN_FLIGHT).count() == 1


def test_queued_and_finished_tasks_do_not_count_as_in_flight(db):
    agent = AgentFactory()
    TaskFactory(session=SessionFactory(agent=agent), status=Task.Status.RUNNING)
    for status in (Task.Status.QUEUED, Task.Status.COMPLETED, Task.Status.DEAD, Task.Status.RETRY_SCHEDULED):
        TaskFactory(session=SessionFactory(agent=agent), status=status)
    assert Task.objects.filter(agent=agent).count() == 5


def test_other_agents_may_each_have_one_in_flight(db):
    for _ in range(3):
        TaskFactory(status=Task.Status.DISPATCHED)
    assert Task.objects.filter(status=Task.Status.DISPATCHED).count() == 3


def test_an_attempt_number_is_fenced_once(db):
    task = TaskFactory()
    TaskAttempt.objects.create(task=task, number=1, reference_at=timezone.now())
    with pytest.raises(IntegrityError, match="taskattempt_task_number_unique"), transaction.atomic():
        TaskAttempt.objects.create(task=task, number=1, reference_at=timezone.now())


def test_an_idempotency_key_names_one_session(db):
    SessionFactory(idempotency_key="k-1")
    SessionFactory(idempotency_key=None)
    SessionFactory(idempotency_key=None)
    with pytest.raises(IntegrityError, match="session_idempotency_key_unique"), transaction.atomic():
        SessionFactory(idempotency_key="k-1")


@pytest.mark.parametrize("model, allowed", [(Task, engine.TASK_ALLOWED), (Session, engine.SESSION_ALLOWED)])
def test_exactly_the_terminal_statuses_cannot_be_cancelled(model, allowed):
    """`is_terminal` (the pages, the API's filters, the cancel guards) agrees with the engine's moves."""
    for status in model.Status:
        assert (model.Status.CANCELLED in allowed.get(status, set())) == (not model(status=status).is_terminal), status


@pytest.mark.parametrize("model, field, allowed", [
    (Task, "status", engine.TASK_ALLOWED),
    (Session, "status", engine.SESSION_ALLOWED),
    (TaskAttempt, "outcome", engine.ATTEMPT_ALLOWED),
])
def test_every_value_but_the_initial_one_is_reached_by_an_allowed_move(model, field, allowed):
    """A new status (or outcome) needs its moves in the engine's map, and the map names only real ones."""
    choices = {value for value, _ in model._meta.get_field(field).choices}
    reached = set().union(*allowed.values())
    assert set(allowed) | reached <= choices
    assert choices - reached <= {model._meta.get_field(field).default}  # the initial one may be re-entered (resume)


def test_the_failures_queue_is_the_engines_retry_rule(db):
    """`awaiting_decision()` holds exactly the tasks `retry_refusal` lets an operator retry."""
    S, SS = Task.Status, Session.Status
    tasks = []
    for session_status in SS:
        for status in (S.DEAD, S.FAILED, S.COMPLETED, S.RETRY_SCHEDULED):
            for with_fallback in (False, True):
                task = TaskFactory(session=SessionFactory(status=session_status), status=status)
                if with_fallback:
                    TaskFactory(session=task.session, fallback_for=task)
                tasks.append(task)
    retryable = {task.pk for task in tasks if task.retry_refusal(task.session) is None}
    assert retryable == set(Task.objects.awaiting_decision().values_list("pk", flat=True))
    assert len(retryable) == 2 * 4  # dead or failed, without a fallback, in a pending/running/paused/failed session


ENGINE_TABLES = [Session, Task, TaskAttempt, TaskEvent, QuarantineEvent]


def _indexes(model):
    """{name: (columns, unique, partial)} of the model's table as the database has them."""
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, model._meta.db_table)
    partial = set()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%WHERE%%'",
                           [model._meta.db_table])
            partial = {name for (name,) in cursor.fetchall()}
    return {name: (tuple(info["columns"]), info["unique"], name in partial)
            for name, info in found.items() if info["index"] or info["unique"]}


@pytest.mark.parametrize("model", ENGINE_TABLES, ids=lambda model: model.__name__)
def test_every_foreign_key_is_served_by_an_index_led_by_its_column(db, model):
    indexes = _indexes(model)
    leading = {columns[0] for columns, _unique, partial in indexes.values() if columns and not partial}
    for field in model._meta.concrete_fields:
        if field.is_relation:
            assert field.column in leading, f"{model.__name__}.{field.name}: no index starts with {field.column}"


@pytest.mark.parametrize("model", ENGINE_TABLES, ids=lambda model: model.__name__)
def test_no_plain_index_is_a_prefix_of_another(db, model):
    """Each index is written at every insert (and every update that is not HOT): one that another
    index's leading columns already serve costs writes and serves nothing."""
    indexes = _indexes(model)
    for name, (columns, unique, partial) in indexes.items():
        if unique or partial:
            continue
        for other, (other_columns, _u, other_partial) in indexes.items():
            if other != name and not other_partial and len(other_columns) > len(columns) \
                    and other_columns[:len(columns)] == columns:
                pytest.fail(f"{model.__name__}: index {name} {columns} is covered by {other} {other_columns}")


def test_the_one_in_flight_index_survives_the_migrations(db):
    assert "task_one_in_flight_per_agent" in _indexes(Task)
