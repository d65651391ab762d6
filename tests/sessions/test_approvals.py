"""Approval steps (sessions/engine.py): the session waits for a person's decision, which becomes the
step's result; reject or the timeout runs the fallback or fails the session. Nothing goes to AgentKit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from sessions import engine, sweeps
from sessions.engine import By, InvalidTransition, NotAnApprover
from sessions.models import Actor, Session, Task, TaskEvent
from tests.sessions.test_engine import report, start, task_of

pytestmark = pytest.mark.django_db

S = Task.Status
SS = Session.Status


def review_spec(workflow_id="review-flow", *, approvers=None, fallback=True, first=False, **review) -> dict:
    """prepare (agent) -> review (approval) -> publish (agent), with `rework` as the review's fallback."""
    approval = {"taskId": "review", "type": "approval", "name": "Approve the summary", "nextTaskId": "publish",
                "timeoutSeconds": 3600, "onTimeout": "reject", **review}
    if approvers:
        approval["approvers"] = approvers
    if fallback:
        approval["fallbackTaskId"] = "rework"
    steps = [{"taskId": "prepare", "nextTaskId": "review"}, approval, {"taskId": "publish"},
             {"taskId": "rework"}]
    if first:
        steps = [approval, {"taskId": "prepare"}, {"taskId": "publish"}, {"taskId": "rework"}]
    return {"id": workflow_id, "name": "Review", "tasks": steps}


def waiting(spec=None, **kwargs) -> tuple[Session, Task]:
    session = start(spec=spec or review_spec(), **kwargs)
    report(session.agent_id, "idle", {"result": {"summary": "three lines"}})
    return session, task_of(session, 2)


def test_reaching_an_approval_waits_for_a_decision_with_nothing_sent(q_sync, agentkit_stub):
    session, review = waiting()
    assert review.status == S.WAITING_APPROVAL and review.attempt == 0 and not review.attempts.exists()
    assert review.payload["previous_result"] == {"summary": "three lines"}
    assert review.timeout_at is not None and abs((review.timeout_at - review.created_at).total_seconds() - 3600) < 1
    assert [b["payload"]["task_name"] for b in agentkit_stub.bodies] == ["prepare"]
    session.refresh_from_db()
    assert session.status == SS.RUNNING


def test_an_approval_becomes_the_steps_result_and_the_next_step_runs(q_sync, agentkit_stub, operator):
    session, review = waiting()
    engine.approval_decide(task=review, approve=True, comment="looks right", by=By.operator(operator))
    review.refresh_from_db()
    assert review.status == S.COMPLETED
    assert review.result["decision"] == "approved" and review.result["comment"] == "looks right"
    assert review.result["decidedBy"] == "alice" and review.result["decidedAt"]
    publish = task_of(session, 3)
    assert publish.step_id == "publish" and publish.status == S.DISPATCHED
    assert publish.payload["previous_result"] == review.result
    event = TaskEvent.objects.get(task=review, new_status=S.COMPLETED)
    assert (event.actor, event.actor_user, event.reason) == (Actor.OPERATOR, operator, "approved by alice: looks right")


def test_a_rejection_runs_the_fallback_with_the_decision(q_sync, agentkit_stub, operator):
    session, review = waiting()
    engine.approval_decide(task=review, approve=False, comment="too long", by=By.operator(operator))
    review.refresh_from_db()
    assert review.status == S.REJECTED and review.result["decision"] == "rejected"
    rework = task_of(session, 3)
    assert (rework.step_id, rework.status, rework.fallback_for_id) == ("rework", S.DISPATCHED, review.pk)
    assert rework.payload["previous_result"]["comment"] == "too long"
    report(session.agent_id, "idle")
    session.refresh_from_db()
    assert session.status == SS.COMPLETED


def test_a_rejection_without_a_fallback_fails_the_session(q_sync, agentkit_stub, operator):
    session, review = waiting(review_spec("no-fallback", fallback=False))
    engine.approval_decide(task=review, approve=False, comment="no", by=By.operator(operator))
    session.refresh_from_db()
    assert session.status == SS.FAILED and "rejected by alice: no" in session.error
    # A rejection is final: it is not in the failures queue, and a retry is refused.
    assert not Task.objects.awaiting_decision().exists()
    with pytest.raises(InvalidTransition):
        engine.session_retry(session=session, by=By.operator(operator))


