"""What the simulated agents send to Ops-Core: registration webhook, state reports, failures, lost forwards."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time

import httpx

from .conftest import API_KEY, WEBHOOK_SECRET, run_message

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def dispatch(standin, agent_id: str, **kwargs) -> httpx.Response:
    response = httpx.post(f"{standin.url}/v1/agents/{agent_id}/run", json=run_message(**kwargs))
    assert response.status_code == 202, response.text
    return response


def test_registration_reports_idle_before_the_signed_webhook(standin, recorder):
    agent = standin.register(name="summariser", version="1.2.3", capabilities=["a", "b"])

    assert standin.wait_quiet()
    report, webhook = recorder.wait_for(2)
    assert report.path == f"/v1/opscore/agent/{agent.agent_id}/state"
    assert report.json()["state"] == "idle"
    assert webhook.path == "/v1/opscore/internal/agent/notify"
    assert webhook.at > report.at
    assert webhook.body == (
        '{"event_type":"REGISTER","agent_details":{"agentId":"%s","agentName":"summariser","version":"1.2.3",'
        '"capabilities":["a","b"],"contactEndpoint":"%s/_standin/agents/%s","metadata":{}}}'
        % (agent.agent_id, standin.url, agent.agent_id)
    ).encode()
    assert webhook.headers["Content-Type"] == "application/json"
    timestamp = webhook.headers["X-AgentKit-Timestamp"]
    assert timestamp.isdigit() and abs(int(timestamp) - time.time()) < 60
    expected = hmac.new(WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + webhook.body, hashlib.sha256).hexdigest()
    assert webhook.headers["X-AgentKit-Signature"] == expected
    assert standin.stats()["webhooks_sent"] == {"REGISTER": 1}


def test_an_agent_registered_with_metadata_never_gets_a_webhook(standin, recorder):
    standin.register(metadata={"description": "has metadata"})
    standin.register(webhook=False)

    assert standin.wait_quiet()
    assert recorder.states() == ["idle", "idle"]
    assert recorder.webhooks() == []


def test_without_a_secret_the_webhook_is_skipped_like_agentkit(make_standin, recorder):
    standin = make_standin(webhook_secret="", initial_idle=False)

    standin.register()

    assert standin.wait_quiet()
    assert recorder.requests == []
    assert standin.stats()["webhooks_skipped"] == 1


def test_a_task_reports_active_then_idle_with_the_sdks_payload(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    dispatch(standin, agent.agent_id)

    assert standin.wait_quiet()
    active, idle = recorder.wait_for(2)
    for report, state in ((active, "active"), (idle, "idle")):
        assert report.path == f"/v1/opscore/agent/{agent.agent_id}/state"
        assert report.headers["Authorization"] == f"Bearer {API_KEY}"
        assert report.headers["Content-Type"] == "application/json"
        body = report.json()
        assert list(body) == ["agentId", "timestamp", "state", "details"]
        assert body["agentId"] == agent.agent_id
        assert body["state"] == state
        assert body["details"] == {}
        assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    assert idle.json()["timestamp"] > active.json()["timestamp"]
    stats = standin.stats()
    assert stats["reports_sent"] == {"active": 1, "idle": 1}
    assert stats["outcomes"]["completed"] == 1
    assert stats["runs"][0]["status"] == "completed"


def test_with_result_the_idle_carries_details_result(make_standin, recorder):
    standin = make_standin(with_result=True, initial_idle=False, webhook=False)
    agent = standin.register()

    dispatch(standin, agent.agent_id, x=1)

    assert standin.wait_quiet()
    idle = recorder.reports()[-1].json()
    assert idle["state"] == "idle"
    assert idle["details"] == {"result": {"echo": {"x": 1}, "agent": agent.agent_id, "task_name": "step_1",
                                          "attempt": 1}}


def test_failure_rate_one_reports_active_error_then_idle(make_standin, recorder):
    standin = make_standin(failure_rate=1.0, initial_idle=False, webhook=False)
    agent = standin.register()

    dispatch(standin, agent.agent_id, attempt=2)

    assert standin.wait_quiet()
    assert recorder.states() == ["active", "error", "idle"]
    assert recorder.reports()[1].json()["details"] == {
        "error_code": "SIMULATED_FAILURE", "message": "simulated failure of task step_1 (attempt 2)"}
    assert recorder.reports()[2].json()["details"] == {}
    assert standin.stats()["outcomes"]["failed"] == 1


def test_without_error_recovery_the_agent_stays_in_error(make_standin, recorder):
    standin = make_standin(failure_rate=1.0, error_recovery="off", initial_idle=False, webhook=False)
    agent = standin.register()

    dispatch(standin, agent.agent_id)

    assert standin.wait_quiet()
    assert recorder.states() == ["active", "error"]


def test_lost_rate_one_accepts_but_never_reports(make_standin, recorder):
    standin = make_standin(lost_rate=1.0, initial_idle=False, webhook=False)
    agent = standin.register()

    dispatch(standin, agent.agent_id)

    assert standin.wait_quiet()
    assert recorder.requests == []
    stats = standin.stats()
    assert stats["lost_forwards"] == 1
    assert stats["outcomes"]["lost"] == 1
    assert stats["in_flight_by_agent"] == {}


def test_a_task_can_override_its_outcome_and_work_time(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    dispatch(standin, agent.agent_id, task_id="fails", _standin={"outcome": "fail", "work_time": 0})
    assert standin.wait_quiet()
    dispatch(standin, agent.agent_id, task_id="lost", _standin={"outcome": "lose"})
    assert standin.wait_quiet()

    assert recorder.states() == ["active", "error", "idle"]
    assert [(run["key"], run["status"]) for run in standin.stats()["runs"]] == [("fails#1", "failed"),
                                                                               ("lost#1", "lost")]


def test_a_refused_report_is_counted_and_never_retried(standin, recorder):
    recorder.status = 401
    agent = standin.register(webhook=False)

    assert standin.wait_quiet()
    assert recorder.states() == ["idle"]
    assert standin.stats()["reports_failed"] == {"idle": 1}
    assert httpx.get(f"{standin.url}/_standin/stats").json()["reports_failed"] == {"idle": 1}
    assert agent.agent_id in standin.agent_ids()


def test_an_unreachable_opscore_is_counted_as_failed_sends(make_standin, recorder):
    standin = make_standin(opscore_url="http://127.0.0.1:9", initial_idle=True)

    standin.register()

    assert standin.wait_quiet()
    stats = standin.stats()
    assert stats["reports_failed"] == {"idle": 1}
    assert stats["webhooks_failed"] == {"REGISTER": 1}


def test_a_duplicate_post_runs_twice_and_shows_in_the_stats(make_standin, recorder):
    # Long work keeps the first run in flight while the duplicate arrives; stop() abandons both.
    standin = make_standin(work_time=30, initial_idle=False, webhook=False)
    agent = standin.register()

    dispatch(standin, agent.agent_id, task_id="t-1", attempt=1)
    dispatch(standin, agent.agent_id, task_id="t-1", attempt=1)

    stats = httpx.get(f"{standin.url}/_standin/stats").json()
    assert stats["runs_by_attempt"] == {"t-1#1": 2}
    assert stats["duplicate_attempts"] == ["t-1#1"]
    assert stats["max_concurrent_by_agent"] == {agent.agent_id: 2}
    assert stats["overlaps"] == [{"agentId": agent.agent_id, "run": "t-1#1", "busy_with": ["t-1#1"]}]
    assert stats["in_flight_by_agent"] == {agent.agent_id: 2}
    standin.stop()
    assert recorder.requests == []


def test_sequential_tasks_never_count_as_overlapping(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    for number in range(3):
        dispatch(standin, agent.agent_id, task_id=f"t-{number}")
        assert standin.wait_quiet()

    stats = standin.stats()
    assert stats["runs_by_agent"] == {agent.agent_id: 3}
    assert stats["duplicate_attempts"] == []
    assert stats["overlaps"] == []
    assert stats["max_concurrent_by_agent"] == {agent.agent_id: 1}
    assert recorder.states() == ["active", "idle"] * 3


def test_reset_clears_the_counters_but_keeps_the_agents(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)
    dispatch(standin, agent.agent_id)
    assert standin.wait_quiet()

    reset = httpx.post(f"{standin.url}/_standin/stats/reset")

    assert reset.status_code == 200
    assert reset.json()["runs_accepted"] == 0
    assert reset.json()["reports_sent"] == {}
    assert reset.json()["agents_registered"] == 1


def test_stats_are_json_serialisable_with_every_counter(standin):
    stats = standin.stats()

    assert json.loads(json.dumps(stats)) == stats
    assert set(stats) == {
        "agents_registered", "runs_accepted", "runs_by_agent", "runs_by_attempt", "duplicate_attempts",
        "max_concurrent_by_agent", "in_flight_by_agent", "overlaps", "lost_forwards", "outcomes", "reports_sent",
        "reports_failed", "webhooks_sent", "webhooks_failed", "webhooks_skipped", "responses", "runs"}


def test_the_run_list_keeps_the_latest_runs_and_the_counters_keep_all(standin, recorder, monkeypatch):
    # A soak dispatches thousands of runs: the list is bounded (the stand-in's RSS stays flat),
    # the counters the duplicate and overlap checks read are not.
    from agentkit_standin import standin as module

    monkeypatch.setattr(module, "RUNS_KEPT", 2)
    standin.reset_stats()  # the list takes its bound at reset
    agent = standin.register(initial_idle=False, webhook=False)
    for number in range(3):
        dispatch(standin, agent.agent_id, task_id=f"t-{number}")
        assert standin.wait_quiet()

    stats = standin.stats()
    assert [run["key"] for run in stats["runs"]] == ["t-1#1", "t-2#1"]
    assert stats["runs_accepted"] == 3
    assert stats["runs_by_attempt"] == {"t-0#1": 1, "t-1#1": 1, "t-2#1": 1}
