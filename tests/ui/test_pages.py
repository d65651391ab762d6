"""What the operator pages show: numbers, filters, partials for polling, and bounded queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent
from sessions.models import Session, Task, TaskAttempt, TaskEvent
from tests.agents.factories import AgentFactory, AgentStateFactory
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.ui.helpers import failed_session
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db

PARTIAL = {"HTTP_X_OPSCORE_PARTIAL": "1"}


def test_the_dashboard_counts_and_links_to_filtered_lists(staff_client):
    now = timezone.now()
    AgentFactory.create_batch(2, state=Agent.State.IDLE)
    AgentFactory(state=Agent.State.ACTIVE, last_seen_at=now - timedelta(hours=1))  # stale
    AgentFactory(state=Agent.State.ERROR, deregistered_at=now)  # not counted by state
    SessionFactory.create_batch(2, status=Session.Status.RUNNING)
    old = SessionFactory(status=Session.Status.COMPLETED)
    Session.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=2))
    failed_session()
    TaskFactory.create_batch(3, status=Task.Status.COMPLETED, finished_at=now - timedelta(minutes=1))
    TaskFactory(status=Task.Status.COMPLETED, finished_at=now - timedelta(hours=1))

    response = staff_client.get(reverse("sessions:dashboard"))
    ctx = response.context
    by_state = {row["state"]: row["count"] for row in ctx["agents"]}
    # failed_session() and each TaskFactory make idle agents of their own.
    assert by_state["active"] == 1 and by_state["error"] == 0
    assert ctx["agents_stale"] == 1 and ctx["agents_deregistered"] == 1
    by_status = {row["status"]: row["count"] for row in ctx["sessions"]}
    assert by_status["running"] == 2 + 4 and by_status["failed"] == 1 and by_status["completed"] == 0
    assert ctx["failures_total"] == 1 and ctx["failures_dead"] == 1
    assert ctx["completed_recent"] == 3
    assert ctx["tasks_per_minute"] == pytest.approx(3 / 15)
    content = response.content.decode()
    for link in ('href="/agents/?state=idle"', 'href="/agents/?stale=yes"', 'href="/sessions/?status=failed&amp;since=24h"',
                 'href="/failures/"', 'href="/failures/?status=dead"'):
        assert link in content, link


def test_the_dashboard_rate_covers_only_the_time_that_holds_data(staff_client):
    """A fresh installation (its first session 3 minutes old) is measured over 3 minutes, not over 15."""
    now = timezone.now()
    first = SessionFactory(status=Session.Status.COMPLETED)
    Session.objects.filter(pk=first.pk).update(created_at=now - timedelta(minutes=3))
    TaskFactory.create_batch(6, session=first, status=Task.Status.COMPLETED, finished_at=now - timedelta(minutes=1))

    response = staff_client.get(reverse("sessions:dashboard"))
    ctx = response.context
    assert ctx["completed_recent"] == 6
    assert ctx["throughput_minutes"] == pytest.approx(3, abs=0.1)
    assert ctx["tasks_per_minute"] == pytest.approx(2, abs=0.1)
    assert "6 task(s) completed in the last 3 minutes." in response.content.decode()


def test_the_dashboard_rate_window_is_at_least_a_minute(staff_client):
    SessionFactory(status=Session.Status.RUNNING)  # created just now
    TaskFactory(status=Task.Status.COMPLETED, finished_at=timezone.now())

    ctx = staff_client.get(reverse("sessions:dashboard")).context
    assert ctx["throughput_minutes"] == pytest.approx(1, abs=0.01)
    assert ctx["tasks_per_minute"] == pytest.approx(1, abs=0.05)
    assert ctx["throughput_window"] == "1 minute"


def test_the_dashboard_partial_is_the_fragment_only(staff_client):
    response = staff_client.get(reverse("sessions:dashboard"), **PARTIAL)
    assert b"<html" not in response.content and b"tasks / minute" in response.content


def test_the_dashboard_number_links_give_the_same_counts(staff_client):
    AgentFactory(state=Agent.State.ACTIVE, last_seen_at=timezone.now() - timedelta(hours=1))
    failed_session()
    stale = staff_client.get(reverse("agents:agent-list") + "?stale=yes").context["page"].paginator.count
    assert stale == staff_client.get(reverse("sessions:dashboard")).context["agents_stale"] == 1
    failures = staff_client.get(reverse("sessions:failure-list")).context["page"].paginator.count
    assert failures == 1


def test_agent_list_filters(staff_client):
    now = timezone.now()
    AgentFactory(id="alpha", state=Agent.State.IDLE, capabilities=["summarise", "search"])
    AgentFactory(id="beta", state=Agent.State.ERROR, capabilities=["search"], drained_at=now)
    AgentFactory(id="gamma", state=Agent.State.IDLE, last_seen_at=now - timedelta(hours=2))
    AgentFactory(id="delta", deregistered_at=now)

    def ids(query):
        page = staff_client.get(reverse("agents:agent-list") + query).context["page"]
        return [a.id for a in page]

    assert ids("") == ["alpha", "beta", "gamma"]
    assert ids("?state=idle") == ["alpha", "gamma"]
    assert ids("?capability=search") == ["alpha", "beta"]
    assert ids("?capability=summar") == []  # whole capability names only
    assert ids("?stale=yes") == ["gamma"]
    assert ids("?stale=no") == ["alpha", "beta"]
    assert ids("?drained=yes") == ["beta"]
    assert ids("?deregistered=yes") == ["delta"]
    assert ids("?deregistered=all") == ["alpha", "beta", "delta", "gamma"]
    assert ids("?q=AMM") == ["gamma"]
    assert ids("?state=bogus") == ["alpha", "beta", "gamma"]  # a bad filter value is ignored, not a 500


def test_agent_list_shows_the_task_in_flight(staff_client):
    task = TaskFactory(status=Task.Status.RUNNING, step_id="summarise")
    content = staff_client.get(reverse("agents:agent-list")).content.decode()
    assert reverse("sessions:session-detail", args=[task.session_id]) in content and "summarise" in content


def test_agent_detail_shows_timeline_task_in_flight_and_sessions(staff_client):
    task = TaskFactory(status=Task.Status.DISPATCHED, step_id="fetch", attempt=1, dispatched_at=timezone.now())
    AgentStateFactory(agent=task.agent, state=Agent.State.ACTIVE, details={"progress": "half way"})
    content = staff_client.get(reverse("agents:agent-detail", args=[task.agent_id])).content.decode()
    assert "half way" in content
    assert "fetch" in content and "dispatched" in content
    assert reverse("sessions:session-detail", args=[task.session_id]) in content


def test_session_list_filters_and_search_by_id(staff_client):
    agent = AgentFactory(id="agent-x")
    definition = WorkflowDefinitionFactory(id="wf-x")
    mine = SessionFactory(agent=agent, definition=definition, status=Session.Status.COMPLETED)
    other = SessionFactory(status=Session.Status.RUNNING)
    old = SessionFactory(status=Session.Status.RUNNING)
    Session.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))

    def ids(params):
        page = staff_client.get(reverse("sessions:session-list"), params).context["page"]
        return {s.pk for s in page}

    assert ids({}) == {mine.pk, other.pk, old.pk}
    assert ids({"status": "completed"}) == {mine.pk}
    assert ids({"workflow": "wf-x"}) == {mine.pk}
    assert ids({"agent": "agent-x"}) == {mine.pk}
    assert ids({"since": "24h"}) == {mine.pk, other.pk}
    two_days_ago = (timezone.now() - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    assert ids({"after": two_days_ago}) == {mine.pk, other.pk}
    assert ids({"before": two_days_ago}) == {old.pk}
    assert ids({"before": "not a date"}) == {mine.pk, other.pk, old.pk}  # ignored, not a 500
    assert ids({"q": str(other.pk)}) == {other.pk}
    assert ids({"q": str(other.pk)[:8]}) == {other.pk}
    assert ids({"q": "zzz"}) == set()


def test_session_detail_shows_progress_tasks_attempts_errors_and_who(staff_client, staff_operator):
    definition = WorkflowDefinitionFactory()
    session = SessionFactory(definition=definition, status=Session.Status.RUNNING)
    first = TaskFactory(session=session, step_id="step_1", status=Task.Status.COMPLETED, result={"answer": 42},
                        attempt=2, finished_at=timezone.now())
    TaskAttempt.objects.create(task=first, number=1, outcome="failed", reference_at=timezone.now(),
                               http_status=503, error="AgentKit answered 503")
    TaskEvent.objects.create(session=session, task=first, old_status="queued", new_status="dispatched",
                             actor="operator", actor_user=staff_operator, reason="manual")
    TaskFactory(session=session, step_id="step_2", status=Task.Status.RUNNING)
    response = staff_client.get(reverse("sessions:session-detail", args=[session.pk]))
    assert response.context["progress"] == {"done": 1, "total": 2, "percent": 50}
    content = response.content.decode()
    assert "AgentKit answered 503" in content and "&quot;answer&quot;: 42" in content
    assert "operator bob" in content and 'aria-valuenow="50"' in content


def test_the_session_list_and_detail_show_the_same_progress(staff_client):
    """A completed fallback step is not a main-path step: 0 of 2 on both pages."""
    session = SessionFactory(status=Session.Status.RUNNING)
    dead = TaskFactory(session=session, step_id="step_1", status=Task.Status.DEAD)
    TaskFactory(session=session, step_id="rescue", status=Task.Status.COMPLETED, fallback_for=dead)
    listed = dict(staff_client.get(reverse("sessions:session-list")).context["rows"])
    detail = staff_client.get(reverse("sessions:session-detail", args=[session.pk])).context["progress"]
    assert listed[session] == detail == {"done": 0, "total": 2, "percent": 0}


def test_the_session_list_counts_only_the_tasks_of_its_page(staff_client):
    """Each row's task count comes from one query over the page's sessions: no aggregate that
    groups every session with every task (the list slowed as history grew)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    two, three = SessionFactory(), SessionFactory()
    for session, count in ((two, 2), (three, 3)):
        for seq in range(1, count + 1):
            TaskFactory(session=session, sequence=seq, status=Task.Status.COMPLETED)
    SessionFactory()  # no task yet
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(reverse("sessions:session-list"))
    counts = {s.pk: s.task_count for s, _ in response.context["rows"]}
    assert sorted(counts.values()) == [0, 2, 3] and counts[two.pk] == 2 and counts[three.pk] == 3
    assert "2 task(s)" in response.content.decode() and "3 task(s)" in response.content.decode()
    task_reads = [q["sql"] for q in queries.captured_queries if 'FROM "opscore_sessions_task"' in q["sql"]]
    assert len(task_reads) == 1 and " IN (" in task_reads[0]
    assert not any("GROUP BY" in q["sql"] for q in queries.captured_queries)


