"""The session engine (sessions/engine.py, dispatch.py, sweeps.py) through its public functions,
with AgentKit stubbed at the HTTP seam."""

from __future__ import annotations

import itertools
from datetime import timedelta

import httpx
import pytest
from django.db import transaction
from django.utils import timezone
from django_q.models import OrmQ

from agents.models import Agent
from agents.services import agent_state_record
from sessions import dispatch, engine, sweeps
from sessions.engine import By, InvalidTransition
from sessions.models import Actor, Session, Task, TaskAttempt, TaskEvent
from tests.agents.factories import AgentFactory
from tests.workflows.factories import WorkflowDefinitionFactory, two_step_spec
from tests.sql import sql_of, unprepared

pytestmark = pytest.mark.django_db

S = Task.Status
SS = Session.Status


def report(agent_id: str, state: str, details=None, *, when=None):
    """An agent's state report, through the agents service the API uses."""
    now = when or timezone.now()
    return agent_state_record(agent_id=agent_id, state=state, details=details, timestamp=now, received_at=now)


def start(agent=None, spec=None, payload=None, **kwargs) -> Session:
    agent = agent or AgentFactory()
    definition = WorkflowDefinitionFactory(**({"id": spec["id"], "spec": spec} if spec else {}))
    return engine.session_start(definition=definition, agent=agent, initial_payload=payload, by=By.system(), **kwargs)


def task_of(session: Session, sequence: int = 1) -> Task:
    return Task.objects.get(session=session, sequence=sequence)


def spec_with(**step1) -> dict:
    return two_step_spec(f"wf-{abs(hash(tuple(sorted(step1.items())))) % 10**8}", **step1)


# --------------------------------------------------------------------------- start and dispatch


def test_start_queues_the_first_task_and_dispatches_it_to_an_idle_agent(q_sync, agentkit_stub):
    session = start(payload={"x": 1, "a": 9})
    session.refresh_from_db()
    task = task_of(session)
    assert session.status == SS.RUNNING and session.spec_snapshot["tasks"][0]["taskId"] == "step_1"
    assert task.status == S.DISPATCHED and task.attempt == 1
    # Step parameters merged with the initial payload; the payload wins.
    assert task.payload == {"a": 9, "x": 1}
    body = agentkit_stub.bodies[0]
    assert agentkit_stub.requests[0].url.path == f"/v1/agents/{session.agent_id}/run"
    assert body["senderId"] == "opscore" and body["messageType"] == "workflow_task"
    assert body["payload"] == {"task_name": "step_1", "task_parameters": {"a": 9, "x": 1},
                               "opscore_session_id": str(session.pk), "opscore_task_id": str(task.pk), "attempt": 1}
    assert body["sessionContext"] == {"sessionId": str(session.pk)}
    assert body["opscore_task_id"] == str(task.pk) and body["task_name"] == "step_1"
    attempt = task.attempts.get()
    assert attempt.outcome == TaskAttempt.Outcome.ACCEPTED and attempt.http_status == 202
    assert list(TaskEvent.objects.filter(task=task).values_list("old_status", "new_status")) == [
        ("pending", "queued"), ("queued", "dispatched")]


@pytest.mark.parametrize("api_key", ["", "ak-secret"])
def test_the_dispatch_request_is_agentkit_section_3_exactly(q_sync, agentkit_stub, settings, api_key):
    settings.AGENTKIT_API_KEY = api_key
    session = start(payload={"x": 1})
    task = task_of(session)
    request = agentkit_stub.requests[0]
    assert (request.method, str(request.url)) == ("POST", f"http://agentkit.test/v1/agents/{session.agent_id}/run")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers.get("Authorization") == (f"Bearer {api_key}" if api_key else None)
    ids = {"opscore_session_id": str(session.pk), "opscore_task_id": str(task.pk)}
    assert agentkit_stub.bodies[0] == {
        "senderId": "opscore", "messageType": "workflow_task",
        "payload": {"task_name": "step_1", "task_parameters": {"a": 1, "x": 1}, **ids, "attempt": 1},
        "sessionContext": {"sessionId": str(session.pk)}, "task_name": "step_1", **ids,
    }


def test_a_busy_agent_keeps_the_task_queued_until_it_reports_idle(q_sync, agentkit_stub):
    agent = AgentFactory(state=Agent.State.ACTIVE)
    session = start(agent=agent)
    task = task_of(session)
    assert task.status == S.QUEUED and not agentkit_stub.requests
    report(agent.id, "idle")
    task.refresh_from_db()
    assert task.status == S.DISPATCHED and len(agentkit_stub.requests) == 1


def test_a_drained_or_deregistered_agent_gets_nothing(q_sync, agentkit_stub):
    drained = AgentFactory(drained_at=timezone.now())
    session = start(agent=drained)
    assert task_of(session).status == S.QUEUED and not agentkit_stub.requests
    gone = AgentFactory()
    definition = WorkflowDefinitionFactory()
    Agent.objects.filter(pk=gone.pk).update(deregistered_at=timezone.now())
    gone.refresh_from_db()
    with pytest.raises(engine.AgentUnavailable):
        engine.session_start(definition=definition, agent=gone, by=By.system())


def test_a_second_session_for_the_same_agent_waits_for_the_first(q_sync, agentkit_stub):
    agent = AgentFactory()
    first, second = start(agent=agent), start(agent=agent)
    assert task_of(first).status == S.DISPATCHED
    assert task_of(second).status == S.QUEUED
    assert Task.objects.filter(agent=agent, status__in=Task.IN_FLIGHT).count() == 1


def test_a_duplicate_delivery_of_the_job_does_not_post_twice(q_sync, agentkit_stub):
    session = start()
    task = task_of(session)
    assert dispatch.task_dispatch(task_id=task.pk).outcome == "skipped"
    assert len(agentkit_stub.requests) == 1 and task.attempts.count() == 1


def test_a_job_for_a_task_that_no_longer_exists_does_nothing(q_sync, agentkit_stub):
    import uuid

    assert dispatch.task_dispatch(task_id=uuid.uuid4()).outcome == "skipped"
    assert not agentkit_stub.requests


def test_a_pending_session_whose_definition_was_deleted_is_dispatched(agentkit_stub):
    session = start()
    session.definition.delete()  # the session keeps its snapshot; its definition_id becomes NULL
    session.refresh_from_db()
    assert session.definition_id is None and session.status == SS.PENDING
    assert dispatch.task_dispatch(task_id=task_of(session).pk).outcome == "dispatched"
    session.refresh_from_db()
    assert session.status == SS.RUNNING


