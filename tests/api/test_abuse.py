"""Hostile clients get a clear 4xx in the API's error shape, never a 5xx, from the three endpoints
that take input from outside: the state report, the workflow trigger and AgentKit's webhook.

Huge bodies, deep nesting, huge numbers, bytes that are not UTF-8, CR-LF and other odd characters
in path ids and headers (tests/api/test_hostile_json.py has the values inside valid JSON)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from rest_framework.test import APIClient

from agents.models import Agent, AgentState, agent_id_problem
from agents.webhook import sign
from sessions.models import Session
from tests.agents.factories import AgentFactory
from tests.api.conftest import assert_error
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC).isoformat()
WEBHOOK = "/v1/opscore/internal/agent/notify"
SECRET = "test-webhook-secret"  # settings_test.py


def state_url(agent_id: str = "a1") -> str:
    return f"/v1/opscore/agent/{quote(agent_id, safe='')}/state"


def trigger_url(agent_id: str = "a1") -> str:
    return f"/v1/opscore/agent/{quote(agent_id, safe='')}/workflow"


def signed(body: bytes, **headers) -> dict:
    timestamp = str(int(time.time()))
    return {"HTTP_X_AGENTKIT_TIMESTAMP": timestamp,
            "HTTP_X_AGENTKIT_SIGNATURE": sign(secret=SECRET, timestamp=timestamp, body=body), **headers}


def post(client: APIClient, endpoint: str, body: bytes, **headers):
    """POST raw bytes as JSON to one of the three endpoints (the webhook's signed over those bytes)."""
    if endpoint == "webhook":
        return APIClient().post(WEBHOOK, body, content_type="application/json", **signed(body, **headers))
    url = state_url() if endpoint == "state" else trigger_url()
    return client.post(url, body, content_type="application/json", **headers)


def assert_no_header_injection(response) -> None:
    for name, value in response.items():
        assert "\r" not in value and "\n" not in value, (name, value)
    assert "Set-Cookie" not in response or "evil" not in response["Set-Cookie"]


ENDPOINTS = ["state", "trigger", "webhook"]


@pytest.fixture(autouse=True)
def an_agent_and_a_workflow(db):
    AgentFactory(id="a1")
    WorkflowDefinitionFactory(id="wf")


def nothing_stored() -> None:
    assert not AgentState.objects.exists()
    assert not Session.objects.exists()
    assert list(Agent.objects.values_list("pk", flat=True)) == ["a1"]


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_over_the_limit_is_413_before_anything_reads_it(api, endpoint, settings):
    body = b'{"x": "' + b"a" * settings.OPSCORE_MAX_BODY_BYTES + b'"}'
    body = assert_error(post(api, endpoint, body), 413, "payload_too_large")
    assert str(settings.OPSCORE_MAX_BODY_BYTES) in body["detail"]
    nothing_stored()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_content_length_that_is_not_a_number_is_400(api, endpoint):
    response = post(api, endpoint, b"{}", CONTENT_LENGTH="12abc")
    assert_error(response, 400, "invalid_content_length")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
], ids=["arrays", "objects"])
def test_a_body_nested_far_too_deep_is_400(api, endpoint, body):
    assert_error(post(api, endpoint, body), 400, "parse_error")
    nothing_stored()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_number_with_a_hundred_thousand_digits_is_400(api, endpoint):
    assert_error(post(api, endpoint, b'{"x": ' + b"9" * 100_000 + b"}"), 400, "parse_error")
    nothing_stored()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("body", [
    b'{"agentId": "a1", "state": "idle\xff"}',
    b'\xff\xfe\x00\x00',
    b'{"agentId": "\xed\xa0\x80"}',  # an encoded lone surrogate: not UTF-8
    b'{"agentId": "\xc0\xaf"}',  # an overlong '/'
    b"\x00" * 64,
], ids=["stray 0xff", "BOM garbage", "encoded surrogate", "overlong slash", "NUL bytes"])
def test_a_body_that_is_not_utf8_json_is_400(api, endpoint, body):
    assert_error(post(api, endpoint, body), 400, "parse_error")
    nothing_stored()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_that_is_not_json_at_all_is_400_or_415(api, endpoint):
    assert_error(post(api, endpoint, b"state=idle&agentId=a1"), 400, "parse_error")
    url = {"state": state_url(), "trigger": trigger_url(), "webhook": WEBHOOK}[endpoint]
    client = api if endpoint != "webhook" else APIClient()
    assert_error(client.post(url, b"<xml/>", content_type="application/xml"), 415)
    nothing_stored()


