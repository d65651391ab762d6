"""Routing and quarantine end to end over real sockets: gunicorn, a qcluster, the scheduler and
the stand-in playing agents with different capabilities, agents AgentKit forgot (404) and agents
that lose every task. No mocks."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent
from sessions.models import QuarantineEvent, Session, Task
from tests.e2e.harness import Stack, wait_until
from tests.e2e.test_engine_e2e import assert_no_double_dispatch, trigger, wait_all_final

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
Q = Agent.Quarantine


def step(task_id: str, capability: str, nxt: str | None = None, **extra) -> dict:
    return {"taskId": task_id, "agentCapability": capability, "nextTaskId": nxt, "maxRetries": 3,
            "timeoutSeconds": 10, "retryBackoffSeconds": 0.2, **extra}


def start(stack: Stack, agents: list[dict], **settings: str) -> None:
    stack.settings.update(settings)
    stack.start_web()
    stack.start_cluster()
    stack.start_scheduler()
    stack.start_agentkit()
    stack.standin("/_standin/agents", {"agents": agents})
    api = stack.api()
    wait_until(lambda: all(api.get(f"/v1/opscore/agents/{a['agentId']}").json().get("capabilities")
                           == a["capabilities"] for a in agents), timeout=20, what="agents known with capabilities")


def test_three_steps_needing_three_capabilities_complete_across_three_agents(stack):
    start(stack, [{"agentId": "fetcher", "capabilities": ["fetch"]},
                  {"agentId": "summariser", "capabilities": ["summarise"]},
                  {"agentId": "publisher", "capabilities": ["publish"]}])
    spec = {"id": "report", "name": "Report", "tasks": [
        step("fetch", "fetch", "summarise"), step("summarise", "summarise", "publish"), step("publish", "publish")]}
    session_id = trigger(stack, "fetcher", {"workflowDefinition": spec})
    assert wait_all_final(stack, [session_id], timeout=60)[session_id] == Session.Status.COMPLETED
    tasks = list(Task.objects.filter(session_id=session_id).order_by("sequence").values_list("agent_id", "routing_note"))
    assert tasks == [("fetcher", ""),
                     ("summariser", "routed to summariser: session agent fetcher lacks capability 'summarise'"),
                     ("publisher", "routed to publisher: session agent fetcher lacks capability 'publish'")]
    stats = assert_no_double_dispatch(stack)
    assert stats["runs_by_agent"] == {"fetcher": 1, "summariser": 1, "publisher": 1}


def test_an_agent_agentkit_forgot_is_quarantined_and_its_sessions_finish_on_capable_agents(stack):
    start(stack, [{"agentId": "forgotten", "capabilities": ["fetch"]},
                  {"agentId": "capable-1", "capabilities": ["fetch"]},
                  {"agentId": "capable-2", "capabilities": ["fetch", "other"]}],
          OPSCORE_QUARANTINE_THRESHOLD="3", OPSCORE_QUARANTINE_COOLDOWN_SECONDS="600")
    assert httpx.delete(f"{stack.agentkit_url}/_standin/agents/forgotten?webhook=0").status_code == 200
    spec = {"id": "fetch-twice", "name": "Fetch twice", "tasks": [step("one", "fetch", "two"), step("two", "fetch")]}
    sessions = [trigger(stack, "forgotten", {"workflowDefinition": spec}) for _ in range(12)]
    statuses = wait_all_final(stack, sessions, timeout=180)
    assert Counter(statuses.values()) == {Session.Status.COMPLETED: 12}
    forgotten = Agent.objects.get(pk="forgotten")
    assert forgotten.quarantine_state == Q.QUARANTINED
    event = QuarantineEvent.objects.get(agent=forgotten)
    assert len(event.failures) == 3 and all("does not know agent 'forgotten'" in f["error"] for f in event.failures)
    stats = assert_no_double_dispatch(stack)
    assert stats["responses"].get("404") == 3  # nothing went to it after the quarantine
    assert "forgotten" not in stats["runs_by_agent"]
    assert sum(stats["runs_by_agent"].values()) == 24  # every step ran once on a capable agent
    assert not Task.objects.filter(status=Task.Status.DEAD).exists()


def test_a_lost_forward_agent_is_quarantined_probed_after_the_cool_down_and_released(stack):
    start(stack, [{"agentId": "loser", "capabilities": ["fetch"], "outcome": "lose"},
                  {"agentId": "helper", "capabilities": ["fetch"]}],
          OPSCORE_QUARANTINE_THRESHOLD="2", OPSCORE_QUARANTINE_COOLDOWN_SECONDS="3")
    spec = {"id": "lossy", "name": "Lossy", "tasks": [step("one", "fetch", timeoutSeconds=2)]}
    sessions = [trigger(stack, "loser", {"workflowDefinition": spec}) for _ in range(3)]
    assert Counter(wait_all_final(stack, sessions, timeout=90).values()) == {Session.Status.COMPLETED: 3}
    loser = Agent.objects.get(pk="loser")
    assert loser.quarantine_state == Q.QUARANTINED
    assert "no report at all" in loser.quarantine_reason
    # The agent works again; once its cool-down is over, a session for it is the probe.
    response = httpx.patch(f"{stack.agentkit_url}/_standin/agents/loser", json={"outcome": None})
    assert response.status_code == 200
    wait_until(lambda: Agent.objects.get(pk="loser").probe_due(), timeout=30, what="cool-down over")
    probe_session = trigger(stack, "loser", {"workflowDefinition": spec})
    assert wait_all_final(stack, [probe_session], timeout=60)[probe_session] == Session.Status.COMPLETED
    probe = Task.objects.get(session_id=probe_session)
    assert probe.agent_id == "loser" and probe.probe
    wait_until(lambda: Agent.objects.get(pk="loser").quarantine_state == Q.NONE, timeout=10, what="release")
    assert list(QuarantineEvent.objects.filter(agent_id="loser").order_by("created_at", "id")
                .values_list("new_state", flat=True)) == [Q.QUARANTINED, Q.PROBING, Q.NONE]
    assert_no_double_dispatch(stack)


def test_with_no_capable_agent_the_task_waits_on_the_attention_list_then_times_out_into_its_fallback(stack):
    from django.contrib.auth.models import User

    start(stack, [{"agentId": "fetch-only", "capabilities": ["fetch"]}])
    spec = {"id": "publish-or-clean-up", "name": "Publish or clean up", "tasks": [
        step("publish", "publish", maxRetries=0, queueTimeoutSeconds=4, fallbackTaskId="cleanup"),
        step("cleanup", "fetch")]}
    session_id = trigger(stack, "fetch-only", {"workflowDefinition": spec})
    waiting = wait_until(lambda: Task.objects.filter(session_id=session_id, waiting_since__isnull=False).first(),
                         timeout=20, what="the task waiting for an agent")
    assert waiting.status == Task.Status.QUEUED
    assert waiting.routing_note.startswith("waiting for an agent with capability 'publish'")
    client = Client()
    client.force_login(User.objects.create_superuser("e2e-operator", password="x"))
    page = client.get(reverse("sessions:attention"))
    assert page.status_code == 200 and str(waiting.pk) in page.content.decode()
    assert "waiting for an agent with capability" in page.content.decode()
    assert wait_all_final(stack, [session_id], timeout=60)[session_id] == Session.Status.COMPLETED
    publish = Task.objects.get(pk=waiting.pk)
    assert publish.status == Task.Status.DEAD and publish.last_error.startswith("no agent could take the task within")
    cleanup = Task.objects.get(session_id=session_id, fallback_for=publish)
    assert cleanup.agent_id == "fetch-only" and cleanup.status == Task.Status.COMPLETED
    assert timezone.now() >= publish.finished_at
    assert_no_double_dispatch(stack)
