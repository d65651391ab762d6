"""The `/_standin/...` control API and the `python -m agentkit_standin` command."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from agentkit_standin import Config, ConfigError

from .conftest import API_KEY, WEBHOOK_SECRET, run_message

REPO = Path(__file__).resolve().parents[2]


def test_control_registers_agents_by_count_and_by_spec(standin, recorder):
    by_count = httpx.post(f"{standin.url}/_standin/agents", json={"count": 2, "webhook": False})
    by_spec = httpx.post(f"{standin.url}/_standin/agents", json={
        "agents": [{"agentId": "agent-x", "agentName": "x", "version": "3.0", "capabilities": ["c"]}],
        "initial_idle": False})

    assert by_count.status_code == 201
    assert len(by_count.json()["agents"]) == 2
    assert by_spec.status_code == 201
    assert by_spec.json()["agents"][0]["agentId"] == "agent-x"
    assert standin.wait_quiet()
    listed = httpx.get(f"{standin.url}/_standin/agents").json()["agents"]
    assert {a["agentId"] for a in listed} == {a["agentId"] for a in by_count.json()["agents"]} | {"agent-x"}
    assert recorder.states() == ["idle", "idle"]
    assert [json.loads(w.body)["agent_details"]["agentId"] for w in recorder.webhooks()] == ["agent-x"]
    assert httpx.get(f"{standin.url}/_standin/agents/agent-x").json()["capabilities"] == ["c"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"count": 0}, 400, "count: expected an integer from 1 to 1000"),
    ({"count": "3"}, 400, "count: expected an integer from 1 to 1000"),
    ({"agents": []}, 400, "agents: expected a non-empty list of objects"),
    ({"agents": [{"agentName": 5}]}, 400, "agents[0].agentName: expected a string"),
    ({"agents": [{"colour": "red"}]}, 400, "agents[0]: unknown field(s) colour"),
    ({"agents": [{"agentId": "a"}, {"agentId": "a"}]}, 400, "agents[1].agentId: a appears twice"),
    ({"count": 1, "webhook": "yes"}, 400, "webhook: expected true or false"),
])
def test_control_refuses_bad_registrations_with_the_reason(standin, body, status, message):
    response = httpx.post(f"{standin.url}/_standin/agents", json=body)

    assert response.status_code == status
    assert message in response.json()["detail"]
    assert standin.agents() == []


def test_control_refuses_a_taken_agent_id(standin):
    standin.register(agent_id="agent-x", initial_idle=False, webhook=False)

    response = httpx.post(f"{standin.url}/_standin/agents", json={"agents": [{"agentId": "agent-x"}]})

    assert response.status_code == 409
    assert len(standin.agents()) == 1


def test_control_refuses_invalid_json(standin):
    response = httpx.post(f"{standin.url}/_standin/agents", content=b"{oops")

    assert response.status_code == 400
    assert response.json()["detail"].startswith("Body is not valid JSON")


def test_deregister_sends_a_signed_deregister_webhook_and_forgets_the_agent(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    response = httpx.delete(f"{standin.url}/_standin/agents/{agent.agent_id}")

    assert response.status_code == 200
    assert standin.wait_quiet()
    (webhook,) = recorder.webhooks()
    body = json.loads(webhook.body)
    assert body["event_type"] == "DEREGISTER"
    assert body["agent_details"]["agentId"] == agent.agent_id
    timestamp = webhook.headers["X-AgentKit-Timestamp"]
    assert webhook.headers["X-AgentKit-Signature"] == hmac.new(
        WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + webhook.body, hashlib.sha256).hexdigest()
    run = httpx.post(f"{standin.url}/v1/agents/{agent.agent_id}/run", json=run_message())
    assert run.status_code == 404
    assert httpx.delete(f"{standin.url}/_standin/agents/{agent.agent_id}").status_code == 404


def test_deregister_without_webhook(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    assert httpx.delete(f"{standin.url}/_standin/agents/{agent.agent_id}?webhook=0").status_code == 200
    assert standin.wait_quiet()
    assert recorder.requests == []


def test_config_changes_at_runtime_and_refuses_bad_values(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    changed = httpx.post(f"{standin.url}/_standin/config", json={"failure_rate": 1, "work_time": "0-0.01"})
    bad_rate = httpx.post(f"{standin.url}/_standin/config", json={"lost_rate": 1.5})
    bad_key = httpx.post(f"{standin.url}/_standin/config", json={"opscore_url": "http://elsewhere"})
    bad_time = httpx.post(f"{standin.url}/_standin/config", json={"work_time": "0.5-0.1", "lost_rate": 1})
    httpx.post(f"{standin.url}/v1/agents/{agent.agent_id}/run", json=run_message())

    assert changed.status_code == 200
    assert changed.json()["failure_rate"] == 1.0
    assert changed.json()["work_time"] == [0.0, 0.01]
    assert changed.json()["api_key"] is True  # secrets are never echoed
    assert bad_rate.status_code == 400 and "lost_rate" in bad_rate.json()["detail"]
    assert bad_key.status_code == 400 and "cannot change opscore_url" in bad_key.json()["detail"]
    assert bad_time.status_code == 400
    assert standin.config.lost_rate == 0.0  # all-or-nothing
    assert standin.wait_quiet()
    assert recorder.states() == ["active", "error", "idle"]


def test_a_slow_agentkit_still_answers_202_and_forwards(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    changed = httpx.post(f"{standin.url}/_standin/config", json={"answer_delay": "0.05"})
    response = httpx.post(f"{standin.url}/v1/agents/{agent.agent_id}/run", json=run_message())

    assert changed.json()["answer_delay"] == [0.05, 0.05]
    assert response.status_code == 202 and response.json()["data"]["dispatch_status"] == "scheduled"
    assert standin.wait_quiet()
    assert recorder.states() == ["active", "idle"]


def test_control_makes_an_agent_report_a_state(standin, recorder):
    agent = standin.register(initial_idle=False, webhook=False)

    response = httpx.post(f"{standin.url}/_standin/agents/{agent.agent_id}/report",
                          json={"state": "finished", "details": None})
    refused = httpx.post(f"{standin.url}/_standin/agents/{agent.agent_id}/report", json={"state": "sleeping"})

    assert response.json() == {"agentId": agent.agent_id, "state": "finished", "opscore_status": 202}
    assert recorder.states() == ["finished"]
    assert refused.status_code == 400


@pytest.mark.parametrize(("settings", "message"), [
    ({"work_time": "slow"}, "work_time"),
    ({"work_time": "0.1-0.2-0.3"}, "work_time"),
    ({"failure_rate": -0.1}, "failure_rate"),
    ({"opscore_url": "localhost:8000"}, "opscore_url"),
    ({"error_recovery": "later"}, "error_recovery"),
    ({"answer_delay": "-1"}, "answer_delay"),
])
def test_config_refuses_bad_settings_with_the_name(settings, message):
    with pytest.raises(ConfigError, match=message):
        Config(**settings)


def test_register_before_start_is_a_clear_error():
    from agentkit_standin import StandIn

    with pytest.raises(RuntimeError, match="start"):
        StandIn().register()


# --- the command ----------------------------------------------------------------------------------

def _command(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentkit_standin", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@contextlib.contextmanager
def _serving(*args: str, recorder):
    """The command started with `args` against `recorder`, until it listens: yields (process, url, lines);
    stopped (SIGTERM, then killed) at the end, and killed anyway after 30 s."""
    process = _command("--port", "0", *args, "--opscore-url", recorder.url,
                       env={"OPSCORE_API_KEY": API_KEY, "OPSCORE_WEBHOOK_SECRET": WEBHOOK_SECRET})
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        lines: list[str] = []
        url = _read_until(process, "listening on", lines).split("listening on ")[1].split()[0]
        yield process, url, lines
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=20)
    finally:
        watchdog.cancel()
        process.kill()


def _read_until(process: subprocess.Popen, marker: str, lines: list[str]) -> str:
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return line
    raise AssertionError(f"no {marker!r} in output: {''.join(lines)}")


def test_the_command_registers_agents_serves_and_stops_cleanly_on_sigterm(recorder):
    with _serving("--agents", "2", recorder=recorder) as (process, url, lines):
        requests = recorder.wait_for(4)
        assert sorted(r.path.rsplit("/", 1)[-1] for r in requests) == ["notify", "notify", "state", "state"]
        assert all(r.headers.get("Authorization") == f"Bearer {API_KEY}" for r in recorder.reports())
        agents = httpx.get(f"{url}/_standin/agents").json()["agents"]
        assert len(agents) == 2
        assert httpx.post(f"{url}/v1/agents/{agents[0]['agentId']}/run", json=run_message()).status_code == 202
        recorder.wait_for(6)
        process.send_signal(signal.SIGTERM)
        output = process.communicate()[0]
        assert process.returncode == 0
        assert "stopped" in output
        assert ("".join(lines) + output).count("register agent=") == 2


def test_the_command_refuses_bad_options_with_the_reason():
    process = _command("--failure-rate", "2")

    output = process.communicate(timeout=30)[0]

    assert process.returncode == 2
    assert "failure_rate: expected a probability between 0 and 1" in output


def test_known_agents_are_registered_before_the_first_request_is_served(recorder, tmp_path):
    """AgentKit back from a restart: its agents exist before any /run can reach it (no 404 window)."""
    known = tmp_path / "known.json"
    known.write_text(json.dumps({"agents": [{"agentId": "kept-1", "capabilities": ["fetch"]},
                                            {"agentId": "kept-2", "agentName": "Kept"}], "initial_idle": True}))
    with _serving("--known-agents", str(known), recorder=recorder) as (_, url, lines):
        assert "".join(lines).count("register agent=") == 2  # both before the server took a request
        agents = {a["agentId"]: a for a in httpx.get(f"{url}/_standin/agents").json()["agents"]}
        assert set(agents) == {"kept-1", "kept-2"} and agents["kept-1"]["capabilities"] == ["fetch"]
        assert httpx.post(f"{url}/v1/agents/kept-2/run", json=run_message()).status_code == 202


@pytest.mark.parametrize("content, reason", [
    ("not json", "known-agents: cannot read"),
    ('{"count": 2}', 'known-agents: expected {"agents": [...]}'),
    ('{"agents": [{"agentId": 5}]}', "known-agents: agents[0].agentId: expected a string"),
    ('{"agents": [{}], "initial_idle": "yes"}', "known-agents: initial_idle: expected true or false"),
])
def test_a_bad_known_agents_file_is_refused_with_the_reason(tmp_path, content, reason):
    known = tmp_path / "known.json"
    known.write_text(content)
    process = _command("--known-agents", str(known))

    output = process.communicate(timeout=30)[0]

    assert process.returncode == 2
    assert reason in output


def test_an_agent_with_a_fixed_outcome_loses_every_run_until_told_otherwise(standin, recorder):
    created = httpx.post(f"{standin.url}/_standin/agents", json={
        "agents": [{"agentId": "loser", "outcome": "lose"}], "webhook": False, "initial_idle": False})
    assert created.status_code == 201 and created.json()["agents"][0]["outcome"] == "lose"
    for attempt in (1, 2):
        assert httpx.post(f"{standin.url}/v1/agents/loser/run",
                          json=run_message(attempt=attempt)).status_code == 202
    assert standin.wait_quiet()
    assert recorder.reports() == [] and standin.stats()["lost_forwards"] == 2
    changed = httpx.patch(f"{standin.url}/_standin/agents/loser", json={"outcome": None})
    assert changed.status_code == 200 and changed.json()["outcome"] is None
    assert httpx.post(f"{standin.url}/v1/agents/loser/run", json=run_message(attempt=3)).status_code == 202
    assert recorder.wait_for(2) and recorder.states("loser") == ["active", "idle"]


@pytest.mark.parametrize("body, status, message", [
    ({"outcome": "explode"}, 400, "outcome: expected one of complete, fail, lose or null"),
    ({"outcome": "lose", "extra": 1}, 400, 'expected {"outcome"'),
    ([], 400, 'expected {"outcome"'),
])
def test_setting_an_agents_outcome_refuses_bad_bodies(standin, body, status, message):
    standin.register(agent_id="a1", webhook=False, initial_idle=False)
    response = httpx.patch(f"{standin.url}/_standin/agents/a1", json=body)
    assert response.status_code == status and message in response.json()["detail"]
    assert httpx.patch(f"{standin.url}/_standin/agents/nobody", json={"outcome": "lose"}).status_code == 404
    bad = httpx.post(f"{standin.url}/_standin/agents", json={"agents": [{"outcome": "explode"}]})
    assert bad.status_code == 400 and "agents[0].outcome: expected one of complete, fail, lose" in bad.text


def test_the_command_gives_capability_sets_in_turn_and_forgets_agents(recorder):
    with _serving("--agents", "3", "--capability-sets", "fetch,summarise;publish", "--forgotten-agents", "1",
                  recorder=recorder) as (process, url, lines):
        _read_until(process, "deregister agent=", lines)
        agents = httpx.get(f"{url}/_standin/agents").json()["agents"]
        assert [a["capabilities"] for a in agents] == [["fetch", "summarise"], ["publish"], ["fetch", "summarise"]]
        reported = {r.path.split("/")[4] for r in recorder.wait_for(8) if "/state" in r.path}
        forgotten = reported - {a["agentId"] for a in agents}
        assert len(forgotten) == 1  # it reported and announced itself, and AgentKit no longer knows it
        assert httpx.post(f"{url}/v1/agents/{forgotten.pop()}/run", json=run_message()).status_code == 404
        assert not [r for r in recorder.webhooks() if r.json()["event_type"] == "DEREGISTER"]