def test_a_job_takes_its_task_id_as_text_and_a_malformed_one_is_skipped_with_the_reason(q_sync, agentkit_stub):
    session = start()
    second = dispatch.task_dispatch(task_id="not-a-uuid")
    assert (second.outcome, second.detail) == ("skipped", "no such queued task: 'not-a-uuid' is not a task id")
    report(session.agent_id, "idle")  # step 2 queued; the job (synchronous here) took its id as text
    assert task_of(session, 2).status == S.DISPATCHED
    assert [body["opscore_task_id"] for body in agentkit_stub.bodies] == [
        str(task_of(session).pk), str(task_of(session, 2).pk)]


@pytest.mark.django_db(transaction=True)
def test_the_attempt_is_fenced_and_committed_before_the_post(agentkit_stub):
    """While AgentKit is being called, the attempt row and `dispatched` are already visible."""
    agent = AgentFactory()
    definition = WorkflowDefinitionFactory()
    session = engine.session_start(definition=definition, agent=agent, by=By.system())
    task = task_of(session)
    seen = {}

    def answer(request: httpx.Request) -> httpx.Response:
        row = Task.objects.get(pk=task.pk)
        seen["status"], seen["attempts"] = row.status, list(row.attempts.values_list("number", "outcome"))
        seen["in_atomic"] = transaction.get_connection().in_atomic_block
        return AgentKitStubAccept(request)

    from tests.sessions.conftest import AgentKitStub

    AgentKitStubAccept = AgentKitStub.accept
    agentkit_stub.answer = answer
    dispatch.task_dispatch(task_id=task.pk)
    assert seen["status"] == S.DISPATCHED and seen["attempts"] == [(1, "sending")]
    # No transaction is open during the POST: the fence was committed before it.
    assert seen["in_atomic"] is False


def test_a_dispatch_is_pinned_to_its_statements(agentkit_stub, django_assert_num_queries):
    """Begin; the agent, the task and the session locked in one statement; the paused definition
    (a pending session only); one read for in-flight work, the fleet switch and a cancelled task;
    the attempt, the task, the session, their events in one insert; commit; after the POST,
    AgentKit's answer on the attempt."""
    session = start()
    task = task_of(session)
    with django_assert_num_queries(10) as captured:  # in the test's transaction, begin and commit are a savepoint pair
        assert dispatch.task_dispatch(task_id=task.pk).outcome == "dispatched"
    lock = sql_of(captured.captured_queries[1])
    assert lock.endswith('FOR NO KEY UPDATE OF "agents_agent", "opscore_sessions_task", "opscore_sessions_session"')
    assert unprepared(captured.captured_queries) == []  # every read, UPDATE and INSERT compiled once
    report(session.agent_id, "idle")  # completes step 1, queues step 2 (its job waits in the queue)
    second = task_of(session, 2)
    with django_assert_num_queries(8):  # a running session: no definition read, no session update
        assert dispatch.task_dispatch(task_id=second.pk).outcome == "dispatched"


# --------------------------------------------------------------------------- AgentKit's answers


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_a_transient_answer_fails_the_attempt_and_schedules_a_retry(q_sync, agentkit_stub, status):
    agentkit_stub.respond(status)
    task = task_of(start())
    assert task.status == S.RETRY_SCHEDULED and task.attempt == 1
    assert task.next_attempt_at > timezone.now() and str(status) in task.last_error
    attempt = task.attempts.get()
    assert attempt.outcome == TaskAttempt.Outcome.FAILED and attempt.http_status == status


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow")])
def test_connection_errors_and_timeouts_are_transient(q_sync, agentkit_stub, exc):
    agentkit_stub.raise_(exc)
    task = task_of(start())
    assert task.status == S.RETRY_SCHEDULED
    assert task.attempts.get().outcome == TaskAttempt.Outcome.FAILED


@pytest.mark.parametrize("status", [404, 422, 400, 403])
def test_a_permanent_answer_kills_the_task_without_retry(q_sync, agentkit_stub, status):
    agentkit_stub.respond(status, {"detail": "Agent with ID 'x' not found."})
    session = start()
    task = task_of(session)
    session.refresh_from_db()
    assert task.status == S.DEAD and task.attempt == 1
    assert task.attempts.get().outcome == TaskAttempt.Outcome.REJECTED
    assert session.status == SS.FAILED and "step_1" in session.error
    assert len(agentkit_stub.requests) == 1


def test_a_scheduled_retry_is_dispatched_when_due(q_sync, agentkit_stub):
    agentkit_stub.respond(503)
    task = task_of(start())
    agentkit_stub.answer = agentkit_stub.accept
    assert sweeps.sweep_due_retries(now=timezone.now()) == 0  # not due yet
    assert sweeps.sweep_due_retries(now=task.next_attempt_at + timedelta(seconds=1)) == 1
    task.refresh_from_db()
    assert task.status == S.DISPATCHED and task.attempt == 2
    assert list(task.attempts.values_list("number", "outcome")) == [(1, "failed"), (2, "accepted")]


def test_backoff_grows_exponentially_with_jitter(q_sync, agentkit_stub):
    agentkit_stub.respond(503)
    spec = spec_with(retryBackoffSeconds=10, maxRetries=5)
    task = task_of(start(spec=spec))
    delays = []
    for _ in range(3):
        delay = (task.next_attempt_at - task.updated_at).total_seconds()
        delays.append(delay)
        sweeps.sweep_due_retries(now=task.next_attempt_at + timedelta(seconds=1))
        task.refresh_from_db()
    assert 5 <= delays[0] <= 15 and 10 <= delays[1] <= 30 and 20 <= delays[2] <= 60


# --------------------------------------------------------------------------- reports drive the task


def test_active_then_idle_completes_the_step_and_queues_the_next(q_sync, agentkit_stub):
    session = start()
    first = task_of(session)
    report(session.agent_id, "active")
    first.refresh_from_db()
    assert first.status == S.RUNNING and first.started_at is not None
    report(session.agent_id, "idle", {"result": {"answer": 42}})
    first.refresh_from_db()
    second = task_of(session, 2)
    assert first.status == S.COMPLETED and first.result == {"answer": 42}
    assert first.attempts.get().outcome == TaskAttempt.Outcome.COMPLETED
    # The next step gets its parameters plus the previous step's result, and goes out at once.
    assert second.step_id == "step_2" and second.payload == {"b": 2, "previous_result": {"answer": 42}}
    assert second.status == S.DISPATCHED
    report(session.agent_id, "idle")
    session.refresh_from_db()
    assert session.status == SS.COMPLETED and session.ended_at is not None
    events = TaskEvent.objects.filter(task=first, new_status=S.COMPLETED).get()
    assert events.actor == Actor.AGENT and events.actor_agent_id == session.agent_id


def queued_jobs_for(task: Task) -> int:
    """Dispatch jobs waiting in django-q2's ORM broker for `task`."""
    from django_q.models import OrmQ

    return sum(1 for job in OrmQ.objects.all() if job.task["args"] == (str(task.pk),))


