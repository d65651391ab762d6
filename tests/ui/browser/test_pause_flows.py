"""Operators in the loop, in a real browser: pause and resume a session, decide approvals from the inbox,
and the maintenance banner. The AgentKit stand-in plays the agents over real HTTP."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from agents.models import Agent
from sessions import engine
from sessions.models import Task
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def slow_first_step_spec() -> dict:
    return {"id": "pausable", "name": "Pausable", "tasks": [
        {"taskId": "step_1", "parameters": {"_standin": {"work_time": "2-2"}}, "nextTaskId": "step_2"},
        {"taskId": "step_2"}]}


def review_spec() -> dict:
    return {"id": "reviewed-summary", "name": "Reviewed summary", "tasks": [
        {"taskId": "prepare", "nextTaskId": "review"},
        {"taskId": "review", "type": "approval", "name": "Approve the summary", "nextTaskId": "publish",
         "fallbackTaskId": "rework"},
        {"taskId": "publish"}, {"taskId": "rework"}]}


def step_status(page, step: str):
    return page.locator(f"[data-step={step}] [data-testid=task-status]")


def test_pause_and_resume_a_running_session_from_its_page(logged_in, live_server, standin, q_sync, artifacts):
    page = logged_in
    standin.register(agent_id="pausable-agent")
    page.goto(live_server.url + "/agents/")
    expect(page.locator("tr[data-agent=pausable-agent]")).to_contain_text("idle")
    spec = slow_first_step_spec()
    session = engine.session_start(definition=WorkflowDefinitionFactory(id=spec["id"], spec=spec),
                                   agent=Agent.objects.get(pk="pausable-agent"), by=engine.By.system())
    page.goto(f"{live_server.url}/sessions/{session.pk}/")
    expect(step_status(page, "step_1")).to_have_text("dispatched")
    page.fill("form[action$='/pause/'] input[name=reason]", "checking the prompt")
    page.get_by_test_id("pause-session").click()
    expect(page.get_by_text("Session paused")).to_be_visible()
    expect(page.get_by_test_id("session-status")).to_have_text("paused")
    # The step in flight finishes; the next one waits.
    expect(step_status(page, "step_1")).to_have_text("completed", timeout=20_000)
    expect(step_status(page, "step_2")).to_have_text("queued")
    page.screenshot(path=str(artifacts / "session-paused.png"), full_page=True)
    assert Task.objects.get(session=session, step_id="step_2").attempt == 0
    page.fill("form[action$='/resume/'] input[name=reason]", "prompt is fine")
    page.get_by_test_id("resume-session").click()
    expect(page.get_by_text("Session resumed.")).to_be_visible()
    expect(page.get_by_test_id("session-status")).to_have_text("completed", timeout=20_000)
    expect(page.get_by_text("checking the prompt").last).to_be_visible()  # who and why, in the history
    expect(page.get_by_text("prompt is fine").last).to_be_visible()


def test_approve_one_session_and_reject_another_from_the_inbox(logged_in, live_server, standin, q_sync, artifacts):
    page = logged_in
    for agent_id in ("writer-1", "writer-2"):
        standin.register(agent_id=agent_id)
    page.goto(live_server.url + "/agents/")
    expect(page.locator("tr[data-agent=writer-2]")).to_contain_text("idle")
    spec = review_spec()
    definition = WorkflowDefinitionFactory(id=spec["id"], spec=spec)
    approved, rejected = (engine.session_start(definition=definition, agent=Agent.objects.get(pk=agent_id),
                                               by=engine.By.system()) for agent_id in ("writer-1", "writer-2"))
    page.goto(live_server.url + "/approvals/")
    expect(page.locator("[data-approval]")).to_have_count(2, timeout=20_000)  # the inbox polls
    page.reload()  # the nav's count is drawn with the page
    expect(page.get_by_test_id("nav-approvals")).to_contain_text("2")
    expect(page.locator(f"[data-session='{approved.pk}'] [data-testid=previous-result]")).to_be_visible()
    page.screenshot(path=str(artifacts / "approvals-inbox.png"), full_page=True)

    card = page.locator(f"[data-session='{approved.pk}']")
    card.locator("textarea[name=comment]").fill("looks right")
    card.get_by_test_id("approve").click()
    expect(page.get_by_text("Approved 'Approve the summary'")).to_be_visible()
    card = page.locator(f"[data-session='{rejected.pk}']")
    card.locator("textarea[name=comment]").fill("too long, shorten it")
    card.get_by_test_id("reject").click()
    expect(page.get_by_text("Rejected 'Approve the summary'")).to_be_visible()
    expect(page.get_by_test_id("no-approvals")).to_be_visible()

    page.goto(f"{live_server.url}/sessions/{approved.pk}/")
    expect(page.get_by_test_id("session-status")).to_have_text("completed", timeout=20_000)
    expect(step_status(page, "publish")).to_have_text("completed")
    expect(page.locator("[data-step=rework]")).to_have_count(0)
    page.goto(f"{live_server.url}/sessions/{rejected.pk}/")
    expect(page.get_by_test_id("session-status")).to_have_text("completed", timeout=20_000)
    expect(step_status(page, "review")).to_have_text("rejected")
    expect(step_status(page, "rework")).to_have_text("completed")
    expect(page.locator("[data-step=publish]")).to_have_count(0)
    review = Task.objects.get(session=rejected, step_id="review")
    assert review.result["decidedBy"] == "olivia" and review.result["comment"] == "too long, shorten it"
    assert Task.objects.get(session=approved, step_id="review").result["comment"] == "looks right"


def test_the_maintenance_banner_follows_the_fleet_switch(logged_in, live_server, artifacts):
    page = logged_in
    expect(page.get_by_test_id("maintenance-banner")).to_have_count(0)
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("form[action$='/fleet/pause/'] input[name=reason]", "database upgrade")
    page.get_by_test_id("fleet-pause").click()
    expect(page.locator(".messages").get_by_text("Dispatch is off for the whole fleet")).to_be_visible()
    banner = page.get_by_test_id("maintenance-banner")
    expect(banner).to_contain_text("by olivia: database upgrade")
    expect(page.get_by_test_id("fleet-dispatch")).to_have_text("off")
    page.goto(live_server.url + "/agents/")
    expect(page.get_by_test_id("maintenance-banner")).to_contain_text("since")
    page.screenshot(path=str(artifacts / "maintenance-banner.png"), full_page=True)
    page.goto(live_server.url + "/")
    page.get_by_test_id("fleet-resume").click()
    expect(page.get_by_text("Dispatch is on again")).to_be_visible()
    expect(page.get_by_test_id("maintenance-banner")).to_have_count(0)
