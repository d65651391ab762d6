"""The charts in a real browser, with screenshots in test-artifacts/: the dashboard's trends and a
session's timeline show the rows this test made."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sessions.models import Task, TaskAttempt
from tests.sessions.factories import SessionFactory, TaskFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_dashboard_and_a_session_draw_what_happened(logged_in, live_server, artifacts):
    now = timezone.now()
    session = SessionFactory(created_at=now - timedelta(minutes=20), ended_at=now - timedelta(minutes=2),
                             status="completed")
    for minute in range(1, 16):  # one completed task a minute, waits growing; two dead ones
        at = now - timedelta(minutes=minute)
        TaskFactory(session=session, step_id=f"s{minute}", status=Task.Status.COMPLETED, attempt=1,
                    created_at=at - timedelta(seconds=minute + 3), dispatched_at=at - timedelta(seconds=3),
                    finished_at=at)
    for minute in (4, 9):
        TaskFactory(session=session, step_id=f"d{minute}", status=Task.Status.DEAD, attempt=3,
                    finished_at=now - timedelta(minutes=minute))
    task = Task.objects.get(session=session, step_id="s3")
    for number, (start, end, outcome) in enumerate([(-200, -190, "failed"), (-185, -180, "completed")], 1):
        TaskAttempt.objects.create(task=task, number=number, reference_at=now + timedelta(seconds=start),
                                   started_at=now + timedelta(seconds=start), ended_at=now + timedelta(seconds=end),
                                   outcome=outcome)

    page = logged_in
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.goto(live_server.url + "/")
    charts = page.get_by_test_id("charts")
    expect(charts).to_contain_text("15 task(s) completed, 2 dead")
    expect(page.locator("[data-testid=chart-tasks] polyline")).to_have_count(2)
    expect(page.locator("[data-testid=chart-latency] polyline")).to_have_count(2)
    charts.screenshot(path=str(artifacts / "charts-dashboard-1h.png"))
    page.get_by_role("link", name="24h").click()
    expect(page.get_by_test_id("window-current")).to_have_text("24h")
    charts.screenshot(path=str(artifacts / "charts-dashboard-24h.png"))

    page.goto(f"{live_server.url}/sessions/{session.pk}/")
    timeline = page.get_by_test_id("session-timeline")
    expect(timeline.locator("rect.bar")).to_have_count(17 + 2)  # a wait per task, plus s3's two attempts
    expect(timeline.locator("rect.bar.failed")).to_have_count(1)
    expect(timeline.locator("title", has_text="s3 attempt 1: failed, 10.00 s")).to_have_count(1)
    timeline.screenshot(path=str(artifacts / "charts-session-timeline.png"))


def test_an_agent_timeline_and_a_workflow_graph_draw_what_happened(logged_in, live_server, artifacts):
    from agents.models import AgentState
    from tests.agents.factories import AgentFactory
    from tests.workflows.factories import WorkflowDefinitionFactory
    from workflows.schema import validate_definition

    now = timezone.now()
    agent = AgentFactory(id="timeline-agent")
    for minutes, state in ((40, "idle"), (35, "active"), (28, "idle"), (20, "active"), (15, "error"), (12, "idle"),
                           (6, "active"), (2, "idle")):
        AgentState.objects.create(agent=agent, state=state, timestamp=now - timedelta(minutes=minutes),
                                  received_at=now - timedelta(minutes=minutes))
    spec = validate_definition({"id": "pictured", "name": "Pictured", "version": "1", "tasks": [
        {"taskId": "fetch", "name": "Fetch", "nextTaskId": "parse", "fallbackTaskId": "alert_human"},
        {"taskId": "parse", "name": "Parse", "nextTaskId": "store"},
        {"taskId": "store", "name": "Store", "nextTaskId": None, "fallbackTaskId": "alert_human"},
        {"taskId": "alert_human", "name": "Tell a human", "nextTaskId": None}]}, new_input=True)
    definition = WorkflowDefinitionFactory(id="pictured", spec=spec.to_document())
    for start, end, step, status in ((35, 28, "fetch", "completed"), (20, 15, "parse", "dead"),
                                     (6, 2, "store", "completed")):
        TaskFactory(session=SessionFactory(definition=definition, agent=agent), agent=agent, step_id=step,
                    status=status, attempt=1 if status == "completed" else 3,
                    dispatched_at=now - timedelta(minutes=start), finished_at=now - timedelta(minutes=end))

    page = logged_in
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.goto(f"{live_server.url}/agents/{agent.pk}/")
    strip = page.get_by_test_id("agent-timeline")
    expect(strip.locator("rect.bar.active")).to_have_count(3)
    expect(strip.locator("rect.bar.error")).to_have_count(1)
    expect(strip.locator("rect.bar.dead")).to_have_count(1)
    expect(strip.locator("rect.bar.completed")).to_have_count(2)
    expect(page.locator(".legend-line")).to_contain_text("active")
    strip.screenshot(path=str(artifacts / "charts-agent-timeline.png"))

    page.goto(f"{live_server.url}/workflows/pictured/")
    graph = page.get_by_test_id("workflow-graph")
    expect(graph.locator("g.node")).to_have_count(4)
    expect(graph.locator("path.edge.next")).to_have_count(2)
    expect(graph.locator("path.edge.fallback")).to_have_count(2)
    expect(graph.locator("g.node[data-step=parse]")).to_contain_text("runs 1 · failed 100%")
    graph.screenshot(path=str(artifacts / "charts-workflow-graph.png"))