def test_a_completing_idle_enqueues_exactly_one_job_for_the_next_step(q_sync, agentkit_stub):
    session = start()
    q_sync.SYNC = False  # jobs stay in the broker, where they can be counted
    report(session.agent_id, "idle")
    second = task_of(session, 2)
    assert second.status == S.QUEUED and queued_jobs_for(second) == 1


def test_an_idle_report_from_a_drained_agent_enqueues_no_job(q_sync, agentkit_stub):
    from agents.services import agent_drain

    agent = AgentFactory()
    agent_drain(agent=agent, reason="maintenance")
    session = start(agent)
    task = task_of(session)
    assert task.status == S.QUEUED  # its first job found the agent drained
    q_sync.SYNC = False
    report(agent.pk, "idle")
    report(agent.pk, "idle", when=timezone.now() + timedelta(seconds=1))
    assert queued_jobs_for(task) == 0


def test_idle_without_active_completes_the_task(q_sync, agentkit_stub):
    session = start()
    report(session.agent_id, "idle")
    assert task_of(session).status == S.COMPLETED


def test_an_error_report_fails_the_attempt_and_schedules_a_retry(q_sync, agentkit_stub):
    session = start()
    report(session.agent_id, "active")
    report(session.agent_id, "error", {"error_code": "BOOM", "message": "disk full"})
    task = task_of(session)
    assert task.status == S.RETRY_SCHEDULED
    assert task.last_error == "agent reported error: BOOM: disk full"
    # The agent's idle after its error is not the outcome of anything.
    report(session.agent_id, "idle")
    task.refresh_from_db()
    assert task.status == S.RETRY_SCHEDULED


def test_a_report_received_before_the_attempt_does_not_count(q_sync, agentkit_stub):
    session = start()
    task = task_of(session)
    engine.on_agent_state(agent_id=session.agent_id, state="idle", details={},
                          received_at=task.reference_at - timedelta(milliseconds=1))
    task.refresh_from_db()
    assert task.status == S.DISPATCHED


def _stamped(agent_id: str, state: str, *, stamped, details=None):
    """A report the agent stamped at `stamped` (its own clock), received now."""
    return agent_state_record(agent_id=agent_id, state=state, details=details, timestamp=stamped,
                              received_at=timezone.now())


def test_an_idle_stamped_before_the_attempt_went_out_does_not_complete_it(q_sync, agentkit_stub):
    """AgentKit restarting re-registers its agents, and each sends an `idle` as it registers. One
    that reaches us after a dispatch to that agent was fenced is not the task's end: completing it
    would send the agent its next task while it still works on this one."""
    session = start()
    task = task_of(session)
    _stamped(session.agent_id, "idle", stamped=task.reference_at - timedelta(milliseconds=5))
    task.refresh_from_db()
    assert task.status == S.DISPATCHED
    assert len(agentkit_stub.requests) == 1  # nothing more was sent to the agent
    assert not Task.objects.filter(session=session, sequence=2).exists()
    # The run's own reports, stamped after the attempt went out, complete it.
    report(session.agent_id, "active")
    report(session.agent_id, "idle")
    assert task_of(session).status == S.COMPLETED
    assert task_of(session, 2).status == S.DISPATCHED


def test_an_idle_stamped_early_still_counts_after_its_active_or_when_it_names_the_task(q_sync, agentkit_stub):
    """Once the agent reported `active` for the attempt, its `idle` ends it whatever the agent's clock
    says; so does an `idle` naming the task."""
    session = start()
    task = task_of(session)
    early = task.reference_at - timedelta(seconds=1)  # an agent clock a second behind ours
    report(session.agent_id, "active")
    _stamped(session.agent_id, "idle", stamped=early)
    assert task_of(session).status == S.COMPLETED
    other = start()
    task = task_of(other)
    _stamped(other.agent_id, "idle", stamped=task.reference_at - timedelta(seconds=1),
             details={"taskId": str(task.pk), "result": 2})
    task.refresh_from_db()
    assert (task.status, task.result) == (S.COMPLETED, 2)


def test_a_report_naming_another_task_changes_nothing(q_sync, agentkit_stub):
    session = start()
    report(session.agent_id, "idle", {"taskId": "not-this-one"})
    assert task_of(session).status == S.DISPATCHED
    report(session.agent_id, "idle", {"taskId": str(task_of(session).pk), "result": 1})
    assert task_of(session).status == S.COMPLETED


def test_an_out_of_order_report_is_history_only_for_the_agent_but_counts_by_receive_time(q_sync, agentkit_stub):
    """Correlation is by server receive time: an idle whose agent timestamp is older still completes."""
    session = start()
    now = timezone.now()
    agent_state_record(agent_id=session.agent_id, state="active", details={}, timestamp=now, received_at=now)
    agent_state_record(agent_id=session.agent_id, state="idle", details={},
                       timestamp=now - timedelta(milliseconds=5), received_at=now + timedelta(milliseconds=1))
    agent = Agent.objects.get(pk=session.agent_id)
    assert agent.state == Agent.State.ACTIVE  # newer-wins on the agent's own clock
    assert task_of(session).status == S.COMPLETED


def test_an_instant_idle_before_the_accept_is_recorded_still_completes(agentkit_stub):
    """The agent can report idle while the POST is still in progress; the task completes and stays so."""
    agent = AgentFactory()
    session = engine.session_start(definition=WorkflowDefinitionFactory(), agent=agent, by=By.system())
    task = task_of(session)
    from tests.sessions.conftest import AgentKitStub

    def answer(request):
        report(agent.id, "active")
        report(agent.id, "idle", {"result": "fast"})
        return AgentKitStub.accept(request)

    agentkit_stub.answer = answer
    assert dispatch.task_dispatch(task_id=task.pk).outcome == "dispatched"
    task.refresh_from_db()
    assert task.status == S.COMPLETED and task.result == "fast"
    attempt = task.attempts.get()
    assert attempt.outcome == TaskAttempt.Outcome.COMPLETED and attempt.http_status == 202


# --------------------------------------------------------------------------- timeouts, exhaustion, fallback


def test_an_overdue_attempt_times_out_and_is_retried(q_sync, agentkit_stub):
    session = start(spec=spec_with(timeoutSeconds=30))
    task = task_of(session)
    assert sweeps.sweep_timeouts(now=timezone.now()) == 0
    assert sweeps.sweep_timeouts(now=task.timeout_at + timedelta(seconds=1)) == 1
    task.refresh_from_db()
    assert task.status == S.RETRY_SCHEDULED and "no outcome within 30s" in task.last_error
    assert task.attempts.get().outcome == TaskAttempt.Outcome.FAILED
    # A late idle for the timed-out attempt changes nothing.
    report(session.agent_id, "idle")
    task.refresh_from_db()
    assert task.status == S.RETRY_SCHEDULED


