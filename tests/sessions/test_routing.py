"""Capability routing and failover, the queue timeout, and quarantine (a circuit breaker per agent):
sessions/engine.py through dispatch and the sweeps, with AgentKit stubbed at the HTTP seam."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from agents.models import Agent
from agents.services import agent_state_record
from sessions import engine, sweeps
from sessions.engine import By, InvalidTransition
from sessions.models import QuarantineEvent, Session, Task, TaskAttempt, TaskEvent
from tests.agents.factories import AgentFactory
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db

S = Task.Status
SS = Session.Status
Q = Agent.Quarantine


def report(agent_id: str, state: str, details=None):
    now = timezone.now()
    return agent_state_record(agent_id=agent_id, state=state, details=details, timestamp=now, received_at=now)


def spec(*steps: dict, workflow_id: str | None = None) -> dict:
    """A workflow whose steps run in the order given; each dict overrides a step's fields."""
    tasks = []
    for index, overrides in enumerate(steps, start=1):
        step = {"taskId": f"s{index}", "name": f"Step {index}", "parameters": {},
                "nextTaskId": f"s{index + 1}" if index < len(steps) else None}
        step.update(overrides)
        tasks.append(step)
    return {"id": workflow_id or f"wf-{abs(hash(repr(steps))) % 10**8}", "name": "Routing", "tasks": tasks}


def start(agent: Agent, document: dict) -> Session:
    definition = WorkflowDefinitionFactory(id=document["id"], spec=document)
    return engine.session_start(definition=definition, agent=agent, by=By.system())


def first_task(session: Session) -> Task:
    return Task.objects.get(session=session, sequence=1)


def posted_to(stub) -> list[str]:
    return [request.url.path.split("/")[3] for request in stub.requests]