def test_session_detail_partial_for_polling(staff_client):
    task = TaskFactory()
    response = staff_client.get(reverse("sessions:session-detail", args=[task.session_id]), **PARTIAL)
    assert b"<html" not in response.content and b"data-testid=\"session-status\"" in response.content


def test_failure_list_shows_cause_and_filters(staff_client):
    a = failed_session(error="AgentKit does not know agent 'x'")
    b = failed_session()
    Task.objects.filter(pk=b.pk).update(status=Task.Status.FAILED, last_error="agent reported error: E42")
    TaskFactory(status=Task.Status.RUNNING)
    response = staff_client.get(reverse("sessions:failure-list"))
    assert {t.pk for t in response.context["page"]} == {a.pk, b.pk}
    assert b"E42" in response.content and b"does not know agent" in response.content
    assert [t.pk for t in staff_client.get(reverse("sessions:failure-list"), {"status": "failed"}).context["page"]] == [b.pk]
    assert [t.pk for t in staff_client.get(reverse("sessions:failure-list"), {"q": "e42"}).context["page"]] == [b.pk]
    assert [t.pk for t in staff_client.get(reverse("sessions:failure-list"), {"agent": a.agent_id}).context["page"]] == [a.pk]


def test_workflow_detail_lists_steps_in_order_with_retry_timeout_and_fallback(staff_client):
    from workflows.schema import validate_definition
    from workflows.services import workflow_save

    spec = {"id": "ordered", "name": "Ordered", "tasks": [
        {"taskId": "start", "nextTaskId": "finish", "maxRetries": 5, "timeoutSeconds": 60,
         "fallbackTaskId": "rescue"},
        {"taskId": "rescue", "nextTaskId": None},
        {"taskId": "finish", "nextTaskId": None},
    ]}
    workflow_save(spec=validate_definition(spec))
    response = staff_client.get(reverse("workflows:workflow-detail", args=["ordered"]))
    assert [s.taskId for s in response.context["steps"]] == ["start", "finish", "rescue"]
    content = response.content.decode()
    assert "60 s" in content and ">5<" in content and ">rescue<" in content