def test_exhausted_retries_without_fallback_fail_the_session(q_sync, agentkit_stub):
    agentkit_stub.respond(500)
    session = start(spec=spec_with(maxRetries=2, retryBackoffSeconds=0))
    task = task_of(session)
    for _ in range(2):
        sweeps.sweep_due_retries(now=timezone.now() + timedelta(seconds=5))
    task.refresh_from_db()
    session.refresh_from_db()
    assert task.status == S.DEAD and task.attempt == 3
    assert session.status == SS.FAILED and "retries exhausted (2)" in session.error
    assert len(agentkit_stub.requests) == 3


def test_exhausted_retries_with_a_fallback_run_the_fallback(q_sync, agentkit_stub):
    spec = {
        "id": "with-fallback", "name": "Fallback", "tasks": [
            {"taskId": "main", "maxRetries": 0, "nextTaskId": "after", "fallbackTaskId": "rescue"},
            {"taskId": "after"},
            {"taskId": "rescue", "parameters": {"mode": "safe"}},
        ]}
    session = start(spec=spec)
    report(session.agent_id, "error", {"error_code": "X", "message": "nope"})
    main, rescue = task_of(session, 1), task_of(session, 2)
    assert main.status == S.DEAD
    # The agent is in `error` until it reports idle again; only then does the fallback go out.
    assert rescue.step_id == "rescue" and rescue.fallback_for_id == main.pk and rescue.status == S.QUEUED
    report(session.agent_id, "idle")
    rescue.refresh_from_db()
    assert rescue.status == S.DISPATCHED and rescue.payload == {"mode": "safe"}
    report(session.agent_id, "idle")
    session.refresh_from_db()
    assert session.status == SS.COMPLETED
    assert not Task.objects.filter(session=session, step_id="after").exists()


# --------------------------------------------------------------------------- operator actions


def test_cancel_stops_the_task_in_flight_and_a_late_report_changes_nothing(q_sync, agentkit_stub, operator):
    session = start()
    task = task_of(session)
    engine.session_cancel(session=session, by=By.operator(operator), reason="wrong input")
    report(session.agent_id, "idle", {"result": "late"})
    task.refresh_from_db()
    session.refresh_from_db()
    assert session.status == SS.CANCELLED and task.status == S.CANCELLED and task.result is None
    assert task.attempts.get().outcome == TaskAttempt.Outcome.CANCELLED
    event = TaskEvent.objects.get(session=session, task=None, new_status=SS.CANCELLED)
    assert event.actor == Actor.OPERATOR and event.actor_user == operator and event.reason == "wrong input"
    with pytest.raises(InvalidTransition):
        engine.session_cancel(session=session, by=By.operator(operator))


def test_cancel_frees_the_agent_for_the_next_session(q_sync, agentkit_stub, operator):
    agent = AgentFactory()
    first, second = start(agent=agent), start(agent=agent)
    engine.session_cancel(session=first, by=By.operator(operator))
    report(agent.id, "idle")  # the agent finishes whatever it was doing
    assert task_of(second).status == S.DISPATCHED


def test_an_operator_retries_a_dead_task_and_the_session_runs_again(q_sync, agentkit_stub, operator):
    agentkit_stub.respond(404)
    session = start()
    task = task_of(session)
    agentkit_stub.answer = agentkit_stub.accept
    engine.task_retry(task=task, by=By.operator(operator), reason="agent re-registered")
    task.refresh_from_db()
    session.refresh_from_db()
    assert task.status == S.DISPATCHED and task.attempt == 2 and session.status == SS.RUNNING
    assert session.error == "" and session.ended_at is None
    event = TaskEvent.objects.get(task=task, old_status=S.DEAD, new_status=S.QUEUED)
    assert event.actor_user == operator and event.reason == "agent re-registered"


def test_retry_is_refused_for_a_task_that_is_not_dead_or_failed(q_sync, agentkit_stub, operator):
    task = task_of(start())
    with pytest.raises(InvalidTransition, match="only dead or failed"):
        engine.task_retry(task=task, by=By.operator(operator))


def test_session_retry_resumes_from_the_failed_step(q_sync, agentkit_stub, operator):
    session = start(spec=spec_with(maxRetries=0))
    report(session.agent_id, "error", {"message": "x"})
    session.refresh_from_db()
    assert session.status == SS.FAILED
    task = engine.session_retry(session=session, by=By.operator(operator))
    assert task.step_id == "step_1" and task.status == S.QUEUED  # the agent is still in `error`
    report(session.agent_id, "idle")  # back to work: the retry goes out
    task.refresh_from_db()
    assert task.status == S.DISPATCHED and task.attempt == 2
    report(session.agent_id, "idle")  # step_1 done
    report(session.agent_id, "idle")  # step_2 done
    session.refresh_from_db()
    assert session.status == SS.COMPLETED
    with pytest.raises(InvalidTransition, match="only a failed session"):
        engine.session_retry(session=session, by=By.operator(operator))


# --------------------------------------------------------------------------- transitions and the scheduler


def test_a_transition_not_in_the_state_machine_is_refused(db):
    from tests.sessions.factories import TaskFactory

    task = TaskFactory(status=S.COMPLETED)
    with pytest.raises(InvalidTransition):
        engine.task_transition(task=task, to=S.RUNNING, by=By.system())
    task.refresh_from_db()
    assert task.status == S.COMPLETED and not TaskEvent.objects.exists()


def test_a_stale_copy_loses_the_compare_and_set(db):
    from tests.sessions.factories import TaskFactory

    task = TaskFactory(status=S.QUEUED)
    stale = Task.objects.get(pk=task.pk)
    engine.task_transition(task=task, to=S.CANCELLED, by=By.system())
    with pytest.raises(InvalidTransition, match="changed underneath"):
        engine.task_transition(task=stale, to=S.DISPATCHED, by=By.system())
    assert Task.objects.get(pk=task.pk).status == S.CANCELLED


def test_an_attempt_outcome_moves_once_and_a_closed_attempt_keeps_its_outcome(db):
    from tests.sessions.factories import TaskFactory

    Outcome = TaskAttempt.Outcome
    task = TaskFactory(status=S.DISPATCHED, attempt=1)
    TaskAttempt.objects.create(task=task, number=1, reference_at=timezone.now())
    assert engine.attempt_transition(task_id=task.pk, number=1, to=Outcome.COMPLETED, ended_at=timezone.now())
    # AgentKit's 2xx arriving after the agent's report: `accepted` cannot replace `completed`.
    assert not engine.attempt_transition(task_id=task.pk, number=1, to=Outcome.ACCEPTED, http_status=200)
    assert not engine.attempt_transition(task_id=task.pk, number=2, to=Outcome.FAILED)  # no such attempt
    with pytest.raises(InvalidTransition):
        engine.attempt_transition(task_id=task.pk, number=1, to=Outcome.SENDING)
    attempt = TaskAttempt.objects.get(task=task, number=1)
    assert (attempt.outcome, attempt.http_status) == (Outcome.COMPLETED, None)