# --------------------------------------------------------------------------- ids in the path


ODD_IDS = {
    "CR-LF header injection": "a1\r\nSet-Cookie: evil=1",
    "LF": "a1\nX-Injected: 1",
    "bare CR": "a1\rX",
    "tab": "a\tb",
    "DEL and C1 controls": "a\x7f\x85b",
    "unicode line separator": "a\u2028b",
    "right-to-left override": "a\u202eb",
    "emoji": "agent-😀",
    "quotes and markup": "<script>alert('x')</script>\"",
    "percent-encoded slash, decoded": "a%2Fb",
    "dot-dot": "..",
}


def state_body(agent_id: str) -> bytes:
    return json.dumps({"agentId": agent_id, "timestamp": NOW, "state": "idle", "details": {}}).encode()


@pytest.mark.parametrize("agent_id", ODD_IDS.values(), ids=ODD_IDS.keys())
def test_odd_characters_in_an_agent_id_in_the_path_never_reach_a_header(api, agent_id):
    for response in (
        api.post(state_url(agent_id), state_body(agent_id), content_type="application/json"),
        api.get(state_url(agent_id)),
        api.post(trigger_url(agent_id), {"workflowDefinitionId": "wf"}, format="json"),
    ):
        assert response.status_code < 500, (response.status_code, response.content[:300])
        assert_no_header_injection(response)
        if response.status_code >= 400:
            assert_error(response, response.status_code)


@pytest.mark.parametrize("path", [
    "/v1/opscore/agent/a1%00/state",  # NUL
    "/v1/opscore/agent/a1%0d%0aSet-Cookie:%20evil=1/state",  # the header's ":" and "/" split it
    "/v1/opscore/agent/%ff%fe/state",  # not UTF-8
    "/v1/opscore/agent/%ed%a0%80/state",  # an encoded lone surrogate
    "/v1/opscore/agent/" + "x" * 256 + "/state",  # over 255 characters
    "/v1/opscore/agent/a%2F..%2F..%2Fadmin/state",
    "/v1/opscore/agent//state",
])
def test_path_ids_no_agent_could_have_are_a_clear_4xx(api, path):
    for response in (api.get(path), api.post(path, state_body("a1"), content_type="application/json"),
                     api.post(path.replace("/state", "/workflow"), {"workflowDefinitionId": "wf"}, format="json")):
        assert 400 <= response.status_code < 500, (path, response.status_code, response.content[:300])
        assert_error(response, response.status_code)
        assert_no_header_injection(response)
    nothing_stored()


@pytest.mark.parametrize("agent_id", ["a1\r\nSet-Cookie: evil=1", "a1\nX", "a1\rX", "a\tb", "a\x7fb", "a\x1bb"],
                         ids=["CR-LF", "LF", "CR", "tab", "DEL", "ESC"])
def test_an_agent_id_with_control_characters_names_no_agent(api, agent_id):
    """No report creates such an agent (the path does not match: 404), so the webhook and the
    other id checks, which refuse it too, never meet an agent they could not name."""
    response = api.post(state_url(agent_id), state_body(agent_id), content_type="application/json")
    assert response.status_code == 404
    assert_error(response, 404)
    nothing_stored()
    assert agent_id_problem(agent_id) and "control characters" in agent_id_problem(agent_id)


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("value", [
    "abc\r\nSet-Cookie: evil=1", "x" * 10_000, "id with spaces", "\u00e9t\u00e9", "<script>",
])
def test_an_odd_request_id_is_replaced_not_echoed(api, value):
    response = api.get(state_url(), HTTP_X_REQUEST_ID=value)
    assert response.status_code == 200
    assert response["X-Request-ID"] != value and len(response["X-Request-ID"]) == 32
    assert_no_header_injection(response)


