"""What needs a person, in a real browser: retry a whole failure group after its preview, the
attention list, and quarantine and release from the agent page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from agents.models import Agent
from sessions import engine
from sessions.attention import failure_groups
from sessions.models import QuarantineEvent, Task
from tests.agents.factories import AgentFactory
from tests.sessions.factories import TaskFactory
from tests.ui.helpers import failed_session

pytestmark = pytest.mark.django_db(transaction=True)


def test_retry_a_whole_failure_group_after_the_preview(logged_in, live_server, artifacts):
    page = logged_in
    forgotten = AgentFactory(id="forgotten")
    dead = [failed_session(agent=forgotten, error=f"AgentKit does not know agent 'forgotten': attempt {n}")
            for n in range(3)]
    failed_session(error="agent reported error: E42: disk full")
    page.goto(live_server.url + "/failures/")
    groups = page.get_by_test_id("failure-groups")
    expect(groups.locator("tr[data-group]")).to_have_count(2)
    group = groups.locator("tr[data-group]").first
    expect(group).to_contain_text("forgotten")
    expect(group.get_by_test_id("group-count")).to_have_text("3")
    page.screenshot(path=str(artifacts / "failure-groups.png"), full_page=True)
    group.get_by_test_id("group-retry").click()
    expect(page.get_by_test_id("confirm-count")).to_have_text("3")
    assert all(Task.objects.get(pk=t.pk).status == Task.Status.DEAD for t in dead)  # only a preview so far
    page.fill("input[name=reason]", "AgentKit knows it again")
    page.get_by_test_id("confirm-group-action").click()
    expect(page.get_by_text("Retried 3 task(s) of the group.")).to_be_visible()
    assert all(Task.objects.get(pk=t.pk).status == Task.Status.QUEUED for t in dead)
    expect(page.get_by_test_id("failure-groups").locator("tr[data-group]")).to_have_count(1)
    assert [g.count for g in failure_groups()] == [1]


def test_the_attention_list_from_the_dashboard_and_a_release_from_it(logged_in, live_server, artifacts):
    page = logged_in
    sick = AgentFactory(id="sick")
    engine.agent_quarantine(agent=sick, by=engine.By.system(), reason="3 failures in a row: 404")
    now = timezone.now()
    waiting = TaskFactory(status=Task.Status.QUEUED, capability="publish", waiting_since=now,
                          queue_deadline_at=now + timedelta(minutes=30),
                          routing_note="waiting for an agent with capability 'publish' (nobody has it)")
    page.goto(live_server.url + "/")
    expect(page.get_by_test_id("agents-quarantined").locator(".n")).to_have_text("1")
    expect(page.get_by_test_id("tasks-waiting").locator(".n")).to_have_text("1")
    page.get_by_test_id("attention-link").click()
    expect(page).to_have_url(live_server.url + "/attention/")
    expect(page.get_by_test_id("attention-quarantined")).to_contain_text("3 failures in a row: 404")
    expect(page.locator(f"tr[data-task='{waiting.pk}']")).to_contain_text("waiting for an agent with capability")
    page.screenshot(path=str(artifacts / "attention.png"), full_page=True)
    page.get_by_test_id("attention-quarantined").locator("input[name=reason]").fill("AgentKit restarted")
    page.get_by_test_id("release-sick").click()
    expect(page.get_by_text("Agent sick is released and takes tasks again.")).to_be_visible()
    expect(page.get_by_test_id("attention-quarantined")).to_have_count(0)
    assert Agent.objects.get(pk="sick").quarantine_state == ""


def test_quarantine_and_release_from_the_agent_page(logged_in, live_server, ui_operator):
    page = logged_in
    AgentFactory(id="wobbly")
    page.goto(live_server.url + "/agents/wobbly/")
    expect(page.get_by_test_id("quarantine")).to_have_text("no")
    page.get_by_test_id("quarantine-button").click()  # the reason is required: the browser refuses
    expect(page.get_by_test_id("quarantine")).to_have_text("no")
    page.locator("form:has([data-testid=quarantine-button]) input[name=reason]").fill("answers 503 all night")
    page.get_by_test_id("quarantine-button").click()
    expect(page.get_by_text("is quarantined until you release it")).to_be_visible()
    expect(page.get_by_test_id("quarantine")).to_contain_text("quarantined")
    expect(page.get_by_test_id("quarantine")).to_contain_text("answers 503 all night")
    expect(page.get_by_test_id("quarantine")).to_contain_text("until released by hand")
    page.get_by_test_id("release").click()
    expect(page.get_by_text("Agent wobbly is released and takes tasks again.")).to_be_visible()
    expect(page.get_by_test_id("quarantine")).to_have_text("no")
    assert [e.actor_user for e in QuarantineEvent.objects.order_by("id")] == [ui_operator, ui_operator]
