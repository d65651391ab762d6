"""Pause and resume (sessions/engine.py): a session, a workflow definition and the fleet's dispatch switch.

A paused session dispatches nothing; its step in flight finishes and records its outcome, the
next step waits; its retry deadline stands still. A paused definition holds new sessions
`pending`. The fleet switch off holds every dispatch. Each change says who and why.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Agent
from sessions import dispatch, engine, sweeps
from sessions.engine import By, InvalidTransition
from sessions.models import Actor, ControlEvent, FleetDispatch, Session, Task, TaskEvent
from sessions.services import session_trigger
from tests.agents.factories import AgentFactory
from tests.sessions.test_engine import report, spec_with, start, task_of
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db

S = Task.Status
SS = Session.Status


def jobs_for(task: Task) -> int:
    from django_q.models import OrmQ

    return sum(1 for job in OrmQ.objects.all() if job.task["args"] == (str(task.pk),))


def session_events(session: Session) -> list[tuple[str, str, str]]:
    return list(TaskEvent.objects.filter(session=session, task__isnull=True)
                .values_list("old_status", "new_status", "actor"))


# --------------------------------------------------------------------------- a session


def test_pausing_a_session_with_its_step_queued_holds_it_until_resume(q_sync, agentkit_stub, operator):
    agent = AgentFactory(state=Agent.State.ACTIVE)  # busy: the first step waits queued
    session = start(agent=agent)
    engine.session_pause(session=session, by=By.operator(operator), reason="checking the inputs")
    session.refresh_from_db()
    assert session.status == SS.PAUSED and session.paused_at is not None
    report(agent.id, "idle")  # the agent is free, but the paused session's step waits
    assert task_of(session).status == S.QUEUED and not agentkit_stub.requests
    assert dispatch.task_dispatch(task_id=task_of(session).pk).outcome == "held"

    engine.session_resume(session=session, by=By.operator(operator), reason="inputs fine")
    session.refresh_from_db()
    assert session.status == SS.RUNNING and session.paused_at is None
    assert task_of(session).status == S.DISPATCHED and len(agentkit_stub.requests) == 1
    assert session_events(session) == [("", SS.PENDING, Actor.SYSTEM), (SS.PENDING, SS.PAUSED, Actor.OPERATOR),
                                       (SS.PAUSED, SS.PENDING, Actor.OPERATOR), (SS.PENDING, SS.RUNNING, Actor.SYSTEM)]
    paused, resumed = TaskEvent.objects.filter(session=session, old_status__in=[SS.PENDING, SS.PAUSED],
                                               new_status__in=[SS.PAUSED, SS.PENDING]).order_by("created_at", "id")
    assert (paused.actor_user, paused.reason) == (operator, "checking the inputs")
    assert (resumed.actor_user, resumed.reason) == (operator, "inputs fine")


def test_a_pending_session_paused_and_resumed_is_pending_again(agentkit_stub, operator):
    session = start()  # no q_sync: the job waits in the broker
    engine.session_pause(session=session, by=By.operator(operator))
    engine.session_resume(session=session, by=By.operator(operator))
    session.refresh_from_db()
    assert session.status == SS.PENDING
    assert session_events(session)[-2:] == [(SS.PENDING, SS.PAUSED, Actor.OPERATOR), (SS.PAUSED, SS.PENDING,
                                                                                      Actor.OPERATOR)]


def test_a_step_in_flight_finishes_while_paused_and_the_next_waits(q_sync, agentkit_stub, operator, settings):
    settings.OPSCORE_LOST_JOB_SECONDS = 0
    session = start()
    first = task_of(session)
    assert first.status == S.DISPATCHED
    engine.session_pause(session=session, by=By.operator(operator))
    report(session.agent_id, "idle", {"result": {"n": 1}})
    first.refresh_from_db()
    second = task_of(session, 2)
    assert first.status == S.COMPLETED and first.result == {"n": 1}
    assert second.status == S.QUEUED and jobs_for(second) == 0 and len(agentkit_stub.requests) == 1
    # The lost-job sweep leaves a paused session's step alone.
    assert sweeps.sweep_lost_jobs(now=timezone.now() + timedelta(seconds=5), dry_run=True) == []

    engine.session_resume(session=session, by=By.operator(operator))
    second.refresh_from_db()
    assert second.status == S.DISPATCHED and second.payload["previous_result"] == {"n": 1}
    report(session.agent_id, "idle")
    session.refresh_from_db()
    assert session.status == SS.COMPLETED
    assert [body["payload"]["task_name"] for body in agentkit_stub.bodies] == ["step_1", "step_2"]


def test_a_running_step_that_fails_while_paused_retries_only_after_resume(q_sync, agentkit_stub, operator):
    session = start(spec=spec_with(retryBackoffSeconds=10))
    task = task_of(session)
    report(session.agent_id, "active")
    engine.session_pause(session=session, by=By.operator(operator))
    report(session.agent_id, "error", {"message": "disk full"})
    task.refresh_from_db()
    assert task.status == S.RETRY_SCHEDULED and task.attempts.get().outcome == "failed"
    due = task.next_attempt_at + timedelta(seconds=1)
    assert sweeps.sweep_due_retries(now=due) == 0  # the retry's clock stands still while paused
    engine.session_resume(session=session, by=By.operator(operator))
    task.refresh_from_db()
    assert sweeps.sweep_due_retries(now=task.next_attempt_at + timedelta(seconds=1)) == 1
    report(session.agent_id, "idle")  # the agent is ready for it
    task.refresh_from_db()
    assert task.status == S.DISPATCHED and task.attempt == 2


def test_resume_gives_a_scheduled_retry_the_time_it_had_left(q_sync, agentkit_stub, operator):
    agentkit_stub.respond(503)
    session = start(spec=spec_with(retryBackoffSeconds=60))
    task = task_of(session)
    assert task.status == S.RETRY_SCHEDULED
    engine.session_pause(session=session, by=By.operator(operator))
    # As if: the retry was scheduled 2 h ago for 10 min later, and the session was paused 5 min after that.
    now = timezone.now()
    Task.objects.filter(pk=task.pk).update(updated_at=now - timedelta(hours=2),
                                           next_attempt_at=now - timedelta(hours=2) + timedelta(minutes=10))
    Session.objects.filter(pk=session.pk).update(paused_at=now - timedelta(hours=2) + timedelta(minutes=5))
    assert sweeps.sweep_due_retries(now=now) == 0
    engine.session_resume(session=session, by=By.operator(operator))
    task.refresh_from_db()
    left = task.next_attempt_at - timezone.now()
    assert timedelta(minutes=4) < left <= timedelta(minutes=5)
    assert task.status == S.RETRY_SCHEDULED


def test_an_attempt_in_flight_keeps_its_timeout_while_paused(q_sync, agentkit_stub, operator):
    session = start(spec=spec_with(timeoutSeconds=30))
    task = task_of(session)
    engine.session_pause(session=session, by=By.operator(operator))
    assert sweeps.sweep_timeouts(now=task.timeout_at + timedelta(seconds=1)) == 1
    task.refresh_from_db()
    assert task.status == S.RETRY_SCHEDULED


def test_the_last_step_completing_while_paused_completes_the_session(q_sync, agentkit_stub, operator):
    session = start()
    report(session.agent_id, "idle")
    engine.session_pause(session=session, by=By.operator(operator))
    report(session.agent_id, "idle", {"result": "done"})
    session.refresh_from_db()
    assert session.status == SS.COMPLETED and session.result == "done" and session.paused_at is None


def test_a_step_dead_while_paused_without_a_fallback_fails_the_session(q_sync, agentkit_stub, operator):
    agentkit_stub.respond(404, {"detail": "Agent with ID 'x' not found."})
    agent = AgentFactory(state=Agent.State.ACTIVE)
    session = start(agent=agent)
    engine.session_pause(session=session, by=By.operator(operator))
    engine.session_resume(session=session, by=By.operator(operator))  # queued again; the agent is busy
    engine.session_pause(session=session, by=By.operator(operator))
    Agent.objects.filter(pk=agent.pk).update(state=Agent.State.IDLE)
    engine.session_resume(session=session, by=By.operator(operator))  # dispatched: 404, dead
    session.refresh_from_db()
    assert session.status == SS.FAILED and task_of(session).status == S.DEAD


def test_pause_racing_a_completing_report_holds_the_next_steps_job(agentkit_stub, operator):
    """The report completes the step and enqueues the next one's job; the pause commits before the
    job runs: the job holds the step, and resume sends it once."""
    session = start()
    assert dispatch.task_dispatch(task_id=task_of(session).pk).outcome == "dispatched"
    report(session.agent_id, "idle")
    second = task_of(session, 2)
    assert second.status == S.QUEUED and jobs_for(second) == 1
    engine.session_pause(session=session, by=By.operator(operator), reason="race")
    assert dispatch.task_dispatch(task_id=second.pk).outcome == "held"
    engine.session_resume(session=session, by=By.operator(operator))
    assert dispatch.task_dispatch(task_id=second.pk).outcome == "dispatched"
    assert dispatch.task_dispatch(task_id=second.pk).outcome == "skipped"  # the first job, delivered late
    assert [body["payload"]["task_name"] for body in agentkit_stub.bodies] == ["step_1", "step_2"]


def test_a_pause_before_the_completing_report_enqueues_no_job(agentkit_stub, operator):
    session = start()
    dispatch.task_dispatch(task_id=task_of(session).pk)
    engine.session_pause(session=session, by=By.operator(operator))
    report(session.agent_id, "idle")
    second = task_of(session, 2)
    assert second.status == S.QUEUED and jobs_for(second) == 0
    engine.session_resume(session=session, by=By.operator(operator))
    assert jobs_for(second) == 1


def test_a_paused_sessions_step_does_not_block_the_agents_other_work(q_sync, agentkit_stub, operator):
    agent = AgentFactory(state=Agent.State.ACTIVE)
    paused, other = start(agent=agent), start(agent=agent)
    engine.session_pause(session=paused, by=By.operator(operator))
    report(agent.id, "idle")
    assert task_of(other).status == S.DISPATCHED and task_of(paused).status == S.QUEUED


@pytest.mark.parametrize("status", [SS.COMPLETED, SS.FAILED, SS.CANCELLED])
def test_only_a_pending_or_running_session_can_be_paused(operator, status):
    from tests.sessions.factories import SessionFactory

    session = SessionFactory(status=status)
    with pytest.raises(InvalidTransition, match="only a pending or running session"):
        engine.session_pause(session=session, by=By.operator(operator))
    with pytest.raises(InvalidTransition, match="only a paused session can be resumed"):
        engine.session_resume(session=session, by=By.operator(operator))


def test_pausing_twice_is_refused_and_a_paused_session_can_be_cancelled(agentkit_stub, operator):
    session = start()
    engine.session_pause(session=session, by=By.operator(operator))
    with pytest.raises(InvalidTransition):
        engine.session_pause(session=session, by=By.operator(operator))
    engine.session_cancel(session=session, by=By.operator(operator))
    session.refresh_from_db()
    assert session.status == SS.CANCELLED and task_of(session).status == S.CANCELLED


def test_a_service_keys_pause_names_the_key(agentkit_stub):
    session = start()
    engine.session_pause(session=session, by=By.service_key("API key ops-bot"), reason="deploy")
    event = TaskEvent.objects.filter(session=session, new_status=SS.PAUSED).get()
    assert event.actor == Actor.SYSTEM and event.reason == "deploy by API key ops-bot"


# --------------------------------------------------------------------------- a workflow definition


def test_a_paused_definition_holds_new_triggers_pending_until_resumed(q_sync, agentkit_stub, operator):
    definition = WorkflowDefinitionFactory()
    engine.definition_pause(definition=definition, by=By.operator(operator), reason="bad prompt")
    definition.refresh_from_db()
    assert definition.paused_at is not None and definition.paused_by_label == "alice"
    agent = AgentFactory()
    session, replayed = session_trigger(agent_id=agent.pk, definition_id=definition.pk, by=By.system())
    task = task_of(session)
    assert not replayed and session.status == SS.PENDING and task.status == S.PENDING
    assert not agentkit_stub.requests and jobs_for(task) == 0
    assert "held: workflow definition" in TaskEvent.objects.get(task=task).reason

    assert engine.definition_resume(definition=definition, by=By.operator(operator), reason="fixed") == 1
    task.refresh_from_db()
    session.refresh_from_db()
    assert task.status == S.DISPATCHED and session.status == SS.RUNNING and len(agentkit_stub.requests) == 1
    assert list(ControlEvent.objects.order_by("created_at", "id").values_list(
        "scope", "target", "action", "actor_user__username", "reason")) == [
        ("definition", definition.pk, "paused", "alice", "bad prompt"),
        ("definition", definition.pk, "resumed", "alice", "fixed")]


def test_pausing_a_definition_can_pause_its_running_sessions_too(q_sync, agentkit_stub, operator):
    definition = WorkflowDefinitionFactory()
    running = [engine.session_start(definition=definition, agent=AgentFactory(), by=By.system()) for _ in range(2)]
    other = start()
    assert engine.definition_pause(definition=definition, by=By.operator(operator), pause_sessions=True) == 2
    assert set(Session.objects.filter(status=SS.PAUSED).values_list("pk", flat=True)) == {s.pk for s in running}
    assert Session.objects.get(pk=other.pk).status == SS.RUNNING
    assert engine.definition_resume(definition=definition, by=By.operator(operator), resume_sessions=True) == 2
    assert not Session.objects.filter(status=SS.PAUSED).exists()


def test_pausing_a_definition_leaves_its_running_sessions_alone_unless_asked(q_sync, agentkit_stub, operator):
    definition = WorkflowDefinitionFactory()
    session = engine.session_start(definition=definition, agent=AgentFactory(), by=By.system())
    engine.definition_pause(definition=definition, by=By.operator(operator))
    report(session.agent_id, "idle")
    assert task_of(session, 2).status == S.DISPATCHED


def test_a_trigger_racing_the_definition_pause_is_held_by_its_job(agentkit_stub, operator):
    definition = WorkflowDefinitionFactory()
    session = engine.session_start(definition=definition, agent=AgentFactory(), by=By.system())
    engine.definition_pause(definition=definition, by=By.operator(operator))
    task = task_of(session)
    assert dispatch.task_dispatch(task_id=task.pk).outcome == "held"
    engine.definition_resume(definition=definition, by=By.operator(operator))
    assert jobs_for(task) == 2
    assert dispatch.task_dispatch(task_id=task.pk).outcome == "dispatched"


def test_a_definition_is_paused_once_and_resumed_once(operator):
    definition = WorkflowDefinitionFactory()
    with pytest.raises(InvalidTransition, match="is already not paused"):
        engine.definition_resume(definition=definition, by=By.operator(operator))
    engine.definition_pause(definition=definition, by=By.operator(operator))
    with pytest.raises(InvalidTransition, match="is already paused"):
        engine.definition_pause(definition=definition, by=By.operator(operator))
    assert ControlEvent.objects.count() == 1


def test_a_held_session_paused_itself_is_released_by_its_own_resume(q_sync, agentkit_stub, operator):
    definition = WorkflowDefinitionFactory()
    engine.definition_pause(definition=definition, by=By.operator(operator))
    session = engine.session_start(definition=definition, agent=AgentFactory(), by=By.system())
    engine.session_pause(session=session, by=By.operator(operator))
    engine.definition_resume(definition=definition, by=By.operator(operator))  # the session is paused: stays held
    assert task_of(session).status == S.PENDING
    engine.session_resume(session=session, by=By.operator(operator))
    assert task_of(session).status == S.DISPATCHED


# --------------------------------------------------------------------------- the fleet


def test_the_fleet_switch_off_holds_every_dispatch_and_on_kicks_the_held_work(q_sync, agentkit_stub, operator):
    switch = engine.fleet_pause(by=By.operator(operator), reason="database upgrade")
    assert switch.is_off and switch.paused_by == operator and switch.paused_by_label == "alice"
    assert switch.reason == "database upgrade"
    sessions = [start() for _ in range(3)]  # triggers are accepted
    assert all(task_of(s).status == S.QUEUED for s in sessions) and not agentkit_stub.requests
    report(sessions[0].agent_id, "idle")  # reports are accepted; nothing goes out
    assert dispatch.task_dispatch(task_id=task_of(sessions[0]).pk).outcome == "held"
    # The lost-job sweep does not re-enqueue held work while the switch is off.
    assert sweeps.sweep_lost_jobs(now=timezone.now() + timedelta(hours=1), dry_run=True) == []
    with pytest.raises(InvalidTransition, match="already paused"):
        engine.fleet_pause(by=By.operator(operator))

    assert engine.fleet_resume(by=By.service_key("API key ops-bot"), reason="done") == 3
    assert not FleetDispatch.current().is_off
    assert all(task_of(s).status == S.DISPATCHED for s in sessions) and len(agentkit_stub.requests) == 3
    assert list(ControlEvent.objects.order_by("created_at", "id").values_list("scope", "action", "actor_label")) == [
        ("fleet", "paused", "alice"), ("fleet", "resumed", "API key ops-bot")]
    with pytest.raises(InvalidTransition, match="already not paused"):
        engine.fleet_resume(by=By.operator(operator))


def test_steps_in_flight_finish_while_the_fleet_is_off_and_the_next_waits(q_sync, agentkit_stub, operator):
    session = start()
    engine.fleet_pause(by=By.operator(operator))
    report(session.agent_id, "idle")
    assert task_of(session).status == S.COMPLETED and task_of(session, 2).status == S.QUEUED
    assert len(agentkit_stub.requests) == 1
    engine.fleet_resume(by=By.operator(operator))
    assert task_of(session, 2).status == S.DISPATCHED


def test_the_fleet_switch_holds_no_paused_sessions_work_on_resume(q_sync, agentkit_stub, operator):
    engine.fleet_pause(by=By.operator(operator))
    session = start()
    engine.session_pause(session=session, by=By.operator(operator))
    assert engine.fleet_resume(by=By.operator(operator)) == 0
    assert task_of(session).status == S.QUEUED and not agentkit_stub.requests
