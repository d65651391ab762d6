"""Pause and the fleet switch end to end, over real sockets: gunicorn, a qcluster, the scheduler and the
AgentKit stand-in. Work paused mid-run is neither lost nor sent twice."""

from __future__ import annotations

import time
from collections import Counter

from django.utils import timezone

from sessions.models import Session, Task, TaskAttempt
from tests.e2e.harness import wait_until
from tests.e2e.test_engine_e2e import (  # noqa: F401 (pytestmark is the module's marks)
    agents_known,
    assert_no_double_dispatch,
    pytestmark,
    trigger,
    wait_all_final,
)

SS = Session.Status


def three_steps(workflow_id: str, work_time: str) -> dict:
    step = {"maxRetries": 2, "timeoutSeconds": 30, "retryBackoffSeconds": 0.2,
            "parameters": {"_standin": {"work_time": work_time}}}
    return {"id": workflow_id, "name": workflow_id, "tasks": [
        {"taskId": "one", "nextTaskId": "two", **step}, {"taskId": "two", "nextTaskId": "three", **step},
        {"taskId": "three", **step}]}


def attempts_after(moment, session_ids) -> list:
    return list(TaskAttempt.objects.filter(task__session_id__in=session_ids, reference_at__gt=moment)
                .values_list("task__step_id", "number"))


def assert_every_step_ran_once(session_ids, steps: list[str]) -> None:
    for session_id in session_ids:
        rows = list(Task.objects.filter(session_id=session_id).order_by("sequence")
                    .values_list("step_id", "status", "attempt"))
        assert rows == [(step, "completed", 1) for step in steps], (session_id, rows)


def start_with_agents(stack, count: int) -> list[str]:
    """The whole stack, with `count` stand-in agents (work time set per step) known to Ops-Core."""
    stack.start_web()
    stack.start_cluster()
    stack.start_scheduler()
    stack.start_agentkit(agents=count, work_time="0")
    return agents_known(stack, count)


def test_twenty_sessions_paused_mid_run_finish_their_step_wait_and_complete_after_resume(stack):
    agents = start_with_agents(stack, 20)
    spec = three_steps("pause-e2e", "3-4")
    sessions = [trigger(stack, agent, {"workflowDefinition": spec}) for agent in agents]
    wait_until(lambda: Task.objects.filter(session_id__in=sessions, step_id="one").exclude(status="queued")
               .count() == 20, timeout=30, interval=0.1, what="every first step dispatched")
    api = stack.api()
    in_flight = Task.objects.filter(session_id__in=sessions, status__in=Task.IN_FLIGHT).count()
    for session_id in sessions:
        response = api.post(f"/v1/opscore/sessions/{session_id}/pause", json={"reason": "e2e pause"})
        assert response.status_code == 200, response.text
    paused_at = timezone.now()
    assert in_flight >= 10, in_flight  # paused mid-run: most first steps were still working
    assert Counter(Session.objects.filter(pk__in=sessions).values_list("status", flat=True)) == {SS.PAUSED: 20}

    # The steps in flight finish and record their outcome; the next steps wait, unsent.
    wait_until(lambda: not Task.objects.filter(session_id__in=sessions, status__in=Task.IN_FLIGHT).exists(),
               timeout=30, what="the steps in flight to finish")
    time.sleep(4)  # longer than OPSCORE_LOST_JOB_SECONDS (3 s): the sweeps leave paused work alone
    assert attempts_after(paused_at, sessions) == []
    # Each session has exactly its next step waiting, never sent; nothing is in flight.
    waiting = Task.objects.filter(session_id__in=sessions, status="queued")
    assert sorted(waiting.values_list("attempt", flat=True)) == [0] * 20
    assert len(set(waiting.values_list("session_id", flat=True))) == 20
    assert not Task.objects.filter(session_id__in=sessions, status__in=Task.IN_FLIGHT).exists()
    assert Counter(Session.objects.filter(pk__in=sessions).values_list("status", flat=True)) == {SS.PAUSED: 20}

    for session_id in sessions:
        assert api.post(f"/v1/opscore/sessions/{session_id}/resume", json={}).status_code == 200
    statuses = wait_all_final(stack, sessions, timeout=60)
    assert Counter(statuses.values()) == {SS.COMPLETED: 20}
    assert_every_step_ran_once(sessions, ["one", "two", "three"])
    stats = assert_no_double_dispatch(stack)
    assert stats["runs_accepted"] == 60


def test_the_fleet_switch_off_and_on_under_load_loses_and_duplicates_nothing(stack):
    agents = start_with_agents(stack, 8)
    spec = three_steps("fleet-e2e", "0.2-0.6")
    api = stack.api()
    sessions = [trigger(stack, agents[i % 8], {"workflowDefinition": spec}) for i in range(24)]
    wait_until(lambda: Task.objects.filter(session_id__in=sessions, status="completed").count() >= 10,
               timeout=30, what="some progress")
    response = api.post("/v1/opscore/fleet/pause", json={"reason": "e2e maintenance"})
    assert response.status_code == 200 and response.json()["dispatch"] == "off"
    off_at = timezone.now()
    # Triggers and reports are still accepted while it is off.
    sessions += [trigger(stack, agents[i % 8], {"workflowDefinition": spec}) for i in range(8)]
    wait_until(lambda: not Task.objects.filter(status__in=Task.IN_FLIGHT).exists(), timeout=30,
               what="the steps in flight to finish")
    time.sleep(4)  # past OPSCORE_LOST_JOB_SECONDS: nothing is re-sent while dispatch is off
    assert attempts_after(off_at, sessions) == []
    assert not Task.objects.filter(status__in=Task.IN_FLIGHT).exists()
    assert Session.objects.filter(pk__in=sessions).exclude(status=SS.COMPLETED).count() > 0  # work is held

    response = api.post("/v1/opscore/fleet/resume", json={"reason": "done"})
    assert response.status_code == 200 and response.json()["dispatch"] == "on"
    statuses = wait_all_final(stack, sessions, timeout=60)
    assert Counter(statuses.values()) == {SS.COMPLETED: 32}
    assert_every_step_ran_once(sessions, ["one", "two", "three"])
    stats = assert_no_double_dispatch(stack)
    assert stats["runs_accepted"] == 96