def test_the_lost_job_sweep_re_enqueues_queued_work_for_an_idle_agent(agentkit_stub, settings, q_sync):
    settings.OPSCORE_LOST_JOB_SECONDS = 10
    agent = AgentFactory(state=Agent.State.ACTIVE)
    session = start(agent=agent)
    task = task_of(session)
    # Its job ran and found the agent busy: no job is on its way any more.
    assert task.status == S.QUEUED and task.enqueued_at is None
    assert sweeps.sweep_lost_jobs(now=timezone.now(), dry_run=True) == []  # the agent is still busy
    # The agent went idle without the engine hearing of it (a report lost, a worker killed):
    # the next pass re-enqueues, without waiting for the lost-job window.
    Agent.objects.filter(pk=agent.pk).update(state=Agent.State.IDLE)
    assert [t.pk for t in sweeps.sweep_lost_jobs(now=timezone.now())] == [task.pk]
    task.refresh_from_db()
    assert task.status == S.DISPATCHED


def test_the_lost_job_sweep_leaves_a_job_on_its_way_alone_for_the_window(agentkit_stub, settings):
    settings.OPSCORE_LOST_JOB_SECONDS = 10
    agent = AgentFactory(state=Agent.State.IDLE)
    session = start(agent=agent)  # no q_sync: the job waits in the queue, not run
    task = task_of(session)
    assert task.enqueued_at is not None
    assert sweeps.sweep_lost_jobs(now=timezone.now(), dry_run=True) == []
    # A second session's first step queued behind it gets no job, and the sweep does not add one
    # while the first task's job is on its way.
    second = task_of(start(agent=agent))
    assert second.enqueued_at is None
    assert sweeps.sweep_lost_jobs(now=timezone.now(), dry_run=True) == []
    later = timezone.now() + timedelta(seconds=11)
    # Past the window with its job still waiting in the queue: the queue is behind, not the job
    # lost, and a job more would only wait behind it.
    assert sweeps.job_queue_wait(now=later) > 10
    assert sweeps.sweep_lost_jobs(now=later, dry_run=True) == []
    # The job gone without a trace: the agent's oldest task gets a job, one task per agent a pass
    # (a second job for the same agent could only answer busy).
    OrmQ.objects.all().delete()
    assert sweeps.job_queue_wait(now=later) == 0
    assert sweeps.sweep_lost_jobs(now=later, dry_run=True) == [task]


def test_the_lost_job_sweep_takes_one_task_per_agent_but_every_task_it_only_ends(agentkit_stub, settings):
    settings.OPSCORE_LOST_JOB_SECONDS = 10
    idle, gone = AgentFactory(state=Agent.State.IDLE), AgentFactory(state=Agent.State.IDLE)
    mine = [task_of(start(agent=idle)) for _ in range(3)]
    theirs = [task_of(start(agent=gone)) for _ in range(2)]
    Agent.objects.filter(pk=gone.pk).update(deregistered_at=timezone.now())
    OrmQ.objects.all().delete()  # every job lost
    later = timezone.now() + timedelta(seconds=11)
    assert set(sweeps.sweep_lost_jobs(now=later, dry_run=True)) == {mine[0], *theirs}


def test_a_scheduler_tick_reports_what_it_did(q_sync, agentkit_stub):
    agentkit_stub.respond(503)
    start(spec=spec_with(retryBackoffSeconds=0))
    agentkit_stub.answer = agentkit_stub.accept
    counts = sweeps.scheduler_tick(now=timezone.now() + timedelta(seconds=1))
    assert counts.retries_due == 1 and counts.errors == []


# --------------------------------------------------------------------------- races and strandings (review findings)


def test_active_and_idle_in_the_same_second_leave_the_agent_idle_and_the_next_step_goes_out(q_sync, agentkit_stub):
    """Second-resolution clocks: a tie on the agent's timestamp goes to the later arrival."""
    session = start()
    same_second = (timezone.now() + timedelta(seconds=1)).replace(microsecond=0)
    received = timezone.now()
    agent_state_record(agent_id=session.agent_id, state="active", details={}, timestamp=same_second,
                       received_at=received)
    agent_state_record(agent_id=session.agent_id, state="idle", details={}, timestamp=same_second,
                       received_at=received + timedelta(milliseconds=5))
    assert Agent.objects.get(pk=session.agent_id).state == Agent.State.IDLE
    assert task_of(session, 1).status == S.COMPLETED
    assert task_of(session, 2).status == S.DISPATCHED


def test_a_step_queued_while_its_session_was_cancelled_is_cancelled_not_stranded(q_sync, agentkit_stub, settings):
    """Cancel and a completion race: the completion queued the next step after cancel looked."""
    from tests.sessions.factories import SessionFactory, TaskFactory

    settings.OPSCORE_LOST_JOB_SECONDS = 1
    agent = AgentFactory()
    orphan = TaskFactory(session=SessionFactory(agent=agent, status=SS.CANCELLED), status=S.QUEUED)
    waiting = start(agent=AgentFactory(state=Agent.State.ACTIVE))  # unrelated work elsewhere
    assert sweeps.sweep_lost_jobs(now=timezone.now() + timedelta(seconds=2), dry_run=True) == [orphan]
    sweeps.sweep_lost_jobs(now=timezone.now() + timedelta(seconds=2))
    orphan.refresh_from_db()
    assert orphan.status == S.CANCELLED and not agentkit_stub.requests
    assert task_of(waiting).status == S.QUEUED


def test_the_idle_kick_skips_tasks_of_ended_sessions(q_sync, agentkit_stub):
    from tests.sessions.factories import SessionFactory, TaskFactory

    agent = AgentFactory(state=Agent.State.ACTIVE)
    TaskFactory(session=SessionFactory(agent=agent, status=SS.CANCELLED), status=S.QUEUED)
    live = start(agent=agent)
    report(agent.id, "idle")
    assert task_of(live).status == S.DISPATCHED


def test_a_task_whose_agent_deregisters_in_flight_dies_and_the_session_fails(q_sync, agentkit_stub):
    session = start(spec=spec_with(timeoutSeconds=5))
    task = task_of(session)
    Agent.objects.filter(pk=session.agent_id).update(deregistered_at=timezone.now())
    sweeps.sweep_timeouts(now=task.timeout_at + timedelta(seconds=1))
    sweeps.sweep_due_retries(now=timezone.now() + timedelta(minutes=5))
    task.refresh_from_db()
    session.refresh_from_db()
    assert task.status == S.DEAD and "deregistered" in task.last_error
    assert session.status == SS.FAILED
    assert len(agentkit_stub.requests) == 1  # nothing was sent to the departed agent