@pytest.mark.parametrize("authorization", [
    "Bearer a\r\nSet-Cookie: evil=1", "Bearer \u00e9\u00e8", "Bearer " + "k" * 10_000, "Bearer", "Bearer a b",
    "Bearer \x00", "Basic YWxpY2U6cGFzcw==",
])
@pytest.mark.parametrize("endpoint", ["state", "trigger"])
def test_odd_authorization_headers_are_401(anon, authorization, endpoint):
    anon.credentials(HTTP_AUTHORIZATION=authorization)
    body = state_body("a1") if endpoint == "state" else b'{"workflowDefinitionId": "wf"}'
    response = post(anon, endpoint, body)
    assert_error(response, 401)
    assert_no_header_injection(response)
    nothing_stored()


@pytest.mark.parametrize("value", ["k\r\nSet-Cookie: evil=1", "k" * 256, "\x00", "k\x00", " ", "\t"])
def test_odd_idempotency_keys_are_400_naming_the_header(api, value):
    response = api.post(trigger_url(), {"workflowDefinitionId": "wf"}, format="json", HTTP_IDEMPOTENCY_KEY=value)
    body = assert_error(response, 400, "invalid")
    assert body["errors"] == {"Idempotency-Key": ["must be 1 to 255 printable, non-blank characters"]}
    assert_no_header_injection(response)
    nothing_stored()


@pytest.mark.parametrize("value", ["k" * 255, "\u00e9t\u00e9 key", "3f2b9c1e-0000-4000-8000-000000000001"])
def test_printable_idempotency_keys_are_kept(api, value):
    first = api.post(trigger_url(), {"workflowDefinitionId": "wf"}, format="json", HTTP_IDEMPOTENCY_KEY=value)
    again = api.post(trigger_url(), {"workflowDefinitionId": "wf"}, format="json", HTTP_IDEMPOTENCY_KEY=value)
    assert first.status_code == again.status_code == 202, first.content
    assert first.json()["sessionId"] == again.json()["sessionId"]
    assert Session.objects.get().idempotency_key == value


@pytest.mark.parametrize("headers", [
    {"HTTP_X_AGENTKIT_TIMESTAMP": "1\r\nX: y", "HTTP_X_AGENTKIT_SIGNATURE": "a" * 64},
    {"HTTP_X_AGENTKIT_TIMESTAMP": "9" * 10_000, "HTTP_X_AGENTKIT_SIGNATURE": "a" * 64},
    {"HTTP_X_AGENTKIT_TIMESTAMP": "1e308", "HTTP_X_AGENTKIT_SIGNATURE": "a" * 64},
    {"HTTP_X_AGENTKIT_TIMESTAMP": "nan", "HTTP_X_AGENTKIT_SIGNATURE": "a" * 64},
    {"HTTP_X_AGENTKIT_TIMESTAMP": "-99999999999999999999", "HTTP_X_AGENTKIT_SIGNATURE": "a" * 64},
    {"HTTP_X_AGENTKIT_TIMESTAMP": "9999-12-31T23:59:59+14:00", "HTTP_X_AGENTKIT_SIGNATURE": "a" * 64},
    {"HTTP_X_AGENTKIT_TIMESTAMP": "\u00e9", "HTTP_X_AGENTKIT_SIGNATURE": "\u00e9" * 64},
    {"HTTP_X_AGENTKIT_SIGNATURE": "sha256=" + "\x00" * 64},
])
def test_odd_webhook_headers_are_401(db, headers):
    body = json.dumps({"event_type": "REGISTER", "agent_details": {"agentId": "x"}}).encode()
    all_headers = {**signed(body), **headers}
    response = APIClient().post(WEBHOOK, body, content_type="application/json", **all_headers)
    assert_error(response, 401)
    assert_no_header_injection(response)
    assert not Agent.objects.filter(pk="x").exists()
