"""JSON no endpoint may answer with a 500: lone surrogates, NaN/Infinity, deep nesting, NUL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from agents.models import Agent, AgentState
from agents.webhook import sign
from opscore_site.parsers import MAX_DEPTH, parse_json_bytes
from sessions.models import Session
from tests.agents.factories import AgentFactory
from tests.api.conftest import assert_error
from workflows.models import WorkflowDefinition

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC).isoformat()


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# Each is a JSON text for a value inside an otherwise valid body.
HOSTILE = {
    "lone surrogate": '"\\ud800"',
    "surrogate in a key": '{"\\udfff": 1}',
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "float overflow": "1e999",
    "NUL": '"a\\u0000b"',
    "too deep": deep(MAX_DEPTH + 1),
    "far too deep": deep(5000),
}


def state_body(value: str) -> bytes:
    return (f'{{"agentId": "a1", "timestamp": "{NOW}", "state": "idle", '
            f'"details": {{"x": {value}}}}}').encode()


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_state_report_with_hostile_json_is_400(api, value):
    response = api.post("/v1/opscore/agent/a1/state", state_body(value), content_type="application/json")
    assert_error(response, 400, "parse_error")
    assert not AgentState.objects.exists()


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_trigger_with_hostile_initial_payload_is_400(api, value):
    AgentFactory(id="a1")
    body = f'{{"workflowDefinitionId": "wf", "initialPayload": {{"x": {value}}}}}'.encode()
    response = api.post("/v1/opscore/agent/a1/workflow", body, content_type="application/json")
    assert_error(response, 400, "parse_error")
    assert not Session.objects.exists()


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_workflow_body_with_hostile_json_is_400(api, value):
    body = f'{{"id": "wf", "name": {value}, "tasks": []}}'.encode()
    assert_error(api.post("/v1/opscore/workflows", body, content_type="application/json"), 400, "parse_error")
    assert not WorkflowDefinition.objects.exists()


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_signed_webhook_with_hostile_json_is_400(db, value):
    body = (f'{{"event_type":"REGISTER","agent_details":{{"agentId":"a1","metadata":{{"x":{value}}}}}}}').encode()
    timestamp = str(int(time.time()))
    response = APIClient().post(
        "/v1/opscore/internal/agent/notify", body, content_type="application/json",
        HTTP_X_AGENTKIT_TIMESTAMP=timestamp,
        HTTP_X_AGENTKIT_SIGNATURE=sign(secret="test-webhook-secret", timestamp=timestamp, body=body),
    )
    assert_error(response, 400, "parse_error")
    assert not Agent.objects.exists()


def test_nesting_up_to_the_limit_is_accepted(api):
    value = "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2)  # body and details are two levels
    response = api.post("/v1/opscore/agent/a1/state", state_body(value), content_type="application/json")
    assert response.status_code == 202, response.content
    assert AgentState.objects.get().details["x"][0][0] is not None


@pytest.mark.parametrize("text, reason", [
    ('"\\ud800"', "UTF-8"),
    ("NaN", "NaN"),
    ("1e999", "finite"),
    (deep(MAX_DEPTH + 1), f"{MAX_DEPTH} levels"),
    (deep(100_000), f"{MAX_DEPTH} levels"),
    ('"\\u0000"', "NUL"),
    ("\xff", "JSON parse error"),
])
def test_parse_json_bytes_says_why(text, reason):
    from rest_framework.exceptions import ParseError

    with pytest.raises(ParseError) as caught:
        parse_json_bytes(text.encode("latin-1") if text == "\xff" else text.encode())
    assert reason in str(caught.value.detail)


def test_parse_json_bytes_keeps_valid_documents():
    document = {"a": [1, 2.5, None, True, "é😀"], "b": {"c": "d"}}
    assert parse_json_bytes(json.dumps(document).encode()) == document
