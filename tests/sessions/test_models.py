import pytest
from django.db import IntegrityError, transaction

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


def test_terminal_states_are_named_once():
    assert Task.TERMINAL == {Task.Status.COMPLETED, Task.Status.DEAD, Task.Status.CANCELLED}
    assert Session.TERMINAL == {Session.Status.COMPLETED, Session.Status.FAILED, Session.Status.CANCELLED}
    session = Session(status=Session.Status.FAILED)
    assert session.is_terminal
