"""GET /metrics (opscore_site/metrics.py): every metric with its type and labels after the events that
move it, the scrape-time gauges, and the token / allowlist protection.

Counters are process-wide, so each test compares a scrape after the events with one before them.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.core.cache import cache
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from agents.models import Agent
from opscore_site import metrics
from sessions import engine, sweeps
from sessions.engine import By
from sessions.management.commands.opscore_scheduler import HEARTBEAT_KEY
from sessions.models import Session, Task
from tests.agents.factories import AgentFactory
from tests.sessions.conftest import agentkit_stub  # noqa: F401  (fixture)
from tests.sessions.test_engine import report, start, task_of

pytestmark = pytest.mark.django_db

S = Task.Status


def scrape(client, **headers) -> dict[str, object]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(families, name: str, suffix: str = "", **labels) -> float:
    """The sample `name+suffix` with exactly `labels` (0 when the series does not exist yet)."""
    family = families.get(name)
    if family is None:
        return 0.0
    for sample in family.samples:
        wanted = {k: v for k, v in sample.labels.items() if k != "le"}
        if sample.name == name + suffix and wanted == labels:
            return sample.value
    return 0.0


def test_it_serves_every_metric_with_its_type(client, q_sync, agentkit_stub, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        session = start(agent=AgentFactory())
        report(session.agent_id, "idle")
        metrics.state_report("idle")
    families = scrape(client)
    types = {name: families[name].type for name in families if name.startswith("opscore_")}
    expected = {
        "opscore_state_reports": "counter", "opscore_http_request_duration_seconds": "histogram",
        "opscore_tasks": "counter", "opscore_task_schedule_to_start_seconds": "histogram",
        "opscore_task_duration_seconds": "histogram", "opscore_sessions_finished": "counter",
        "opscore_agentkit_requests": "counter", "opscore_agentkit_request_duration_seconds": "histogram",
        "opscore_queue_depth": "gauge", "opscore_agents": "gauge", "opscore_agents_stale": "gauge",
        "opscore_sessions": "gauge", "opscore_scheduler_last_pass_timestamp_seconds": "gauge",
    }
    assert types == expected
    # The parser drops `_total` from counter family names; the module's list has the exported names.
    exported = {name + "_total" if kind == "counter" else name for name, kind in expected.items()}
    assert exported == metrics.METRIC_NAMES


def test_a_session_that_runs_moves_the_task_counters_and_histograms(client, q_sync, agentkit_stub,
                                                                     django_capture_on_commit_callbacks):
    before = scrape(client)
    agent = AgentFactory()
    with django_capture_on_commit_callbacks(execute=True):
        session = start(agent=agent)
        report(agent.id, "active")
        report(agent.id, "idle")  # step 1 completed; step 2 dispatched
        report(agent.id, "error", {"message": "boom"})  # step 2 failed: a retry is scheduled
    after = scrape(client)

    def delta(name, suffix="", **labels):
        return value(after, name, suffix, **labels) - value(before, name, suffix, **labels)

    assert task_of(session, 2).status == S.RETRY_SCHEDULED
    assert delta("opscore_tasks", "_total", outcome="completed") == 1
    assert delta("opscore_tasks", "_total", outcome="failed") == 1
    assert delta("opscore_tasks", "_total", outcome="retried") == 1
    assert delta("opscore_task_schedule_to_start_seconds", "_count") == 2  # two dispatches
    assert delta("opscore_task_duration_seconds", "_count", outcome="completed") == 1
    assert delta("opscore_task_duration_seconds", "_count", outcome="failed") == 1
    assert delta("opscore_agentkit_requests", "_total", code="202") == 2
    assert delta("opscore_agentkit_request_duration_seconds", "_count") == 2


def test_dead_cancelled_and_timed_out_tasks_and_finished_sessions_count(client, q_sync, agentkit_stub,
                                                                        django_capture_on_commit_callbacks):
    before = scrape(client)
    with django_capture_on_commit_callbacks(execute=True):
        agentkit_stub.respond(404)
        dead = start()  # AgentKit does not know the agent: dead at once, the session fails
        agentkit_stub.answer = agentkit_stub.accept
        cancelled = start()
        engine.session_cancel(session=cancelled, by=By.system(), reason="test")
        slow = start()
        task = task_of(slow)
        assert sweeps.sweep_timeouts(now=task.timeout_at + timedelta(seconds=1)) == 1
    after = scrape(client)

    def delta(name, suffix="", **labels):
        return value(after, name, suffix, **labels) - value(before, name, suffix, **labels)

    assert Session.objects.get(pk=dead.pk).status == Session.Status.FAILED
    assert delta("opscore_tasks", "_total", outcome="dead") == 1
    assert delta("opscore_tasks", "_total", outcome="cancelled") == 1
    assert delta("opscore_tasks", "_total", outcome="timed_out") == 1
    assert delta("opscore_tasks", "_total", outcome="failed") == 2  # the 404 and the timeout
    assert delta("opscore_sessions_finished", "_total", status="failed") == 1
    assert delta("opscore_sessions_finished", "_total", status="cancelled") == 1
    assert delta("opscore_agentkit_requests", "_total", code="404") == 1


def test_a_rolled_back_transition_is_not_counted(client, q_sync, agentkit_stub, django_capture_on_commit_callbacks):
    from django.db import transaction

    before = scrape(client)
    with django_capture_on_commit_callbacks(execute=True):
        session = start()
        with pytest.raises(RuntimeError), transaction.atomic():
            engine.session_cancel(session=session, by=By.system())
            raise RuntimeError("roll it back")
    after = scrape(client)
    assert value(after, "opscore_tasks", "_total", outcome="cancelled") == value(
        before, "opscore_tasks", "_total", outcome="cancelled")


def test_agentkit_timeouts_and_connection_errors_are_their_own_codes(client, q_sync, agentkit_stub,
                                                                     django_capture_on_commit_callbacks):
    before = scrape(client)
    agentkit_stub.raise_(httpx.ReadTimeout("slow"))
    start()
    agentkit_stub.raise_(httpx.ConnectError("refused"))
    start()
    after = scrape(client)
    for code in ("timeout", "error"):
        assert value(after, "opscore_agentkit_requests", "_total", code=code) - value(
            before, "opscore_agentkit_requests", "_total", code=code) == 1


def test_state_reports_count_by_state(client, django_capture_on_commit_callbacks):
    """Reports through the service the API uses: the lean one-statement path (no task in flight) and
    the engine's path (a task in flight), each counted once."""
    agent = AgentFactory()
    before = scrape(client)
    with django_capture_on_commit_callbacks(execute=True):
        for state in ("idle", "active", "idle"):
            report(agent.id, state)
    after = scrape(client)
    assert value(after, "opscore_state_reports", "_total", state="idle") - value(
        before, "opscore_state_reports", "_total", state="idle") == 2
    assert value(after, "opscore_state_reports", "_total", state="active") - value(
        before, "opscore_state_reports", "_total", state="active") == 1


