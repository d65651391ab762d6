"""The attention list, the failures grouped by cause with their previewed actions, and
quarantine/release from the agent page (Django's test client; the browser flows are in browser/)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent
from sessions import engine
from sessions.attention import error_class, failure_groups
from sessions.models import QuarantineEvent, Session, Task
from tests.agents.factories import AgentFactory
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.ui.helpers import failed_session

pytestmark = pytest.mark.django_db


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_error_classes_ignore_ids_names_and_numbers():
    assert error_class("AgentKit does not know agent 'a1': Agent with ID 'a1' not found.") == error_class(
        "AgentKit does not know agent 'b-2': Agent with ID 'b-2' not found.")
    assert error_class("no outcome within 300s (attempt 2)") == "no outcome within Ns (attempt N)"
    assert error_class("") == "(no error recorded)"


def test_failures_are_grouped_by_cause_and_agent_with_counts_and_times():
    forgotten, other = AgentFactory(id="forgotten"), AgentFactory(id="other")
    for n in range(3):
        failed_session(agent=forgotten, error=f"AgentKit does not know agent 'forgotten': run {n}")
    failed_session(agent=other, error="AgentKit does not know agent 'other': run 9")
    failed_session(agent=other, error="agent reported error: E1: boom")
    groups = failure_groups()
    assert [(g.agent_id, g.count) for g in groups] == [("forgotten", 3), ("other", 1), ("other", 1)]
    assert groups[0].first_seen <= groups[0].last_seen and groups[0].steps == {"step_1"}


def test_the_failures_page_shows_the_groups_and_a_group_retry_previews_its_count(staff_client, staff_operator):
    agent = AgentFactory(id="forgotten")
    dead = [failed_session(agent=agent, error=f"AgentKit does not know agent 'forgotten' ({n})") for n in range(4)]
    failed_session(error="something else")
    page = staff_client.get(reverse("sessions:failure-list"))
    group = failure_groups()[0]
    assert page.status_code == 200 and f'data-group="{group.fingerprint}"' in page.content.decode()
    preview = staff_client.get(reverse("sessions:failure-group-action", args=[group.fingerprint, "retry"]))
    assert preview.status_code == 200 and preview.context["group"].count == 4
    assert 'data-testid="confirm-count">4<' in preview.content.decode()
    assert all(Task.objects.get(pk=t.pk).status == Task.Status.DEAD for t in dead)  # nothing happened yet
    response = staff_client.post(reverse("sessions:failure-group-action", args=[group.fingerprint, "retry"]),
                                 {"reason": "AgentKit fixed"}, follow=True)
    assert "Retried 4 task(s) of the group." in messages_of(response)
    assert all(Task.objects.get(pk=t.pk).status == Task.Status.QUEUED for t in dead)
    assert Task.objects.filter(status=Task.Status.DEAD).count() == 1


def test_a_group_quarantine_and_drain_need_a_reason_and_act_on_its_agent(staff_client, staff_operator):
    agent = AgentFactory(id="flaky")
    failed_session(agent=agent, error="AgentKit answered 503: down")
    group = failure_groups()[0]
    url = reverse("sessions:failure-group-action", args=[group.fingerprint, "quarantine"])
    preview = staff_client.get(url)
    assert preview.status_code == 200 and "Quarantine agent flaky?" in preview.content.decode()
    response = staff_client.post(url, {"reason": ""}, follow=True)
    assert any(m.startswith("Nothing done") for m in messages_of(response))
    response = staff_client.post(url, {"reason": "503s all day"}, follow=True)
    agent.refresh_from_db()
    assert agent.quarantine_state == Agent.Quarantine.QUARANTINED and agent.quarantined_by == staff_operator
    drain = reverse("sessions:failure-group-action", args=[group.fingerprint, "drain"])
    staff_client.post(drain, {"reason": "maintenance"})
    agent.refresh_from_db()
    assert agent.drained_at is not None and agent.drained_by == staff_operator


def test_an_unknown_group_or_action_is_a_404(staff_client):
    assert staff_client.get(reverse("sessions:failure-group-action", args=["0123456789ab", "retry"])).status_code == 404
    assert staff_client.get("/failures/groups/0123456789ab/explode/").status_code == 404
    response = staff_client.post(reverse("sessions:failure-group-action", args=["0123456789ab", "retry"]), follow=True)
    assert any("no failures with that cause" in m or "has no failures" in m for m in messages_of(response))


def test_a_read_only_operator_sees_groups_but_may_not_act(read_only_client):
    failed_session()
    group = failure_groups()[0]
    url = reverse("sessions:failure-group-action", args=[group.fingerprint, "retry"])
    assert read_only_client.get(url).status_code == 200
    assert read_only_client.post(url, {"reason": "x"}).status_code == 403
    assert read_only_client.post(reverse("agents:agent-quarantine", args=[group.agent_id]),
                                 {"reason": "x"}).status_code == 403


def test_the_attention_list_says_what_is_wrong_and_offers_the_action(staff_client):
    now = timezone.now()
    sick = AgentFactory(id="sick")
    engine.agent_quarantine(agent=sick, by=engine.By.system(), reason="3 failures in a row")
    silent = AgentFactory(id="silent", last_seen_at=now - timedelta(hours=2))
    TaskFactory(agent=silent, session=SessionFactory(agent=silent, status=Session.Status.RUNNING),
                status=Task.Status.DISPATCHED, attempt=1, timeout_at=now + timedelta(minutes=1))
    waiting = TaskFactory(status=Task.Status.QUEUED, capability="publish", waiting_since=now,
                          queue_deadline_at=now + timedelta(minutes=30),
                          routing_note="waiting for an agent with capability 'publish' (no agent has it)")
    old = SessionFactory(status=Session.Status.RUNNING, created_at=now - timedelta(hours=3),
                         spec_snapshot={"id": "w", "name": "w", "tasks": [{"taskId": "s", "timeoutSeconds": 60}]})
    failed_session(error="AgentKit answered 503")
    page = staff_client.get(reverse("sessions:attention"))
    html = page.content.decode()
    attention = page.context["attention"]
    assert [a.pk for a in attention.quarantined] == ["sick"] and 'data-testid="release-sick"' in html
    assert [a.pk for a, _ in attention.stale_with_work] == ["silent"] and "no report for" in html
    assert [t.pk for t in attention.waiting] == [waiting.pk] and "waiting for an agent with capability" in html
    assert [s.pk for s, _ in attention.overdue] == [old.pk] and "timeouts add up to 60s" in html
    assert len(attention.groups) == 1 and "AgentKit answered N<" in html
    dashboard = staff_client.get(reverse("sessions:dashboard")).content.decode()
    assert 'data-testid="attention-link"' in dashboard
    response = staff_client.post(reverse("agents:agent-release", args=["sick"]), {"next": "attention"})
    assert response.status_code == 302 and response.url == reverse("sessions:attention")
    assert Agent.objects.get(pk="sick").quarantine_state == ""


def test_nothing_to_attend_to_says_so(staff_client):
    assert 'data-testid="attention-empty"' in staff_client.get(reverse("sessions:attention")).content.decode()


def test_the_agent_page_quarantines_with_a_reason_and_releases(staff_client, staff_operator):
    agent = AgentFactory(id="a1")
    detail = reverse("agents:agent-detail", args=["a1"])
    assert 'data-testid="quarantine-button"' in staff_client.get(detail).content.decode()
    response = staff_client.post(reverse("agents:agent-quarantine", args=["a1"]), {"reason": ""}, follow=True)
    assert any(m.startswith("Not quarantined") for m in messages_of(response))
    response = staff_client.post(reverse("agents:agent-quarantine", args=["a1"]), {"reason": "smoke"}, follow=True)
    assert any("is quarantined until you release it" in m for m in messages_of(response))
    html = response.content.decode()
    assert 'data-testid="release"' in html and "smoke" in html and "Quarantine history" in html
    response = staff_client.post(reverse("agents:agent-quarantine", args=["a1"]), {"reason": "again"}, follow=True)
    assert any("already quarantined" in m for m in messages_of(response))
    response = staff_client.post(reverse("agents:agent-release", args=["a1"]), {"reason": "fixed"}, follow=True)
    assert any("is released" in m for m in messages_of(response))
    response = staff_client.post(reverse("agents:agent-release", args=["a1"]), {}, follow=True)
    assert any("is not quarantined" in m for m in messages_of(response))
    assert [e.actor_user for e in QuarantineEvent.objects.order_by("id")] == [staff_operator, staff_operator]
    assert staff_client.post(reverse("agents:agent-quarantine", args=["nobody"]), {"reason": "x"}).status_code == 404
