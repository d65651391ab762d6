"""The charts' figures (sessions/charts.py) from rows with known times, and the SVG the pages draw."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from sessions import charts
from sessions.models import Session, Task, TaskAttempt
from tests.sessions.factories import SessionFactory, TaskFactory

pytestmark = pytest.mark.django_db

S = Task.Status


def finished_task(*, at, status=S.COMPLETED, wait: float = 1.0, attempt: int = 1) -> Task:
    created = at - timedelta(seconds=wait + 5)
    return TaskFactory(status=status, attempt=attempt, created_at=created,
                       dispatched_at=created + timedelta(seconds=wait), finished_at=at)


def test_the_last_hour_is_counted_per_minute_with_percentiles_of_first_attempts():
    now = timezone.now().replace(second=30, microsecond=0)
    minute_ago = now - timedelta(minutes=1)
    for wait in (1.0, 2.0, 3.0, 4.0):
        finished_task(at=minute_ago, wait=wait)
    finished_task(at=minute_ago, wait=100.0, attempt=2)  # a retried task: not a first attempt's wait
    finished_task(at=now, status=S.DEAD)
    finished_task(at=now - timedelta(hours=2))  # outside the window
    counts, percentiles = charts._finished_postgres(now - timedelta(hours=1), timedelta(minutes=1))
    bucket = minute_ago.replace(second=0)
    assert counts[S.COMPLETED] == {bucket: 5}
    assert counts[S.DEAD] == {now.replace(second=0): 1}
    p50, p95 = percentiles[bucket]
    assert p50 == pytest.approx(2.5) and p95 == pytest.approx(3.85)
    # The demo's SQLite path computes the same figures.
    from django.db.models.functions import TruncMinute

    assert charts._percentiles_python(now - timedelta(hours=1), TruncMinute)[bucket] == (
        pytest.approx(2.5), pytest.approx(3.85))

    result = charts.dashboard_charts(now=now, window="1h")
    assert result["totals"]["completed"] == 5 and result["totals"]["dead"] == 1
    assert len(result["charts"]) == 3 and all("<svg" in chart and "style=" not in chart for chart in result["charts"])


def test_sessions_started_and_ended_are_counted_in_their_buckets():
    now = timezone.now()
    SessionFactory(created_at=now - timedelta(hours=3), ended_at=now - timedelta(minutes=30),
                   status=Session.Status.COMPLETED)
    SessionFactory(created_at=now - timedelta(minutes=10))
    from django.db.models.functions import TruncHour

    started, ended = charts._sessions_started_and_ended(TruncHour, now - timedelta(hours=24))
    assert sum(started.values()) == 2 and sum(ended.values()) == 1
    assert charts.dashboard_charts(now=now, window="1h")["totals"] == {"completed": 0, "dead": 0, "started": 1,
                                                                       "ended": 1}


@pytest.mark.parametrize("window, buckets", [("1h", 60), ("24h", 24), ("7d", 168)])
def test_each_window_has_its_buckets(window, buckets):
    labels, step, _ = charts._buckets(timezone.now(), window)
    assert len(labels) == buckets and labels[-1] - labels[0] == step * (buckets - 1)


def test_an_unknown_window_is_the_default_never_an_error(staff_client):
    assert charts.window_of("forever") == "1h" and charts.window_of(None) == "1h"
    for query in ("?window=7d", "?window=forever", "?window="):
        response = staff_client.get(reverse("sessions:dashboard") + query)
        assert response.status_code == 200
        assert b'data-testid="chart-tasks"' in response.content
    assert b'data-testid="window-current">7d<' in staff_client.get(reverse("sessions:dashboard") + "?window=7d").content


def test_the_session_timeline_draws_the_wait_and_each_attempt(staff_client):
    now = timezone.now()
    session = SessionFactory(created_at=now - timedelta(seconds=60))
    task = TaskFactory(session=session, step_id="fetch", sequence=1, status=S.COMPLETED, attempt=2,
                       created_at=now - timedelta(seconds=60), finished_at=now - timedelta(seconds=5))
    TaskAttempt.objects.create(task=task, number=1, reference_at=now, started_at=now - timedelta(seconds=50),
                               ended_at=now - timedelta(seconds=40), outcome=TaskAttempt.Outcome.FAILED)
    TaskAttempt.objects.create(task=task, number=2, reference_at=now, started_at=now - timedelta(seconds=30),
                               ended_at=now - timedelta(seconds=5), outcome=TaskAttempt.Outcome.COMPLETED)
    page = staff_client.get(reverse("sessions:session-detail", args=[session.pk])).content.decode()
    chart = page.split('data-testid="session-timeline"', 1)[1].split("</figure>", 1)[0]
    assert chart.count('<rect class="bar') == 3
    assert '<rect class="bar wait"' in chart and "fetch: waiting 10.00 s" in chart
    assert '<rect class="bar failed"' in chart and "fetch attempt 1: failed, 10.00 s" in chart
    assert "fetch attempt 2: completed, 25.00 s" in chart
    assert "style=" not in chart


def test_the_agent_page_draws_its_state_strip_with_the_tasks_it_ran(staff_client):
    from agents.models import AgentState
    from tests.agents.factories import AgentFactory
    from tests.sessions.factories import SessionFactory, TaskFactory

    now = timezone.now()
    agent = AgentFactory()
    for minutes, state in ((30, "idle"), (20, "active"), (10, "error"), (5, "idle")):
        AgentState.objects.create(agent=agent, state=state, timestamp=now - timedelta(minutes=minutes),
                                  received_at=now - timedelta(minutes=minutes))
    task = TaskFactory(session=SessionFactory(agent=agent), agent=agent, step_id="crunch", status="completed",
                       dispatched_at=now - timedelta(minutes=20), finished_at=now - timedelta(minutes=10))
    html = staff_client.get(f"/agents/{agent.pk}/").content.decode()
    chart = html[html.index('data-testid="agent-timeline"'):]
    chart = chart[:chart.index("</figure>")]
    assert chart.count('class="bar idle"') == 2 and chart.count('class="bar active"') == 1
    assert chart.count('class="bar error"') == 1 and chart.count('class="bar completed"') == 1
    assert f"crunch (completed) of session {task.session_id}" in chart
    # 30 minutes shown: idle 10 + 5, active 10, error 5.
    assert "idle 50% (900 s)" in html and "active 33% (600 s)" in html and "error 17% (300 s)" in html


def test_the_workflow_page_draws_its_steps_with_next_and_fallback_edges_and_figures(staff_client):
    from tests.sessions.factories import SessionFactory, TaskFactory
    from tests.workflows.factories import WorkflowDefinitionFactory
    from workflows.schema import validate_definition

    spec = validate_definition({"id": "graphy", "name": "Graphy", "version": "1", "tasks": [
        {"taskId": "a", "name": "Fetch", "nextTaskId": "b", "fallbackTaskId": "rescue"},
        {"taskId": "b", "name": "Store", "nextTaskId": None},
        {"taskId": "rescue", "name": "Rescue", "nextTaskId": None}]}, new_input=True)
    definition = WorkflowDefinitionFactory(id="graphy", spec=spec.to_document())
    now = timezone.now()
    for seconds, status, attempt in ((1, "completed", 1), (3, "completed", 2), (0, "dead", 4)):
        TaskFactory(session=SessionFactory(definition=definition), step_id="a", status=status, attempt=attempt,
                    dispatched_at=now - timedelta(seconds=seconds), finished_at=now)
    html = staff_client.get("/workflows/graphy/").content.decode()
    graph = html[html.index('data-testid="workflow-graph"'):]
    graph = graph[:graph.index("</figure>")]
    assert [m for m in re.findall(r'data-step="([^"]+)"', graph)] == ["a", "b", "rescue"]
    assert graph.count('class="edge next"') == 1 and graph.count('class="edge fallback"') == 1
    assert "a → rescue (fallback)" in graph and "a → b (next)" in graph
    assert "runs 3 · failed 33% · retries 4 · p50 2.00 s · p95 2.90 s" in graph
    assert 'class="node failing"' in graph and "no runs yet" in graph
