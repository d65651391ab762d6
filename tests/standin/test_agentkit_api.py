"""The stand-in's AgentKit API on the wire: /run's 202/404/422, the other routes, pause."""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import run_message


def post_run(standin, agent_id: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{standin.url}/v1/agents/{agent_id}/run", content=content,
                      headers={"Content-Type": "application/json"})


def quiet_agent(standin, **kwargs):
    return standin.register(initial_idle=False, webhook=False, **kwargs)


def test_it_accepts_a_task_with_agentkits_exact_202_body(standin):
    agent = quiet_agent(standin)

    response = post_run(standin, agent.agent_id, run_message())

    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    assert response.content == (
        '{"status":"success","message":"Task accepted for agent %s. Dispatch scheduled.",'
        '"data":{"agentId":"%s","dispatch_status":"scheduled"},"error_code":null}' % (agent.agent_id, agent.agent_id)
    ).encode()
    assert standin.stats()["responses"] == {"202": 1}


def test_it_answers_404_for_an_unknown_agent(standin):
    response = post_run(standin, "no-such-agent", run_message())

    assert response.status_code == 404
    assert response.content == b'{"detail":"Agent with ID \'no-such-agent\' not found."}'
    stats = standin.stats()
    assert stats["responses"] == {"404": 1}
    assert stats["runs_accepted"] == 0


@pytest.mark.parametrize(("body", "loc", "kind"), [
    ({"messageType": "workflow_task", "payload": {}}, ["body", "senderId"], "missing"),
    ({"senderId": 5, "messageType": "workflow_task", "payload": {}}, ["body", "senderId"], "string_type"),
    ({"senderId": "opscore", "payload": {}}, ["body", "messageType"], "missing"),
    ({"senderId": "opscore", "messageType": "workflow_task"}, ["body", "payload"], "missing"),
    ({"senderId": "opscore", "messageType": "workflow_task", "payload": [1]}, ["body", "payload"], "dict_type"),
    ({"senderId": "opscore", "messageType": "t", "payload": {}, "sessionContext": "s"}, ["body", "sessionContext"],
     "model_type"),
    ({"senderId": "opscore", "messageType": "t", "payload": {}, "opscore_task_id": 12}, ["body", "opscore_task_id"],
     "string_type"),
    ({"senderId": "opscore", "messageType": "t", "payload": {}, "timestamp": "yesterday"}, ["body", "timestamp"],
     "datetime_parsing"),
    ([1, 2], ["body"], "model_attributes_type"),
    (b"", ["body"], "missing"),
    (b"{not json", ["body", 1], "json_invalid"),
])
def test_it_answers_422_in_fastapis_shape_for_a_malformed_body(standin, body, loc, kind):
    agent = quiet_agent(standin)

    response = post_run(standin, agent.agent_id, body)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(error["loc"], error["type"]) for error in detail] == [(loc, kind)]
    assert all(set(error) >= {"type", "loc", "msg", "input"} for error in detail)
    assert standin.stats()["runs_accepted"] == 0


def test_it_checks_the_body_before_the_agent_like_fastapi(standin):
    response = post_run(standin, "no-such-agent", {"senderId": "opscore"})

    assert response.status_code == 422


def test_it_keeps_unknown_fields_optional_like_agentkit(standin, recorder):
    agent = quiet_agent(standin)
    body = {"senderId": "opscore", "messageType": "workflow_task", "payload": {}, "sessionContext": None,
            "task_name": None, "extra": {"dropped": True}, "timestamp": "2026-11-23T22:09:39.929454+00:00"}

    assert post_run(standin, agent.agent_id, body).status_code == 202


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/", 200),
    ("GET", "/v1/agents", 404),
    ("GET", "/health", 404),
    ("GET", "/v1/agents/abc/run", 405),
])
def test_its_other_routes_answer_like_todays_agentkit(standin, method, path, status):
    response = httpx.request(method, f"{standin.url}{path}")

    assert response.status_code == status
    assert "detail" in response.json() or status == 200


def test_a_trailing_slash_gets_a_redirect_that_is_not_followed(standin):
    agent = quiet_agent(standin)

    response = post_run(standin, f"{agent.agent_id}", run_message())
    slashed = httpx.post(f"{standin.url}/v1/agents/{agent.agent_id}/run/", json=run_message())

    assert response.status_code == 202
    assert slashed.status_code == 307
    assert slashed.headers["location"] == f"/v1/agents/{agent.agent_id}/run"
    assert standin.stats()["runs_accepted"] == 1


def test_a_paused_standin_answers_503_until_resumed(standin, recorder):
    agent = quiet_agent(standin)
    paused = httpx.post(f"{standin.url}/_standin/config", json={"paused": True})

    refused = post_run(standin, agent.agent_id, run_message())
    httpx.post(f"{standin.url}/_standin/config", json={"paused": False})
    accepted = post_run(standin, agent.agent_id, run_message(task_id="task-2"))

    assert paused.json()["paused"] is True
    assert refused.status_code == 503
    assert refused.json() == {"detail": "AgentKit is unavailable (stand-in paused)."}
    assert accepted.status_code == 202
    stats = standin.stats()
    assert stats["responses"] == {"503": 1, "202": 1}
    assert [run["key"] for run in stats["runs"]] == ["task-2#1"]


def test_it_refuses_a_body_over_one_megabyte(standin):
    agent = quiet_agent(standin)

    response = post_run(standin, agent.agent_id, b"{" + b" " * (1024 * 1024 + 1) + b"}")

    assert response.status_code == 413
    assert standin.stats()["runs_accepted"] == 0


def test_agentkits_own_register_endpoint_registers_and_validates(standin, recorder):
    good = httpx.post(f"{standin.url}/v1/agents/register", json={
        "agentName": "summariser", "version": "2.0.0", "capabilities": ["summarize"],
        "contactEndpoint": "http://agent.example:9000/"})
    bad = httpx.post(f"{standin.url}/v1/agents/register", json={"agentName": "x", "contactEndpoint": "ftp://x"})

    assert good.status_code == 201
    agent_id = good.json()["data"]["agentId"]
    assert good.json() == {"status": "success", "message": "Agent 'summariser' registered successfully.",
                           "data": {"agentId": agent_id}, "error_code": None}
    assert standin.agent(agent_id)["contactEndpoint"] == "http://agent.example:9000/"
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("body", "version"), ("body", "contactEndpoint")}
    assert post_run(standin, agent_id, run_message()).status_code == 202


def test_one_pooled_connection_survives_every_kind_of_answer(standin):
    agent = quiet_agent(standin)
    url = f"{standin.url}/v1/agents/{agent.agent_id}/run"

    with httpx.Client() as client:
        statuses = [
            client.post(url, content=b"{broken").status_code,
            client.post(f"{standin.url}/v1/agents", json={"ignored": True}).status_code,
            client.request("GET", url, content=b"unexpected body").status_code,
            client.post(url, json=run_message(task_id="a")).status_code,
            client.post(url, content=iter([json.dumps(run_message(task_id="b")).encode()])).status_code,  # chunked
            client.post(f"{standin.url}/v1/agents/other/run", json=run_message()).status_code,
        ]

    assert statuses == [422, 404, 405, 202, 202, 404]
    assert [run["key"] for run in standin.stats()["runs"]] == ["a#1", "b#1"]