def test_pages_paginate(staff_client):
    AgentFactory.create_batch(55)
    first = staff_client.get(reverse("agents:agent-list") + "?state=idle")
    assert len(first.context["page"]) == 50
    assert b"state=idle&amp;page=2" in first.content
    second = staff_client.get(reverse("agents:agent-list") + "?state=idle&page=2")
    assert len(second.context["page"]) == 5
    assert staff_client.get(reverse("agents:agent-list") + "?page=999").status_code == 200


# ---------------------------------------------------------------- query counts


@pytest.fixture
def many_sessions():
    """30 sessions with 2 tasks each (attempts and events too), and 30 dead tasks."""
    definition = WorkflowDefinitionFactory()
    for _ in range(30):
        session = SessionFactory(definition=definition)
        for seq, status in ((1, Task.Status.COMPLETED), (2, Task.Status.RUNNING)):
            task = TaskFactory(session=session, sequence=seq, status=status)
            TaskAttempt.objects.create(task=task, number=1, reference_at=timezone.now())
            TaskEvent.objects.create(session=session, task=task, new_status=status, actor="system")
        failed_session(definition=definition)


# Every list page refreshes itself, so each is bounded both whole and as its polled partial.
POLLED_LIST_PAGES = ["sessions:dashboard", "agents:agent-list", "sessions:session-list", "sessions:failure-list",
                     "sessions:attention",
                     "workflows:workflow-list", "agents:apikey-list"]


