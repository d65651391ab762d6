"""An operator's night, in a real browser: log in, watch, start, cancel, retry, edit."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from agents.models import Agent
from sessions import engine
from sessions.models import Task
from tests.agents.factories import AgentFactory
from tests.ui.helpers import failed_session
from tests.workflows.factories import WorkflowDefinitionFactory, two_step_spec

pytestmark = pytest.mark.django_db(transaction=True)


def test_login_is_required_and_the_dashboard_shows_the_fleet(page, live_server, ui_operator, artifacts):
    now = timezone.now()
    AgentFactory.create_batch(3, state=Agent.State.IDLE)
    AgentFactory(state=Agent.State.ACTIVE)
    AgentFactory(state=Agent.State.ERROR, last_seen_at=now - timedelta(hours=2))
    failed_session()
    definition = WorkflowDefinitionFactory(id="nightly-report")
    for _ in range(2):
        engine.session_start(definition=definition, agent=AgentFactory(), by=engine.By.system())

    page.set_default_timeout(15_000)
    page.goto(live_server.url + "/sessions/")
    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/sessions/")
    page.fill("input[name=username]", "olivia")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    page.fill("input[name=username]", "olivia")
    page.fill("input[name=password]", "correct-horse-battery")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/sessions/")

    page.click("text=Dashboard")
    # 3 idle agents, plus the idle agents of the failed session and of the two pending sessions.
    expect(page.get_by_test_id("agents-idle").locator(".n")).to_have_text("6")
    expect(page.get_by_test_id("agents-active").locator(".n")).to_have_text("1")
    expect(page.get_by_test_id("agents-stale").locator(".n")).to_have_text("1")
    expect(page.get_by_test_id("sessions-pending").locator(".n")).to_have_text("2")
    expect(page.get_by_test_id("sessions-failed").locator(".n")).to_have_text("1")
    expect(page.get_by_test_id("failures-total").locator(".n")).to_have_text("1")
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    page.get_by_test_id("failures-total").click()
    expect(page).to_have_url(f"{live_server.url}/failures/")
    expect(page.locator("tr[data-task]")).to_have_count(1)


def test_the_agent_list_refreshes_itself_and_keeps_its_filter(logged_in, live_server):
    page = logged_in
    AgentFactory(id="already-here", state=Agent.State.IDLE)
    page.goto(live_server.url + "/agents/?state=idle")
    expect(page.locator("tr[data-agent]")).to_have_count(1)
    AgentFactory(id="newcomer", state=Agent.State.IDLE)
    AgentFactory(id="busy-one", state=Agent.State.ACTIVE)  # filtered out
    expect(page.locator("tr[data-agent=newcomer]")).to_be_visible()  # no reload: the list polls
    expect(page.locator("tr[data-agent]")).to_have_count(2)
    expect(page.locator("select[name=state]")).to_have_value("idle")
    assert page.url.endswith("/agents/?state=idle")


def test_cancel_a_running_session(logged_in, live_server, standin, q_sync):
    page = logged_in
    standin.configure(work_time=60)  # the agent stays busy (and quiet) until we cancel
    standin.register(agent_id="slow-worker")
    page.goto(live_server.url + "/agents/")
    expect(page.locator("tr[data-agent=slow-worker]")).to_contain_text("idle")
    session = engine.session_start(definition=WorkflowDefinitionFactory(), agent=Agent.objects.get(pk="slow-worker"),
                                   by=engine.By.system())
    page.goto(f"{live_server.url}/sessions/{session.pk}/")
    expect(page.locator("[data-step=step_1] [data-testid=task-status]")).to_have_text("dispatched")
    assert standin.report("slow-worker", "active", {}) == 202  # the agent says it is working on it
    expect(page.locator("[data-step=step_1] [data-testid=task-status]")).to_have_text("running")  # page polls
    expect(page.get_by_test_id("session-status")).to_have_text("running")
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("form[action$='/cancel/'] input[name=reason]", "customer withdrew the request")
    page.click("button:has-text('Cancel session')")
    expect(page.get_by_text("Session cancelled.")).to_be_visible()
    expect(page.get_by_test_id("session-status")).to_have_text("cancelled")
    expect(page.locator("[data-step=step_1] [data-testid=task-status]")).to_have_text("cancelled")
    expect(page.get_by_text("customer withdrew the request").last).to_be_visible()  # session history
    expect(page.get_by_test_id("event-actor").last).to_have_text("operator olivia")
    assert Task.objects.get(session=session).status == Task.Status.CANCELLED


def test_retry_a_failed_task_from_the_failures_queue(logged_in, live_server, standin, q_sync):
    page = logged_in
    # AgentKit does not know this agent yet: /run answers 404, a permanent failure.
    session = engine.session_start(definition=WorkflowDefinitionFactory(), agent=AgentFactory(id="lost-agent"),
                                   by=engine.By.system())
    task = session.tasks.get()
    task.refresh_from_db()
    assert task.status == Task.Status.DEAD

    page.click("text=Failures")
    row = page.locator(f"tr[data-task='{task.pk}']")
    expect(row).to_contain_text("does not know agent")
    row.locator("input[name=ids]").check()
    page.click("button:has-text('Retry selected')")
    expect(page.get_by_test_id("confirm-count")).to_contain_text("1 selected task")
    standin.register(agent_id="lost-agent")  # the agent is back
    page.fill("input[name=reason]", "agent re-registered")
    page.get_by_test_id("confirm-retry").click()
    expect(page.get_by_text("Retried 1 task(s).")).to_be_visible()
    expect(page.locator("tr[data-task]")).to_have_count(0)
    page.goto(f"{live_server.url}/sessions/{session.pk}/")
    expect(page.get_by_test_id("session-status")).to_have_text("completed", timeout=30_000)
    expect(page.get_by_text("agent re-registered").first).to_be_attached()


def test_edit_a_definition_and_see_a_validation_error(logged_in, live_server):
    page = logged_in
    definition = WorkflowDefinitionFactory(id="ticket-flow")
    page.goto(f"{live_server.url}/workflows/ticket-flow/")
    page.click("text=Edit")
    broken = two_step_spec("ticket-flow")
    broken["tasks"][1]["nextTaskId"] = "nowhere"
    page.fill("textarea[name=document]", json.dumps(broken, indent=2))
    page.click("button:has-text('Save')")
    errors = page.get_by_test_id("spec-errors")
    expect(errors).to_contain_text("tasks.1.nextTaskId")
    expect(errors).to_contain_text("nextTaskId 'nowhere' of step 'step_2' does not name a step")
    expect(page.locator("textarea[name=document]")).to_contain_text("nowhere")  # nothing typed is lost
    definition.refresh_from_db()
    assert definition.revision == 1

    fixed = two_step_spec("ticket-flow")
    fixed["tasks"][0]["maxRetries"] = 9
    page.fill("textarea[name=document]", json.dumps(fixed, indent=2))
    page.click("button:has-text('Save')")
    expect(page.get_by_text("Saved revision 2")).to_be_visible()
    definition.refresh_from_db()
    assert definition.spec["tasks"][0]["maxRetries"] == 9
