"""A dispatch POST that got no answer (read timeout, dropped connection): AgentKit may have taken
the task, so the attempt is never sent again; the agent's reports or the step timeout decide it."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from agents.agentkit import AgentKitError, run_task
from sessions import sweeps
from sessions.models import Task, TaskAttempt
from tests.sessions.test_engine import report, start, task_of

pytestmark = pytest.mark.django_db

S = Task.Status
UNANSWERED = [httpx.ReadTimeout("slow"), httpx.ReadError("reset"), httpx.RemoteProtocolError("closed")]


@pytest.mark.parametrize("exc", UNANSWERED)
def test_an_unanswered_post_leaves_the_task_dispatched_and_the_attempt_sending(q_sync, agentkit_stub, exc):
    agentkit_stub.raise_(exc)
    task = task_of(start())
    assert task.status == S.DISPATCHED and task.attempt == 1 and task.timeout_at is not None
    attempt = task.attempts.get()
    assert attempt.outcome == TaskAttempt.Outcome.SENDING and type(exc).__name__ in attempt.error
    assert len(agentkit_stub.requests) == 1


def test_the_agents_reports_then_complete_it_without_a_second_post(q_sync, agentkit_stub):
    agentkit_stub.raise_(httpx.ReadTimeout("slow"))
    session = start()
    task = task_of(session)
    agentkit_stub.answer = agentkit_stub.accept
    report(session.agent_id, "active")
    report(session.agent_id, "idle")
    task.refresh_from_db()
    assert task.status == S.COMPLETED
    assert task.attempts.get().outcome == TaskAttempt.Outcome.COMPLETED
    # Only the next step was POSTed.
    assert [b["payload"]["task_name"] for b in agentkit_stub.bodies] == ["step_1", "step_2"]


def test_with_no_report_the_step_timeout_fails_it_into_a_retry(q_sync, agentkit_stub):
    agentkit_stub.raise_(httpx.ReadTimeout("slow"))
    task = task_of(start())
    assert sweeps.sweep_timeouts(now=timezone.now()) == 0  # not before its deadline
    assert sweeps.sweep_timeouts(now=task.timeout_at + timedelta(seconds=1)) == 1
    task.refresh_from_db()
    assert task.status == S.RETRY_SCHEDULED and "no outcome within" in task.last_error
    assert task.attempts.get().outcome == TaskAttempt.Outcome.FAILED
    assert len(agentkit_stub.requests) == 1


@pytest.mark.parametrize("exc, delivered", [
    (httpx.ConnectError("refused"), False), (httpx.ConnectTimeout("slow"), False), (httpx.PoolTimeout("full"), False),
    (httpx.WriteTimeout("slow"), False), (httpx.ReadTimeout("slow"), True), (httpx.ReadError("reset"), True),
    (httpx.RemoteProtocolError("closed"), True),
])
def test_only_failures_after_the_whole_request_went_out_may_have_delivered_it(agentkit_stub, exc, delivered):
    agentkit_stub.raise_(exc)
    with pytest.raises(AgentKitError) as caught:
        run_task(agent_id="a1", message={})
    assert caught.value.maybe_delivered is delivered and not caught.value.permanent