def test_a_report_with_a_task_in_flight_is_counted_once(client, q_sync, agentkit_stub,
                                                        django_capture_on_commit_callbacks):
    session = start()
    before = scrape(client)
    with django_capture_on_commit_callbacks(execute=True):
        report(session.agent_id, "idle")  # completes step 1 through the engine
    after = scrape(client)
    assert task_of(session).status == Task.Status.COMPLETED
    assert value(after, "opscore_state_reports", "_total", state="idle") - value(
        before, "opscore_state_reports", "_total", state="idle") == 1


def test_http_requests_are_labelled_by_route_pattern_never_by_raw_path(client):
    client.get("/v1/opscore/agents/some-agent-id-123")  # 401: no key
    client.get("/no/such/page/4711")
    families = scrape(client)
    series = {(s.labels["endpoint"], s.labels["method"], s.labels["status"])
              for s in families["opscore_http_request_duration_seconds"].samples if s.name.endswith("_count")}
    assert ("v1/opscore/agents/<agent_id>", "GET", "401") in series
    assert ("unmatched", "GET", "404") in series
    assert not any("some-agent-id-123" in endpoint or "4711" in endpoint for endpoint, _, _ in series)


def test_the_database_gauges_are_read_at_scrape_time(client, django_assert_max_num_queries):
    now = timezone.now()
    AgentFactory(state=Agent.State.IDLE, last_seen_at=now)
    AgentFactory(state=Agent.State.ACTIVE, last_seen_at=now - timedelta(hours=2))  # stale
    AgentFactory(state=None, last_seen_at=None)  # stale, never reported
    AgentFactory(state=Agent.State.IDLE, deregistered_at=now)  # not counted
    session = start(agent=AgentFactory(state=Agent.State.ACTIVE, last_seen_at=now))  # busy: stays queued
    cache.set(HEARTBEAT_KEY, now.isoformat())
    with django_assert_max_num_queries(6):  # agents, sessions, queue, heartbeat (+ the test client's session)
        families = scrape(client)
    assert value(families, "opscore_agents", state="idle") == 1
    assert value(families, "opscore_agents", state="active") == 2
    assert value(families, "opscore_agents", state="unknown") == 1
    assert value(families, "opscore_agents", state="error") == 0
    assert value(families, "opscore_agents_stale") == 2
    assert value(families, "opscore_sessions", status="pending") == 1
    assert value(families, "opscore_sessions", status="running") == 0
    assert value(families, "opscore_queue_depth") == 1 == Task.objects.filter(session=session, status=S.QUEUED).count()
    assert value(families, "opscore_scheduler_last_pass_timestamp_seconds") == pytest.approx(now.timestamp())


def test_metrics_are_open_when_no_token_or_allowlist_is_set(client, settings):
    settings.OPSCORE_METRICS_TOKEN, settings.OPSCORE_METRICS_ALLOWED_IPS = "", []
    assert client.get("/metrics").status_code == 200


def test_metrics_refuse_a_missing_or_wrong_token(client, settings):
    settings.OPSCORE_METRICS_TOKEN = "scrape-secret"
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert b"opscore_" not in missing.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-secret").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200


def test_metrics_allow_listed_addresses_without_a_token(client, settings):
    settings.OPSCORE_METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.5").status_code == 403
    settings.OPSCORE_METRICS_TOKEN = "scrape-secret"  # both set: either lets the scraper in
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.5").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.5",
                      HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.9.9.9").status_code == 200


def test_metrics_answer_only_get(client):
    assert client.post("/metrics").status_code == 405


def test_a_bad_allowlist_stops_start_up(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from opscore_site.env import load_env

    monkeypatch.setenv("OPSCORE_METRICS_ALLOWED_IPS", "10.0.0.0/8, not-an-address")
    with pytest.raises(ImproperlyConfigured, match="OPSCORE_METRICS_ALLOWED_IPS.*not-an-address"):
        load_env()
    monkeypatch.setenv("OPSCORE_METRICS_ALLOWED_IPS", "10.0.0.0/8, ::1")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/no/such/directory")
    with pytest.raises(ImproperlyConfigured, match="PROMETHEUS_MULTIPROC_DIR"):
        load_env()