def test_a_queued_task_of_an_agent_that_deregisters_while_busy_is_swept_and_failed(q_sync, agentkit_stub, settings):
    settings.OPSCORE_LOST_JOB_SECONDS = 1
    agent = AgentFactory(state=Agent.State.ACTIVE)
    session = start(agent=agent)
    Agent.objects.filter(pk=agent.pk).update(deregistered_at=timezone.now())
    sweeps.sweep_lost_jobs(now=timezone.now() + timedelta(seconds=2))
    session.refresh_from_db()
    assert task_of(session).status == S.DEAD and session.status == SS.FAILED


def test_an_engine_failure_does_not_lose_the_report(q_sync, agentkit_stub, caplog):
    from agents.models import AgentState

    session = start()
    Session.objects.filter(pk=session.pk).update(spec_snapshot={"broken": True})
    report(session.agent_id, "idle")
    assert AgentState.objects.filter(agent_id=session.agent_id, state="idle").exists()
    assert Agent.objects.get(pk=session.agent_id).state == Agent.State.IDLE
    assert task_of(session).status == S.DISPATCHED  # unchanged; the timeout sweep recovers it
    assert "engine could not apply a idle report" in caplog.text


def test_a_database_lost_under_the_engine_fails_the_report_instead_of_claiming_it_kept(q_sync, agentkit_stub,
                                                                                          caplog):
    from django.db import OperationalError, connection

    session = start()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()

    def cut_connection(execute, sql, params, many, context):
        if "FOR NO KEY UPDATE" in sql:  # the engine's first lock: the server ends the connection here
            import psycopg
            with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [pid])
        return execute(sql, params, many, context)

    with pytest.raises(OperationalError), connection.execute_wrapper(cut_connection):
        report(session.agent_id, "idle")
    assert "engine could not apply" not in caplog.text
    connection.close()  # the test's own connection died with it