def test_an_approval_past_its_deadline_is_rejected_by_the_system(q_sync, agentkit_stub):
    session, review = waiting()
    assert sweeps.sweep_approval_timeouts(now=timezone.now()) == 0
    assert sweeps.scheduler_tick(now=review.timeout_at + timedelta(seconds=1)).approvals_timed_out == 1
    review.refresh_from_db()
    assert review.status == S.REJECTED and review.result["decidedBy"] == "system"
    assert "no decision within 3600s" in review.result["comment"]
    assert task_of(session, 3).step_id == "rework"
    assert TaskEvent.objects.get(task=review, new_status=S.REJECTED).actor == Actor.SYSTEM


def test_a_paused_sessions_approval_deadline_stands_still(q_sync, agentkit_stub, operator):
    session, review = waiting()
    engine.session_pause(session=session, by=By.operator(operator))
    assert sweeps.sweep_approval_timeouts(now=review.timeout_at + timedelta(seconds=1)) == 0
    engine.session_resume(session=session, by=By.operator(operator))
    review.refresh_from_db()
    assert review.status == S.WAITING_APPROVAL and review.timeout_at > timezone.now() + timedelta(minutes=59)


def test_a_decision_while_paused_is_recorded_and_the_next_step_waits_for_resume(q_sync, agentkit_stub, operator):
    session, review = waiting()
    engine.session_pause(session=session, by=By.operator(operator))
    engine.approval_decide(task=review, approve=True, by=By.operator(operator))
    assert task_of(session, 3).status == S.QUEUED and len(agentkit_stub.requests) == 1
    engine.session_resume(session=session, by=By.operator(operator))
    assert task_of(session, 3).status == S.DISPATCHED


def test_a_second_decision_is_refused(q_sync, agentkit_stub, operator):
    session, review = waiting()
    engine.approval_decide(task=review, approve=True, by=By.operator(operator))
    with pytest.raises(InvalidTransition, match="not an approval waiting for a decision"):
        engine.approval_decide(task=review, approve=False, by=By.operator(operator))
    review.refresh_from_db()
    assert review.result["decision"] == "approved"
    assert TaskEvent.objects.filter(task=review).count() == 2  # created waiting, approved


def test_only_the_named_group_decides(q_sync, agentkit_stub):
    session, review = waiting(review_spec("leads-only", approvers="leads"))
    outsider = User.objects.create_user("bob", is_staff=True)
    with pytest.raises(NotAnApprover, match="group 'leads'"):
        engine.approval_decide(task=review, approve=True, by=By.operator(outsider))
    review.refresh_from_db()
    assert review.status == S.WAITING_APPROVAL
    lead = User.objects.create_user("carol", is_staff=True)
    lead.groups.add(Group.objects.create(name="leads"))
    engine.approval_decide(task=review, approve=True, comment="ok", by=By.operator(lead))
    review.refresh_from_db()
    assert review.result["decidedBy"] == "carol"


def test_a_service_key_decides_and_an_agent_cannot(q_sync, agentkit_stub):
    session, review = waiting(review_spec("automation", approvers="leads"))
    with pytest.raises(NotAnApprover, match="agents cannot"):
        engine.approval_decide(task=review, approve=True, by=By.agent(session.agent_id))
    engine.approval_decide(task=review, approve=False, comment="policy", by=By.service_key("API key ci"))
    review.refresh_from_db()
    assert review.result["decidedBy"] == "API key ci" and review.status == S.REJECTED


def test_an_approval_as_the_first_step_starts_the_session_waiting(q_sync, agentkit_stub, operator):
    session = start(spec=review_spec("approve-first", first=True))
    session.refresh_from_db()
    assert session.status == SS.RUNNING and task_of(session).status == S.WAITING_APPROVAL
    assert not agentkit_stub.requests


def test_a_held_approval_waits_for_its_decision_once_the_definition_resumes(q_sync, agentkit_stub, operator):
    from tests.workflows.factories import WorkflowDefinitionFactory
    from tests.agents.factories import AgentFactory

    spec = review_spec("held-approval", first=True)
    definition = WorkflowDefinitionFactory(id=spec["id"], spec=spec)
    engine.definition_pause(definition=definition, by=By.operator(operator))
    session = engine.session_start(definition=definition, agent=AgentFactory(), by=By.system())
    assert task_of(session).status == S.PENDING
    engine.definition_resume(definition=definition, by=By.operator(operator))
    task = task_of(session)
    assert task.status == S.WAITING_APPROVAL and task.timeout_at is not None


def test_cancelling_a_session_cancels_its_waiting_approval(q_sync, agentkit_stub, operator):
    session, review = waiting()
    engine.session_cancel(session=session, by=By.operator(operator))
    review.refresh_from_db()
    assert review.status == S.CANCELLED
    with pytest.raises(InvalidTransition):
        engine.approval_decide(task=review, approve=True, by=By.operator(operator))
