import pytest
from django.db import IntegrityError, transaction

from sessions import engine
from sessions.models import Session, Task, TaskAttempt
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