def answer_404_for(stub, *agent_ids: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.split("/")[3] in agent_ids:
            return httpx.Response(404, json={"detail": f"Agent with ID '{request.url.path.split('/')[3]}' not found."})
        return stub.accept(request)
    stub.answer = answer


# --------------------------------------------------------------------------- routing


def test_the_session_agent_takes_a_step_it_can_do_even_when_others_are_idle(q_sync, agentkit_stub):
    home = AgentFactory(capabilities=["fetch"])
    AgentFactory(capabilities=["fetch"], state_received_at=timezone.now() - timedelta(hours=1))
    task = first_task(start(home, spec({"agentCapability": "fetch"})))
    assert task.status == S.DISPATCHED and task.agent_id == home.pk and task.routing_note == ""
    assert posted_to(agentkit_stub) == [home.pk]
    assert task.attempts.get().agent_id == home.pk


def test_a_session_agent_with_unknown_capabilities_takes_any_step(q_sync, agentkit_stub):
    home = AgentFactory(capabilities=[])
    AgentFactory(capabilities=["summarise"])
    task = first_task(start(home, spec({"agentCapability": "summarise"})))
    assert task.status == S.DISPATCHED and task.agent_id == home.pk


def test_a_step_the_session_agent_lacks_goes_to_the_agent_idle_longest_with_the_reason(q_sync, agentkit_stub):
    now = timezone.now()
    home = AgentFactory(capabilities=["fetch"])
    AgentFactory(capabilities=["summarise"], state_received_at=now - timedelta(minutes=1))
    longest = AgentFactory(capabilities=["summarise", "publish"], state_received_at=now - timedelta(minutes=9))
    AgentFactory(capabilities=["summarise"], state=Agent.State.ACTIVE, state_received_at=now - timedelta(hours=1))
    AgentFactory(capabilities=["summarise"], state_received_at=now - timedelta(hours=2), drained_at=now)
    task = first_task(start(home, spec({"agentCapability": "summarise"})))
    assert task.status == S.DISPATCHED and task.agent_id == longest.pk
    note = f"routed to {longest.pk}: session agent {home.pk} lacks capability 'summarise'"
    assert task.routing_note == note
    assert TaskEvent.objects.filter(task=task, old_status=S.QUEUED, new_status=S.QUEUED, reason=note).exists()
    assert posted_to(agentkit_stub) == [longest.pk]


def test_three_steps_needing_three_capabilities_run_on_three_agents(q_sync, agentkit_stub):
    fetcher = AgentFactory(capabilities=["fetch"])
    summariser = AgentFactory(capabilities=["summarise"])
    publisher = AgentFactory(capabilities=["publish"])
    session = start(fetcher, spec({"agentCapability": "fetch"}, {"agentCapability": "summarise"},
                                  {"agentCapability": "publish"}))
    for agent in (fetcher, summariser, publisher):
        report(agent.pk, "idle")
    session.refresh_from_db()
    assert session.status == SS.COMPLETED
    assert list(session.tasks.order_by("sequence").values_list("agent_id", flat=True)) == [
        fetcher.pk, summariser.pk, publisher.pk]
    assert posted_to(agentkit_stub) == [fetcher.pk, summariser.pk, publisher.pk]


def test_a_drained_or_quarantined_session_agent_fails_over(q_sync, agentkit_stub):
    other = AgentFactory(capabilities=["fetch"])
    drained = AgentFactory(capabilities=["fetch"], drained_at=timezone.now())
    task = first_task(start(drained, spec({"agentCapability": "fetch"})))
    assert task.agent_id == other.pk and task.routing_note == f"routed to {other.pk}: session agent {drained.pk} is drained"
    report(other.pk, "idle")
    sick = AgentFactory(capabilities=["fetch"])
    engine.agent_quarantine(agent=sick, by=By.system(), reason="flaky")
    task = first_task(start(sick, spec({"agentCapability": "fetch"}, workflow_id="wf-sick")))
    assert task.agent_id == other.pk and "is quarantined (flaky)" in task.routing_note


def test_a_pinned_step_waits_for_its_session_agent(q_sync, agentkit_stub):
    home = AgentFactory(capabilities=["fetch"], drained_at=timezone.now())
    AgentFactory(capabilities=["fetch"])
    task = first_task(start(home, spec({"agentCapability": "fetch", "pinToSessionAgent": True})))
    assert task.status == S.QUEUED and task.agent_id == home.pk and task.waiting_since is not None
    assert task.routing_note == f"waiting: session agent {home.pk} is drained; the step pinned to its session's agent"
    assert not agentkit_stub.requests


def test_with_no_capable_agent_the_task_waits_then_times_out_into_its_retry(q_sync, agentkit_stub):
    home = AgentFactory(capabilities=["fetch"])
    session = start(home, spec({"agentCapability": "publish", "queueTimeoutSeconds": 60, "maxRetries": 1}))
    task = first_task(session)
    assert task.status == S.QUEUED and not agentkit_stub.requests
    assert task.routing_note == (f"waiting for an agent with capability 'publish' "
                                 f"(session agent {home.pk} lacks capability 'publish')")
    assert task.queue_deadline_at == task.waiting_since + timedelta(seconds=60)
    assert sweeps.sweep_queue_timeouts(now=timezone.now()) == 0
    assert sweeps.sweep_queue_timeouts(now=task.queue_deadline_at + timedelta(seconds=1)) == 1
    task.refresh_from_db()
    assert task.status == S.RETRY_SCHEDULED and task.attempt == 1 and task.waiting_since is None
    assert task.last_error.startswith("no agent could take the task within")
    assert "waiting for an agent with capability 'publish'" in task.last_error
    attempt = task.attempts.get()
    assert attempt.outcome == TaskAttempt.Outcome.FAILED and attempt.agent_id is None


def test_a_queue_timeout_with_no_retry_left_runs_the_fallback(q_sync, agentkit_stub, settings):
    settings.OPSCORE_QUEUE_TIMEOUT_SECONDS = 30
    home = AgentFactory(capabilities=["fetch"])
    document = spec({"agentCapability": "publish", "maxRetries": 0, "fallbackTaskId": "s2"}, {"agentCapability": "fetch"})
    session = start(home, document)
    task = first_task(session)
    assert task.queue_deadline_at == task.waiting_since + timedelta(seconds=30)  # the setting's default
    sweeps.sweep_queue_timeouts(now=task.queue_deadline_at + timedelta(seconds=1))
    task.refresh_from_db()
    assert task.status == S.DEAD and "retries exhausted (0): no agent could take the task" in TaskEvent.objects.filter(
        task=task, new_status=S.DEAD).get().reason
    fallback = Task.objects.get(session=session, fallback_for=task)
    assert fallback.step_id == "s2" and fallback.status == S.DISPATCHED and fallback.agent_id == home.pk


def test_an_agent_becoming_available_picks_up_waiting_work(q_sync, agentkit_stub):
    home = AgentFactory(capabilities=["fetch"])
    task = first_task(start(home, spec({"agentCapability": "summarise"})))
    assert task.status == S.QUEUED and task.waiting_since is not None
    newcomer = AgentFactory(capabilities=["summarise"], state=Agent.State.INITIALIZING)
    report(newcomer.pk, "idle")  # its idle report kicks the longest-waiting task it can take
    task.refresh_from_db()
    assert task.status == S.DISPATCHED and task.agent_id == newcomer.pk and task.waiting_since is None
    assert task.routing_note == f"routed to {newcomer.pk}: session agent {home.pk} lacks capability 'summarise'"


def test_the_scheduler_routes_waiting_work_again_after_an_undrain(q_sync, agentkit_stub):
    from agents.services import agent_undrain

    home = AgentFactory(capabilities=["fetch"])
    helper = AgentFactory(capabilities=["summarise"], drained_at=timezone.now())
    task = first_task(start(home, spec({"agentCapability": "summarise"})))
    assert task.waiting_since is not None
    agent_undrain(agent=helper, reason="back")
    Task.objects.filter(pk=task.pk).update(enqueued_at=timezone.now() - timedelta(seconds=30))
    sweeps.scheduler_tick()
    task.refresh_from_db()
    assert task.status == S.DISPATCHED and task.agent_id == helper.pk


def test_a_retry_goes_back_to_the_session_agent_once_it_can_take_the_step(q_sync, agentkit_stub):
    home = AgentFactory(capabilities=["fetch"], drained_at=timezone.now())
    other = AgentFactory(capabilities=["fetch"])
    task = first_task(start(home, spec({"agentCapability": "fetch"})))
    assert task.agent_id == other.pk
    report(other.pk, "error", {"error_code": "E", "message": "boom"})
    Agent.objects.filter(pk=home.pk).update(drained_at=None)
    sweeps.sweep_due_retries(now=timezone.now() + timedelta(hours=1))
    task.refresh_from_db()
    assert task.status == S.DISPATCHED and task.agent_id == home.pk
    assert task.routing_note == f"back on session agent {home.pk}"


# --------------------------------------------------------------------------- quarantine


def test_three_404s_in_a_row_quarantine_the_agent_and_its_tasks_finish_elsewhere(q_sync, agentkit_stub, settings):
    settings.OPSCORE_QUARANTINE_THRESHOLD = 3
    forgotten = AgentFactory(capabilities=["fetch"])
    capable = AgentFactory(capabilities=["fetch"], state=Agent.State.ACTIVE)  # busy: tasks queue behind it
    answer_404_for(agentkit_stub, forgotten.pk)
    sessions = [start(forgotten, spec({"agentCapability": "fetch", "retryBackoffSeconds": 0},
                                      workflow_id=f"wf-404-{n}")) for n in range(3)]
    # A 404 on a step that can move is retried, not dead: it says nothing about the task.
    for _ in range(3):
        sweeps.sweep_due_retries(now=timezone.now() + timedelta(hours=1))
    forgotten.refresh_from_db()
    assert forgotten.quarantine_state == Q.QUARANTINED and forgotten.quarantine_probe_at is not None
    assert forgotten.quarantine_reason.startswith("3 failures in a row: AgentKit does not know agent")
    event = QuarantineEvent.objects.get(agent=forgotten)
    assert (event.old_state, event.new_state, event.actor) == ("", Q.QUARANTINED, "system")
    assert len(event.failures) == 3 and all("does not know" in f["error"] for f in event.failures)
    assert TaskAttempt.objects.filter(agent=forgotten, agent_fault=True).count() == 3
    assert posted_to(agentkit_stub).count(forgotten.pk) == 3  # nothing after the quarantine
    sweeps.sweep_due_retries(now=timezone.now() + timedelta(hours=1))
    for _ in range(4):  # the first idle frees it, each next one completes a task and sends the next
        report(capable.pk, "idle")
    assert {s.status for s in Session.objects.filter(pk__in=[s.pk for s in sessions])} == {SS.COMPLETED}
    assert set(Task.objects.filter(session__in=sessions, sequence=1).values_list("agent_id", flat=True)) == {capable.pk}
    assert not Task.objects.filter(session__in=sessions, status=S.DEAD).exists()


def test_error_reports_422s_and_an_unreachable_agentkit_do_not_count(q_sync, agentkit_stub, settings):
    settings.OPSCORE_QUARANTINE_THRESHOLD = 2
    agent = AgentFactory(capabilities=["fetch"])
    for n in range(3):
        start(agent, spec({}, workflow_id=f"wf-err-{n}"))
        report(agent.pk, "error", {"error_code": "E", "message": "the task's fault"})
    agentkit_stub.respond(422, {"detail": "bad"})
    start(agent, spec({}, workflow_id="wf-422"))
    agentkit_stub.raise_(httpx.ConnectError("refused"))
    start(agent, spec({}, workflow_id="wf-down"))
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.NONE and not QuarantineEvent.objects.exists()
    assert not TaskAttempt.objects.filter(agent_fault=True).exists()


def test_a_success_breaks_the_run_of_failures(q_sync, agentkit_stub, settings):
    settings.OPSCORE_QUARANTINE_THRESHOLD = 2
    agent = AgentFactory()
    agentkit_stub.respond(503)
    start(agent, spec({"maxRetries": 0}, workflow_id="wf-a"))
    agentkit_stub.answer = agentkit_stub.accept
    start(agent, spec({}, workflow_id="wf-b"))
    report(agent.pk, "idle")
    agentkit_stub.respond(503)
    start(agent, spec({"maxRetries": 0}, workflow_id="wf-c"))
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.NONE
    start(agent, spec({"maxRetries": 0}, workflow_id="wf-d"))
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.QUARANTINED
    assert "AgentKit answered 503" in agent.quarantine_reason


def test_a_lost_forward_counts_and_a_slow_running_task_does_not(q_sync, agentkit_stub, settings):
    settings.OPSCORE_QUARANTINE_THRESHOLD = 2
    agent = AgentFactory()
    slow = first_task(start(agent, spec({"maxRetries": 0}, workflow_id="wf-slow")))
    report(agent.pk, "active")
    sweeps.sweep_timeouts(now=timezone.now() + timedelta(hours=1))
    assert TaskAttempt.objects.get(task=slow).agent_fault is False
    report(agent.pk, "idle")
    for n in range(2):
        lost = first_task(start(agent, spec({"maxRetries": 0}, workflow_id=f"wf-lost-{n}")))
        assert lost.status == S.DISPATCHED
        sweeps.sweep_timeouts(now=timezone.now() + timedelta(hours=1))
        lost.refresh_from_db()
        assert "no report at all: a lost forward?" in lost.last_error
        report(agent.pk, "idle")  # the agent was idle all along
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.QUARANTINED
    assert TaskAttempt.objects.filter(agent=agent, agent_fault=True).count() == 2


def quarantined_agent(stub, settings, **fields) -> Agent:
    settings.OPSCORE_QUARANTINE_THRESHOLD = 1
    agent = AgentFactory(capabilities=["fetch"], **fields)
    stub.respond(503)
    start(agent, spec({"maxRetries": 0}, workflow_id="wf-first-failure"))
    stub.answer = stub.accept
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.QUARANTINED
    return agent


def test_queued_work_moves_off_an_agent_when_it_is_quarantined(q_sync, agentkit_stub, settings):
    agent = AgentFactory(capabilities=["fetch"], state=Agent.State.ACTIVE)
    other = AgentFactory(capabilities=["fetch"])
    movable = first_task(start(agent, spec({"agentCapability": "fetch"}, workflow_id="wf-move")))
    pinned = first_task(start(agent, spec({"agentCapability": "fetch", "pinToSessionAgent": True},
                                          workflow_id="wf-pin")))
    assert movable.agent_id == pinned.agent_id == agent.pk and movable.status == S.QUEUED
    engine.agent_quarantine(agent=agent, by=By.system(), reason="smoke seen")
    movable.refresh_from_db()
    pinned.refresh_from_db()
    assert movable.agent_id == other.pk and movable.status == S.DISPATCHED
    assert movable.routing_note == f"routed to {other.pk}: session agent {agent.pk} is quarantined (smoke seen)"
    assert pinned.agent_id == agent.pk and pinned.status == S.QUEUED and pinned.waiting_since is not None


def test_after_the_cool_down_one_probe_goes_and_its_success_releases_the_agent(q_sync, agentkit_stub, settings):
    agent = quarantined_agent(agentkit_stub, settings)
    task = first_task(start(agent, spec({}, workflow_id="wf-probe")))
    assert task.status == S.QUEUED and "is quarantined" in task.routing_note  # cooling down: it waits
    Agent.objects.filter(pk=agent.pk).update(quarantine_probe_at=timezone.now() - timedelta(seconds=1))
    Task.objects.filter(pk=task.pk).update(enqueued_at=timezone.now() - timedelta(minutes=1))
    sweeps.scheduler_tick()
    task.refresh_from_db()
    agent.refresh_from_db()
    assert task.status == S.DISPATCHED and task.probe and agent.quarantine_state == Q.PROBING
    second = first_task(start(agent, spec({}, workflow_id="wf-second")))
    assert second.status == S.QUEUED  # one probe only
    report(agent.pk, "idle")
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.NONE and agent.quarantine_strikes == 0
    assert list(QuarantineEvent.objects.filter(agent=agent).order_by("created_at", "id")
                .values_list("new_state", flat=True)) == [Q.QUARANTINED, Q.PROBING, Q.NONE]
    assert QuarantineEvent.objects.filter(agent=agent, new_state="").get().reason == f"probe task {task.pk} answered"


def test_a_failed_probe_quarantines_again_with_a_longer_cool_down(q_sync, agentkit_stub, settings):
    settings.OPSCORE_QUARANTINE_COOLDOWN_SECONDS = 30
    settings.OPSCORE_QUARANTINE_BACKOFF_CAP_SECONDS = 100
    agent = quarantined_agent(agentkit_stub, settings)
    for strikes, cooldown in ((2, 60), (3, 100)):
        Agent.objects.filter(pk=agent.pk).update(quarantine_probe_at=timezone.now() - timedelta(seconds=1))
        agentkit_stub.respond(404, {"detail": "Agent with ID 'x' not found."})
        before = timezone.now()
        start(agent, spec({"maxRetries": 0}, workflow_id=f"wf-probe-{strikes}"))
        agent.refresh_from_db()
        assert agent.quarantine_state == Q.QUARANTINED and agent.quarantine_strikes == strikes
        assert before + timedelta(seconds=cooldown - 1) < agent.quarantine_probe_at <= timezone.now() + timedelta(
            seconds=cooldown)
        assert QuarantineEvent.objects.filter(agent=agent).first().reason.startswith("probe failed: AgentKit does not")


def test_an_operator_quarantines_and_releases_by_hand(q_sync, agentkit_stub, operator):
    agent = AgentFactory()
    engine.agent_quarantine(agent=agent, by=By.operator(operator), reason="  acting up  ")
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.QUARANTINED and agent.quarantined_by == operator
    assert agent.quarantine_reason == "acting up" and agent.quarantine_probe_at is None  # no automatic probe
    with pytest.raises(InvalidTransition, match="already quarantined"):
        engine.agent_quarantine(agent=agent, by=By.operator(operator), reason="again")
    task = first_task(start(agent, spec({})))
    assert task.status == S.QUEUED and not agentkit_stub.requests
    engine.agent_release(agent=agent, by=By.operator(operator), reason="fixed")
    agent.refresh_from_db()
    task.refresh_from_db()
    assert agent.quarantine_state == Q.NONE and agent.quarantine_released_at is not None
    assert task.status == S.DISPATCHED  # the release kicks its queued work
    events = list(QuarantineEvent.objects.filter(agent=agent).order_by("created_at", "id"))
    assert [(e.new_state, e.actor_label, e.reason) for e in events] == [
        (Q.QUARANTINED, f"operator {operator}", "acting up"), ("", f"operator {operator}", "fixed")]
    with pytest.raises(InvalidTransition, match="is not quarantined"):
        engine.agent_release(agent=agent, by=By.operator(operator))


def test_a_manual_release_forgets_the_failures_before_it(q_sync, agentkit_stub, settings, operator):
    agent = quarantined_agent(agentkit_stub, settings)
    settings.OPSCORE_QUARANTINE_THRESHOLD = 2
    engine.agent_release(agent=agent, by=By.operator(operator), reason="try again")
    agentkit_stub.respond(503)
    start(agent, spec({"maxRetries": 0}, workflow_id="wf-after-release"))
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.NONE  # one failure since the release, not two


def test_quarantine_moves_are_guarded(db):
    agent = AgentFactory()
    with pytest.raises(InvalidTransition):
        engine.quarantine_transition(agent=agent, to=Q.PROBING, by=By.system(), reason="no")
    stale_copy = Agent.objects.get(pk=agent.pk)
    assert engine.quarantine_transition(agent=agent, to=Q.QUARANTINED, by=By.system(), reason="first")
    assert not engine.quarantine_transition(agent=stale_copy, to=Q.QUARANTINED, by=By.system(), reason="raced")
    assert QuarantineEvent.objects.count() == 1


def test_a_stuck_probe_is_put_back_by_the_scheduler(db):
    agent = AgentFactory(quarantine_state=Q.PROBING)
    assert sweeps.sweep_stuck_probes() == 1
    agent.refresh_from_db()
    assert agent.quarantine_state == Q.QUARANTINED and agent.probe_due()