@pytest.mark.parametrize("name", POLLED_LIST_PAGES)
def test_list_pages_use_a_bounded_number_of_queries(staff_client, many_sessions, django_assert_max_num_queries,
                                                     name):
    from agents.services import api_key_create

    for n in range(30):
        api_key_create(name=f"k{n}")
    staff_client.get(reverse(name))  # warm the session/user caches
    # The dashboard's charts (sessions/charts.py) add their two aggregate queries.
    limit = 12 + (2 if name == "sessions:dashboard" else 0)
    with django_assert_max_num_queries(limit):
        response = staff_client.get(reverse(name))
    assert response.status_code == 200
    with django_assert_max_num_queries(limit):
        partial = staff_client.get(reverse(name), **PARTIAL)
    assert partial.status_code == 200 and b"<html" not in partial.content


def test_session_detail_queries_do_not_grow_with_tasks(staff_client, django_assert_max_num_queries):
    session = SessionFactory()
    for seq in range(1, 21):
        task = TaskFactory(session=session, sequence=seq, status=Task.Status.COMPLETED)
        TaskAttempt.objects.create(task=task, number=1, reference_at=timezone.now())
        TaskEvent.objects.create(session=session, task=task, new_status="completed", actor="system")
    with django_assert_max_num_queries(12):
        assert staff_client.get(reverse("sessions:session-detail", args=[session.pk])).status_code == 200


def test_agent_detail_queries_are_bounded(staff_client, django_assert_max_num_queries):
    agent = AgentFactory()
    AgentStateFactory.create_batch(150, agent=agent)
    SessionFactory.create_batch(25, agent=agent)
    with django_assert_max_num_queries(12):
        response = staff_client.get(reverse("agents:agent-detail", args=[agent.pk]))
    assert len(response.context["history"]) == 100


def test_every_list_page_refreshes_itself_keeping_its_filters(staff_client):
    """Workflow definitions and API keys (last use, revocations by others) poll like the other lists."""
    from agents.services import api_key_create, api_key_revoke

    WorkflowDefinitionFactory(id="nightly-a")
    pages = {reverse(name): f'data-poll="'.encode() for name in POLLED_LIST_PAGES}
    for url, needle in pages.items():
        assert needle in staff_client.get(url).content, url
    WorkflowDefinitionFactory(id="nightly-b")
    WorkflowDefinitionFactory(id="daily")
    rows = staff_client.get(reverse("workflows:workflow-list") + "?q=nightly", **PARTIAL)
    assert b"<html" not in rows.content and b"nightly-b" in rows.content and b"daily" not in rows.content

    key, _ = api_key_create(name="gone-key")
    api_key_revoke(key=key)
    rows = staff_client.get(reverse("agents:apikey-list") + "?show=all", **PARTIAL)
    assert b"<html" not in rows.content and b"gone-key" in rows.content
    # The answer that shows a new key once is not polled (its URL only takes POSTs).
    created = staff_client.post(reverse("agents:apikey-create"), {"name": "fresh"})
    assert b"data-testid=\"raw-key\"" in created.content and b'id="apikey-rows" data-poll' not in created.content
