"""End to end over real sockets: gunicorn + qcluster subprocess(es) + the scheduler loop +
the AgentKit stand-in, all against the test database. No mocks anywhere."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from sessions.models import Session, Task, TaskAttempt
from tests.e2e.harness import Stack, dump, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SAMPLE = json.loads((Path(__file__).resolve().parents[2] / "examples" / "workflows" / "sample_workflow.json").read_text())
FINAL = {Session.Status.COMPLETED, Session.Status.FAILED, Session.Status.CANCELLED}


def fast_spec(workflow_id: str, *, retries: int = 3, timeout: int = 10) -> dict:
    return {"id": workflow_id, "name": workflow_id, "tasks": [
        {"taskId": "one", "nextTaskId": "two", "maxRetries": retries, "timeoutSeconds": timeout,
         "retryBackoffSeconds": 0.2},
        {"taskId": "two", "maxRetries": retries, "timeoutSeconds": timeout, "retryBackoffSeconds": 0.2},
    ]}


def agents_known(stack: Stack, count: int) -> list[str]:
    ids = wait_until(lambda: [a["agentId"] for a in stack.standin("/_standin/agents")["agents"]] or None,
                     timeout=20, what="stand-in agents")
    assert len(ids) == count
    api = stack.api()
    wait_until(lambda: all(api.get(f"/v1/opscore/agent/{a}/state").status_code == 200 for a in ids),
               timeout=20, what="agents known to Ops-Core")
    return ids


def trigger(stack: Stack, agent_id: str, body: dict) -> str:
    response = stack.api().post(f"/v1/opscore/agent/{agent_id}/workflow", json=body)
    assert response.status_code == 202, response.text
    return response.json()["sessionId"]


def wait_all_final(stack: Stack, session_ids: list[str], timeout: float) -> dict[str, str]:
    def done():
        statuses = {str(pk): status for pk, status in Session.objects.filter(pk__in=session_ids).values_list("pk", "status")}
        return statuses if len(statuses) == len(session_ids) and set(statuses.values()) <= FINAL else None

    try:
        return wait_until(done, timeout=timeout, interval=0.5, what="all sessions final")
    except AssertionError:
        counts = Counter(Session.objects.filter(pk__in=session_ids).values_list("status", flat=True))
        tasks = Counter(Task.objects.filter(session_id__in=session_ids).values_list("status", flat=True))
        raise AssertionError(f"sessions {dict(counts)}, tasks {dict(tasks)}\n{stack.logs()}") from None


def assert_no_double_dispatch(stack: Stack) -> dict:
    stats = stack.standin("/_standin/stats")
    assert stats["duplicate_attempts"] == [], dump(stats["duplicate_attempts"])
    assert stats["overlaps"] == [], dump(stats["overlaps"])
    assert all(v <= 1 for v in stats["max_concurrent_by_agent"].values()), stats["max_concurrent_by_agent"]
    # Every attempt we fenced was POSTed at most once, and every POST was an attempt we fenced.
    fenced = Counter(f"{t}#{n}" for t, n in TaskAttempt.objects.values_list("task_id", "number"))
    posted = stats["runs_by_attempt"]
    assert set(posted) <= set(fenced), set(posted) - set(fenced)
    return stats


def test_the_upstream_sample_completes_for_an_agent_registered_through_agentkit(stack):
    stack.start_web()
    stack.start_cluster()
    stack.start_scheduler()
    stack.start_agentkit(agents=0, extra=["--with-result"])
    registered = stack.standin("/_standin/agents", {"agents": [{
        "agentId": "sample-agent-1", "agentName": "Sample agent", "version": "2.0.0",
        "capabilities": ["test_capability", "another_capability"], "contactEndpoint": "http://127.0.0.1:9/"}]})
    assert registered
    api = stack.api()
    wait_until(lambda: api.get("/v1/opscore/agent/sample-agent-1/state").status_code == 200, timeout=20,
               what="first report")
    session_id = trigger(stack, "sample-agent-1", {"workflowDefinition": SAMPLE, "initialPayload": {"run": 1}})
    statuses = wait_all_final(stack, [session_id], timeout=60)
    assert statuses[session_id] == Session.Status.COMPLETED
    session = Session.objects.get(pk=session_id)
    steps = list(session.tasks.order_by("sequence").values_list("step_id", "status"))
    assert steps == [("step_1", "completed"), ("step_2", "completed")]
    second = session.tasks.get(step_id="step_2")
    # step_2 got its own parameters plus step_1's result (the stand-in echoes its parameters).
    assert second.payload["value"] == 123
    assert second.payload["previous_result"]["echo"] == {"message": "This is the first step.", "run": 1}
    # The registration webhook enriched the agent that its first report created.
    wait_until(lambda: api.get("/v1/opscore/agents/sample-agent-1").json().get("version") == "2.0.0",
               timeout=10, what="webhook enrichment")
    assert_no_double_dispatch(stack)


def test_fifty_sessions_over_five_agents_all_complete_without_double_dispatch(stack):
    stack.start_web()
    stack.start_cluster()
    stack.start_scheduler()
    stack.start_agentkit(agents=5, work_time="0-0.05")
    agents = agents_known(stack, 5)
    spec = fast_spec("fifty")
    sessions = [trigger(stack, agents[i % 5], {"workflowDefinition": spec}) for i in range(50)]
    statuses = wait_all_final(stack, sessions, timeout=240)
    assert Counter(statuses.values()) == {Session.Status.COMPLETED: 50}
    assert Task.objects.filter(status=Task.Status.COMPLETED).count() == 100
    stats = assert_no_double_dispatch(stack)
    assert stats["runs_accepted"] == 100


def test_with_a_30_percent_failure_rate_every_session_ends_and_retries_are_recorded(stack):
    stack.start_web()
    stack.start_cluster()
    stack.start_scheduler()
    stack.start_agentkit(agents=5, work_time="0-0.05", failure_rate=0.3, extra=["--seed", "7"])
    agents = agents_known(stack, 5)
    spec = fast_spec("flaky", retries=2)
    sessions = [trigger(stack, agents[i % 5], {"workflowDefinition": spec}) for i in range(30)]
    statuses = wait_all_final(stack, sessions, timeout=240)
    assert set(statuses.values()) <= {Session.Status.COMPLETED, Session.Status.FAILED}
    failed_attempts = TaskAttempt.objects.filter(outcome=TaskAttempt.Outcome.FAILED).count()
    assert failed_attempts > 0
    # Every failed attempt of a task that went on was followed by a recorded retry.
    retried = Task.objects.filter(attempt__gt=1).count()
    assert retried > 0
    for session_id, status in statuses.items():
        if status == Session.Status.FAILED:
            dead = Task.objects.get(session_id=session_id, status=Task.Status.DEAD)
            assert dead.attempt == 3 and "retries exhausted" in Session.objects.get(pk=session_id).error
    assert_no_double_dispatch(stack)


def _busy_worker(cluster_pid: int) -> int | None:
    """A qcluster worker running a dispatch job right now (setproctitle names the job)."""
    tree, titles = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                tree[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                titles[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = tree.get(pid, 0)
            if pid == cluster_pid:
                return True
        return False

    for pid, title in titles.items():
        if "processing" in title and "send_task_job" in title and descends(pid):
            return pid
    return None


def test_killed_worker_and_agentkit_outage_lose_and_duplicate_nothing(stack):
    stack.start_web()
    cluster = stack.start_cluster()
    stack.start_scheduler()
    # A slow AgentKit keeps workers inside the POST long enough to be caught mid-job.
    stack.start_agentkit(agents=5, work_time="0.05-0.2", extra=["--answer-delay", "1"])
    agents = agents_known(stack, 5)
    # Retries outlast a 20 s outage; the step timeout (8 s) is shorter than it, so every
    # attempt in flight when AgentKit dies has timed out before AgentKit returns.
    spec = fast_spec("chaos", retries=10, timeout=8)
    sessions = [trigger(stack, agents[i % 5], {"workflowDefinition": spec}) for i in range(25)]
    wait_until(lambda: Task.objects.filter(status=Task.Status.COMPLETED).count() >= 3, timeout=60,
               what="some progress")
    # SIGKILL a worker in the middle of a dispatch job; the cluster's sentinel replaces it.
    victim = wait_until(lambda: _busy_worker(cluster.pid), timeout=30, interval=0.05, what="a busy worker")
    os.kill(victim, signal.SIGKILL)
    stack.standin("/_standin/config", {"answer_delay": 0})
    wait_until(lambda: Task.objects.filter(status=Task.Status.COMPLETED).count() >= 10, timeout=90,
               what="progress after the worker was killed")
    # Then AgentKit (and the agents it plays) dies for 20 seconds.
    first_life = assert_no_double_dispatch(stack)
    agent_rows = stack.standin("/_standin/agents")["agents"]
    stack.stop("agentkit", sig=signal.SIGKILL)
    time.sleep(20)
    # AgentKit comes back knowing its agents before it answers a /run (no 404 window).
    stack.start_agentkit(work_time="0.05-0.2", known_agents=[
        {"agentId": a["agentId"], "agentName": a.get("agentName", ""), "capabilities": a.get("capabilities", [])}
        for a in agent_rows])
    statuses = wait_all_final(stack, sessions, timeout=300)
    assert Counter(statuses.values()) == {Session.Status.COMPLETED: 25}, Counter(statuses.values())
    assert Task.objects.filter(step_id="two", status=Task.Status.COMPLETED).count() == 25
    second_life = assert_no_double_dispatch(stack)
    # No attempt was POSTed in both lives either.
    assert not set(first_life["runs_by_attempt"]) & set(second_life["runs_by_attempt"])
    assert TaskAttempt.objects.filter(outcome=TaskAttempt.Outcome.SENDING).count() == 0
    assert TaskAttempt.objects.filter(outcome=TaskAttempt.Outcome.FAILED).exists()  # the outage was felt


def test_two_clusters_at_once_never_dispatch_twice(stack):
    stack.start_web()
    stack.start_cluster("qcluster-a")
    stack.start_cluster("qcluster-b")
    stack.start_scheduler()
    stack.start_agentkit(agents=4, work_time="0-0.03")
    agents = agents_known(stack, 4)
    spec = fast_spec("two-clusters")
    sessions = [trigger(stack, agents[i % 4], {"workflowDefinition": spec}) for i in range(40)]
    statuses = wait_all_final(stack, sessions, timeout=240)
    assert Counter(statuses.values()) == {Session.Status.COMPLETED: 40}
    stats = assert_no_double_dispatch(stack)
    assert stats["runs_accepted"] == 80