def test_one_bad_row_does_not_block_a_sweep(caplog):
    from tests.sessions.factories import SessionFactory, TaskFactory

    past = timezone.now() - timedelta(seconds=1)
    bad = TaskFactory(session=SessionFactory(spec_snapshot={"broken": True}), status=S.DISPATCHED, attempt=1,
                      max_retries=0, timeout_at=past)
    good = TaskFactory(status=S.DISPATCHED, attempt=1, max_retries=0, timeout_at=past)
    assert sweeps.sweep_timeouts(now=timezone.now()) == 1
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.status == S.DEAD
    assert Session.objects.get(pk=good.session_id).status == SS.FAILED
    assert bad.status == S.DISPATCHED  # rolled back to where it was, and logged
    assert f"scheduler could not handle task {bad.pk}" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatches_to_one_agent_send_exactly_one(agentkit_stub):
    """Two workers claim two queued tasks of the same idle agent at the same moment."""
    import threading

    from django.db import connection

    agent = AgentFactory()
    Agent.objects.filter(pk=agent.pk).update(state=Agent.State.ACTIVE)
    first, second = start(agent=agent), start(agent=agent)
    Agent.objects.filter(pk=agent.pk).update(state=Agent.State.IDLE)
    barrier = threading.Barrier(2)
    outcomes = []

    def worker(task_id) -> None:
        try:
            barrier.wait()
            outcomes.append(dispatch.task_dispatch(task_id=task_id).outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(task_of(s).pk,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["busy", "dispatched"]
    assert len(agentkit_stub.requests) == 1
    assert Task.objects.filter(agent=agent, status__in=Task.IN_FLIGHT).count() == 1


def test_a_cancelled_task_keeps_its_agent_busy_until_the_agent_reports_idle(q_sync, agentkit_stub, operator):
    """The agent works on a cancelled task until it reports (AGENTKIT.md section 4: `active`/`idle` come
    only after the work). A session started meanwhile must wait, or the cancelled task's late `idle`
    would complete it."""
    agent = AgentFactory()
    first = start(agent=agent)
    assert task_of(first).status == S.DISPATCHED
    engine.session_cancel(session=first, by=By.operator(operator))
    second = start(agent=agent)
    assert task_of(second).status == S.QUEUED and len(agentkit_stub.requests) == 1
    # The late pair for the cancelled task: changes nothing for the new session's task...
    report(agent.id, "active")
    assert task_of(second).status == S.QUEUED
    report(agent.id, "idle")
    # ...and once the agent is idle again, the new task goes out, with its own reference time.
    task = task_of(second)
    assert task.status == S.DISPATCHED and len(agentkit_stub.requests) == 2
    assert task.result is None and task.reference_at > task_of(first).reference_at


def test_a_cancelled_retry_holds_its_agent_even_if_an_earlier_attempt_was_refused(q_sync, agentkit_stub, operator):
    agent = AgentFactory()
    agentkit_stub.respond(503)
    first = start(agent=agent, spec=spec_with(retryBackoffSeconds=0))
    agentkit_stub.answer = agentkit_stub.accept
    sweeps.sweep_due_retries(now=timezone.now() + timedelta(seconds=1))
    assert task_of(first).attempt == 2 and task_of(first).status == S.DISPATCHED
    engine.session_cancel(session=first, by=By.operator(operator))
    second = start(agent=agent)
    assert task_of(second).status == S.QUEUED and len(agentkit_stub.requests) == 2


def test_a_cancelled_task_stops_holding_its_agent_at_its_deadline(q_sync, agentkit_stub, operator):
    """A cancelled attempt whose agent never reports (a lost forward) frees the agent at its deadline."""
    agent = AgentFactory()
    first = start(agent=agent, spec=spec_with(timeoutSeconds=30))
    engine.session_cancel(session=first, by=By.operator(operator))
    second = start(agent=agent)
    assert dispatch.task_dispatch(task_id=task_of(second).pk).outcome == "busy"
    # 31 seconds later, still no word from the agent: the attempt's deadline has passed.
    Task.objects.filter(pk=task_of(first).pk).update(reference_at=timezone.now() - timedelta(seconds=31))
    assert dispatch.task_dispatch(task_id=task_of(second).pk).outcome == "dispatched"


def test_a_cancelled_task_whose_post_failed_does_not_hold_its_agent(agentkit_stub, operator):
    """Cancelled between the fence and the POST, and AgentKit refused it: the agent never got it."""
    agent = AgentFactory()
    session = engine.session_start(definition=WorkflowDefinitionFactory(), agent=agent, by=By.system())
    task = task_of(session)

    def answer(request):
        engine.session_cancel(session=session, by=By.operator(operator))
        return httpx.Response(503, json={"detail": "down"})

    agentkit_stub.answer = answer
    assert dispatch.task_dispatch(task_id=task.pk).outcome == "failed"
    assert task_of(session).status == S.CANCELLED
    attempt = task.attempts.get()
    assert attempt.outcome == TaskAttempt.Outcome.CANCELLED and attempt.http_status == 503
    agentkit_stub.answer = agentkit_stub.accept
    second = engine.session_start(definition=WorkflowDefinitionFactory(), agent=agent, by=By.system())
    assert dispatch.task_dispatch(task_id=task_of(second).pk).outcome == "dispatched"


@pytest.mark.django_db(transaction=True)
def test_the_one_in_flight_constraint_firing_in_a_claim_is_busy_not_an_error(agentkit_stub):
    """The database constraint is the final guard: a claim that only it stops answers `busy`."""
    import threading
    import time

    from django.db import connection

    agent = AgentFactory(state=Agent.State.ACTIVE)
    first, second = start(agent=agent), start(agent=agent)
    Agent.objects.filter(pk=agent.pk).update(state=Agent.State.IDLE)
    rogue_started, release = threading.Event(), threading.Event()

    def rogue() -> None:
        # Another writer puts the first task in flight without the agent lock, and commits
        # only once the claim below is waiting on the unique index.
        try:
            with transaction.atomic():
                Task.objects.filter(pk=task_of(first).pk).update(status=S.DISPATCHED)
                rogue_started.set()
                release.wait(10)
                deadline = time.monotonic() + 10
                with connection.cursor() as cursor:
                    while time.monotonic() < deadline:  # until the claim waits on our row
                        cursor.execute("SELECT pg_stat_clear_snapshot()")
                        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                       " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
                        if cursor.fetchone()[0]:
                            break
                        time.sleep(0.01)
        finally:
            connection.close()

    thread = threading.Thread(target=rogue)
    thread.start()
    assert rogue_started.wait(10)
    release.set()
    result = dispatch.task_dispatch(task_id=task_of(second).pk)
    thread.join()
    assert (result.outcome, result.detail) == ("busy", "another dispatch won the race")
    assert task_of(second).status == S.QUEUED and not task_of(second).attempts.exists()
    assert not agentkit_stub.requests


# --------------------------------------------------------------------------- a freed agent takes its next task at once


_spec_ids = itertools.count(1)


def one_step_spec(**step) -> dict:
    return {"id": f"one-step-{next(_spec_ids)}", "name": "One step",
            "tasks": [{"taskId": "only", "nextTaskId": None, **step}]}


def busy_agent_with_a_waiting_task(q_sync, *, spec=None, agent=None):
    """Agent A runs session 1's task; session 2's task waits queued for A, with no job of its own
    (it was queued behind work: the kick that frees A enqueues it)."""
    agent = agent or AgentFactory()
    first = start(agent=agent, spec=spec or one_step_spec(maxRetries=0))
    second = start(agent=agent, spec=one_step_spec())
    assert task_of(first).status == S.DISPATCHED and task_of(second).status == S.QUEUED
    assert task_of(second).enqueued_at is None
    from django_q.models import OrmQ
    assert not OrmQ.objects.exists()
    q_sync.SYNC = False  # from here on, jobs stay in the broker, where they can be counted
    return agent, first, task_of(second)


def kicked_within(action, waiting: Task) -> None:
    """`action` enqueues the waiting task's job in its own transaction: it is there before commit,
    and rolling the transaction back takes it away (so no sweep is involved)."""
    class Rollback(Exception):
        pass

    assert Task.objects.get(pk=waiting.pk).enqueued_at is None
    try:
        with transaction.atomic():
            action()
            assert queued_jobs_for(waiting) == 1, "the freed agent's next task has no job"
            assert Task.objects.get(pk=waiting.pk).enqueued_at is not None
            raise Rollback
    except Rollback:
        pass
    assert queued_jobs_for(waiting) == 0  # it was written in the action's transaction
    with transaction.atomic():
        action()
    assert queued_jobs_for(waiting) == 1


def test_a_completed_task_frees_its_agent_for_the_next_queued_task(q_sync, agentkit_stub):
    agent, _, waiting = busy_agent_with_a_waiting_task(q_sync)
    kicked_within(lambda: report(agent.id, "idle"), waiting)


def test_a_task_failed_with_no_retry_left_frees_its_agent(q_sync, agentkit_stub):
    agent, first, waiting = busy_agent_with_a_waiting_task(q_sync)
    kicked_within(lambda: report(agent.id, "error", {"error_code": "E", "message": "boom"}), waiting)
    assert task_of(first).status == S.DEAD


def test_a_task_failed_with_a_retry_scheduled_frees_its_agent(q_sync, agentkit_stub):
    agent, first, waiting = busy_agent_with_a_waiting_task(q_sync, spec=one_step_spec(maxRetries=3))
    kicked_within(lambda: report(agent.id, "error", {"error_code": "E", "message": "boom"}), waiting)
    assert task_of(first).status == S.RETRY_SCHEDULED


def test_a_task_that_dies_on_a_permanent_agentkit_answer_frees_its_agent(q_sync, agentkit_stub):
    agent = AgentFactory()
    agentkit_stub.respond(404, {"detail": "agent not found"})
    q_sync.SYNC = False
    first, second = start(agent=agent, spec=one_step_spec()), start(agent=agent, spec=one_step_spec())
    from django_q.models import OrmQ
    OrmQ.objects.all().delete()
    waiting = task_of(second)
    kicked_within(lambda: dispatch.task_dispatch(task_id=task_of(first).pk), waiting)
    assert task_of(first).status == S.DEAD


def test_a_timed_out_task_frees_its_agent(q_sync, agentkit_stub):
    agent, first, waiting = busy_agent_with_a_waiting_task(q_sync, spec=one_step_spec(timeoutSeconds=30, maxRetries=0))
    deadline = task_of(first).timeout_at
    kicked_within(lambda: sweeps.sweep_timeouts(now=deadline + timedelta(seconds=1)), waiting)
    assert task_of(first).status == S.DEAD


def test_a_cancelled_task_frees_its_agent(q_sync, agentkit_stub, operator):
    agent, first, waiting = busy_agent_with_a_waiting_task(q_sync)
    kicked_within(lambda: engine.session_cancel(session=first, by=By.operator(operator)), waiting)
    assert task_of(first).status == S.CANCELLED


# --------------------------------------------------------------------------- an agent whose `idle` was lost


def idle_agent() -> Agent:
    """An agent idle for an hour (so reports moved back in time still count as its newest)."""
    hour_ago = timezone.now() - timedelta(hours=1)
    return AgentFactory(state_timestamp=hour_ago, state_received_at=hour_ago)


def lost_idle(agent_id: str, task: Task, *, state: str = "active", seconds_ago: int = 30) -> None:
    """The agent reported `state` on `task` `seconds_ago` and its `idle` never arrived (a killed web
    worker cut it short): the dispatch, the report and the deadline, moved back in time together."""
    past = timezone.now() - timedelta(seconds=seconds_ago)
    Task.objects.filter(pk=task.pk).update(reference_at=past - timedelta(seconds=1),
                                           timeout_at=past + timedelta(seconds=task.timeout_seconds))
    TaskAttempt.objects.filter(task=task, number=task.attempt).update(reference_at=past - timedelta(seconds=1))
    report(agent_id, state, {"error_code": "E", "message": "boom"} if state == "error" else None, when=past)


def test_a_lost_idle_then_the_timeout_dispatches_the_agents_next_queued_task(q_sync, agentkit_stub):
    agent = idle_agent()
    first = start(agent=agent, spec=one_step_spec(timeoutSeconds=10, maxRetries=1, retryBackoffSeconds=0))
    second = start(agent=agent, spec=one_step_spec())
    assert task_of(first).status == S.DISPATCHED and task_of(second).status == S.QUEUED
    lost_idle(agent.id, task_of(first))
    assert task_of(first).status == S.RUNNING and Agent.objects.get(pk=agent.pk).state == Agent.State.ACTIVE
    # Nothing while the attempt is in flight, however long the agent has been silent.
    assert dispatch.task_dispatch(task_id=task_of(second).pk).outcome == "busy"
    assert sweeps.sweep_timeouts(now=timezone.now()) == 1
    # The timeout gave the attempt up after the agent's last report: the agent takes its next task.
    assert task_of(first).status == S.RETRY_SCHEDULED
    assert task_of(second).status == S.DISPATCHED and len(agentkit_stub.requests) == 2
    report(agent.id, "active")
    report(agent.id, "idle")
    assert task_of(second).status == S.COMPLETED
    # ...and the retry of the timed-out task goes out when due, to the same agent.
    sweeps.sweep_due_retries(now=timezone.now() + timedelta(seconds=1))
    assert task_of(first).status == S.DISPATCHED and task_of(first).attempt == 2


def test_the_timeout_kicks_the_freed_agents_next_task_in_its_own_transaction(q_sync, agentkit_stub):
    agent, first, waiting = busy_agent_with_a_waiting_task(q_sync, spec=one_step_spec(timeoutSeconds=10, maxRetries=0),
                                                           agent=idle_agent())
    lost_idle(agent.id, task_of(first))
    assert Agent.objects.get(pk=agent.pk).state == Agent.State.ACTIVE
    kicked_within(lambda: sweeps.sweep_timeouts(now=timezone.now()), waiting)
    assert task_of(first).status == S.DEAD
    assert dispatch.task_dispatch(task_id=waiting.pk).outcome == "dispatched"  # the job it kicked


def test_an_agent_still_active_within_the_margin_gets_nothing(q_sync, agentkit_stub):
    """Its `idle` may still be on its way: a new dispatch now would take it for its own outcome."""
    agent = idle_agent()
    first = start(agent=agent, spec=one_step_spec(timeoutSeconds=10, maxRetries=0))
    second = start(agent=agent, spec=one_step_spec())
    lost_idle(agent.id, task_of(first), seconds_ago=engine.LOST_IDLE_SECONDS - 2)
    sweeps.sweep_timeouts(now=task_of(first).timeout_at + timedelta(seconds=1))
    assert task_of(first).status == S.DEAD
    assert dispatch.task_dispatch(task_id=task_of(second).pk).outcome == "busy"
    report(agent.id, "idle")  # it arrives after all
    assert task_of(second).status == S.DISPATCHED and task_of(second).result is None


def test_the_lost_job_sweep_takes_the_same_rule_as_the_claim(q_sync, agentkit_stub, settings):
    """An `idle` lost after an `error`: the error failed the attempt itself (no timeout frees the agent),
    so the retry's job answers busy and the lost-job sweep sends it once the margin has passed."""
    settings.OPSCORE_LOST_JOB_SECONDS = 10
    agent = idle_agent()
    session = start(agent=agent, spec=one_step_spec(maxRetries=2, retryBackoffSeconds=0))
    task = task_of(session)
    report(agent.id, "error", {"error_code": "E", "message": "boom"})
    sweeps.sweep_due_retries(now=timezone.now() + timedelta(seconds=1))
    assert task_of(session).status == S.QUEUED and len(agentkit_stub.requests) == 1  # busy: agent is error
    later = timezone.now() + timedelta(seconds=11)
    assert engine.LOST_IDLE_SECONDS < 11
    assert sweeps.sweep_lost_jobs(now=later, dry_run=True) == [task]
    # The claim reads the clock itself: the error report, moved back, is older than the margin.
    Agent.objects.filter(pk=agent.pk).update(state_received_at=timezone.now() - timedelta(seconds=11))
    assert [t.pk for t in sweeps.sweep_lost_jobs(now=later)] == [task.pk]
    assert task_of(session).status == S.DISPATCHED and task_of(session).attempt == 2


def test_the_lost_job_sweep_leaves_an_agent_within_the_margin_or_with_work_in_flight(q_sync, agentkit_stub,
                                                                                      settings):
    settings.OPSCORE_LOST_JOB_SECONDS = 10
    agent = idle_agent()
    first = start(agent=agent, spec=one_step_spec(timeoutSeconds=3600))
    second = start(agent=agent, spec=one_step_spec())
    later = timezone.now() + timedelta(seconds=11)
    report(agent.id, "active")  # counted for the first task: it is running
    assert sweeps.sweep_lost_jobs(now=later, dry_run=True) == []  # in flight
    engine.attempt_failed(task_id=task_of(first).pk, number=1, error="given up", permanent=True, by=By.system())
    Task.objects.filter(pk=task_of(second).pk).update(enqueued_at=timezone.now() - timedelta(seconds=20))
    assert sweeps.sweep_lost_jobs(now=timezone.now(), dry_run=True) == []  # active 0 s ago
    assert sweeps.sweep_lost_jobs(now=later, dry_run=True) == [task_of(second)]


@pytest.mark.parametrize("state", ["finished", "initializing"])
def test_an_agent_in_another_state_is_not_taken_for_idle(q_sync, agentkit_stub, state):
    agent = AgentFactory(state=state, state_received_at=timezone.now() - timedelta(hours=1))
    session = start(agent=agent)
    assert task_of(session).status == S.QUEUED and not agentkit_stub.requests


def test_a_cancelled_task_sent_to_a_freed_agent_holds_it_until_its_deadline(q_sync, agentkit_stub, operator):
    """The agent lost its `idle`, was freed, got a task and that task was cancelled before any report:
    the agent may be working on it, so it still takes nothing until the attempt's deadline."""
    agent = idle_agent()
    first = start(agent=agent, spec=one_step_spec(timeoutSeconds=10, maxRetries=0))
    lost_idle(agent.id, task_of(first))
    second = start(agent=agent, spec=one_step_spec(timeoutSeconds=30))
    sweeps.sweep_timeouts(now=timezone.now())
    assert task_of(second).status == S.DISPATCHED
    engine.session_cancel(session=second, by=By.operator(operator))
    third = start(agent=agent, spec=one_step_spec())
    assert dispatch.task_dispatch(task_id=task_of(third).pk).outcome == "busy"
    Task.objects.filter(pk=task_of(second).pk).update(reference_at=timezone.now() - timedelta(seconds=31))
    assert dispatch.task_dispatch(task_id=task_of(third).pk).outcome == "dispatched"
