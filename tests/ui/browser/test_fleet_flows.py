"""The fleet talking to Ops-Core for real while an operator watches: state reports over the API,
and a session run to completion by the AgentKit stand-in (a real HTTP server)."""

from __future__ import annotations

import httpx
import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sessions.models import Session
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_agent_appears_after_a_state_report(logged_in, live_server, service_key):
    page = logged_in
    page.goto(live_server.url + "/agents/?state=idle")
    expect(page.get_by_text("No agents match.")).to_be_visible()
    response = httpx.post(
        f"{live_server.url}/v1/opscore/agent/night-shift-7/state",
        json={"agentId": "night-shift-7", "timestamp": timezone.now().isoformat(), "state": "idle",
              "details": {"note": "warming up done"}},
        headers={"Authorization": f"Bearer {service_key}"}, timeout=10,
    )
    assert response.status_code == 202, response.text
    row = page.locator("tr[data-agent=night-shift-7]")
    expect(row).to_be_visible()  # the list refreshed itself, filter kept
    expect(row).to_contain_text("idle")
    expect(page.locator("select[name=state]")).to_have_value("idle")
    row.get_by_role("link", name="night-shift-7").click()
    expect(page.get_by_test_id("agent-state")).to_have_text("idle")
    expect(page.get_by_text("warming up done")).to_be_visible()  # the state timeline shows the details


def test_start_a_session_for_a_standin_agent_and_watch_it_complete(logged_in, live_server, standin, q_sync,
                                                                   artifacts):
    page = logged_in
    agent = standin.register(agent_id="standin-worker")
    page.goto(live_server.url + "/agents/")
    expect(page.locator("tr[data-agent=standin-worker]")).to_contain_text("idle")  # its own first report

    WorkflowDefinitionFactory(id="triage", name="Triage a ticket")
    page.goto(live_server.url + "/workflows/triage/")
    page.click("text=Start a session")
    page.fill("input[name=agent]", agent.agent_id)
    page.fill("textarea[name=initial_payload]", "[99]")
    page.click("button:has-text('Start session')")
    expect(page.get_by_test_id("payload-error")).to_contain_text("must be a JSON object, not list")
    page.fill("textarea[name=initial_payload]", '{"ticket": 99}')
    page.click("button:has-text('Start session')")
    expect(page.get_by_text("Session started for agent standin-worker")).to_be_visible()

    status = page.get_by_test_id("session-status")
    expect(status).to_have_text("completed", timeout=30_000)  # the page polls while the agent works
    expect(page.locator("[data-step=step_1] [data-testid=task-status]")).to_have_text("completed")
    expect(page.locator("[data-step=step_2] [data-testid=task-status]")).to_have_text("completed")
    expect(page.get_by_test_id("progress")).to_have_attribute("aria-valuenow", "100")
    session = Session.objects.get(agent_id=agent.agent_id)
    assert session.status == Session.Status.COMPLETED and session.created_by.username == "olivia"
    assert session.tasks.order_by("sequence").first().payload == {"a": 1, "ticket": 99}
    assert session.result is not None
    expect(page.get_by_test_id("session-result")).to_be_visible()
    page.screenshot(path=str(artifacts / "session_detail.png"), full_page=True)
