"""The exact bytes AgentKit and its SDK send (AGENTKIT.md sections 1-2)."""

from __future__ import annotations

import time

import pytest
from rest_framework.test import APIClient

from agents.models import Agent, AgentState
from agents.webhook import sign

pytestmark = pytest.mark.django_db

AGENT_ID = "3f2c9a1e-7b5d-4c8e-9f10-2a6b4c8d0e12"
STATE_BODY = (b'{"agentId":"3f2c9a1e-7b5d-4c8e-9f10-2a6b4c8d0e12",'
              b'"timestamp":"2026-11-23T22:09:39.929454+00:00","state":"idle","details":{}}')
STATE_NULL_BODY = (b'{"agentId":"3f2c9a1e-7b5d-4c8e-9f10-2a6b4c8d0e12",'
                   b'"timestamp":"2026-11-23T22:09:40+00:00","state":"error","details":null}')
WEBHOOK_BODY = (b'{"event_type":"REGISTER","agent_details":{"agentId":"3f2c9a1e-7b5d-4c8e-9f10-2a6b4c8d0e12",'
                b'"agentName":"echo-agent","version":"1.2.3","capabilities":["a","b"],'
                b'"contactEndpoint":"http://host:9000/","metadata":{}}}')


def test_sdk_report_then_webhook_byte_for_byte(service_key):
    sdk = APIClient()
    response = sdk.generic("POST", f"/v1/opscore/agent/{AGENT_ID}/state", STATE_BODY,
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {service_key}")
    assert response.status_code == 202 and response.json()["status"] == "success"
    response = sdk.generic("POST", f"/v1/opscore/agent/{AGENT_ID}/state", STATE_NULL_BODY,
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {service_key}")
    assert response.status_code == 202

    timestamp = str(int(time.time()))  # integer Unix seconds as a string
    signature = sign(secret="test-webhook-secret", timestamp=timestamp, body=WEBHOOK_BODY)
    response = APIClient().generic("POST", "/v1/opscore/internal/agent/notify", WEBHOOK_BODY,
                                   content_type="application/json", HTTP_X_AGENTKIT_TIMESTAMP=timestamp,
                                   HTTP_X_AGENTKIT_SIGNATURE=signature)
    assert response.status_code == 200, response.content

    agent = Agent.objects.get(pk=AGENT_ID)
    assert agent.state == "error" and agent.state_details is None  # newest by agent timestamp
    assert agent.name == "echo-agent" and agent.capabilities == ["a", "b"]
    assert AgentState.objects.filter(agent=agent).count() == 2
    state = sdk.get(f"/v1/opscore/agent/{AGENT_ID}/state", HTTP_AUTHORIZATION=f"Bearer {service_key}").json()
    assert state == {"agentId": AGENT_ID, "state": "error", "details": None, "timestamp": "2026-11-23T22:09:40Z"}


# AGENTKIT.md section 1's example delivery: integer-seconds timestamp, signature computed
# independently (openssl dgst -sha256 -hmac test-webhook-secret over b"1795471675." + body).
WEBHOOK_TIMESTAMP = "1795471675"
WEBHOOK_SIGNATURE = "e9eab6a70b04042ad69a8355b70775eaf2a866f60a4b9d682a0f2eec2c62ec9e"


def test_agentkits_signature_over_the_example_bytes_is_accepted(db, settings):
    settings.OPSCORE_WEBHOOK_TOLERANCE_SECONDS = int(time.time()) - 1795471675 + 60  # the example's moment
    response = APIClient().generic("POST", "/v1/opscore/internal/agent/notify", WEBHOOK_BODY,
                                   content_type="application/json", HTTP_X_AGENTKIT_TIMESTAMP=WEBHOOK_TIMESTAMP,
                                   HTTP_X_AGENTKIT_SIGNATURE=WEBHOOK_SIGNATURE)
    assert response.status_code == 200, response.content
    assert Agent.objects.get(pk=AGENT_ID).version == "1.2.3"
    # One byte of the body or the timestamp changed: refused.
    response = APIClient().generic("POST", "/v1/opscore/internal/agent/notify", WEBHOOK_BODY.replace(b"1.2.3", b"1.2.4"),
                                   content_type="application/json", HTTP_X_AGENTKIT_TIMESTAMP=WEBHOOK_TIMESTAMP,
                                   HTTP_X_AGENTKIT_SIGNATURE=WEBHOOK_SIGNATURE)
    assert response.status_code == 401 and response.json()["code"] == "bad_signature"
    response = APIClient().generic("POST", "/v1/opscore/internal/agent/notify", WEBHOOK_BODY,
                                   content_type="application/json", HTTP_X_AGENTKIT_TIMESTAMP="1795471676",
                                   HTTP_X_AGENTKIT_SIGNATURE=WEBHOOK_SIGNATURE)
    assert response.status_code == 401 and response.json()["code"] == "bad_signature"


def test_the_standin_sends_the_same_bytes_and_headers():
    """agentkit_standin's webhook is AgentKit's, byte for byte (AGENTKIT.md section 1)."""
    from agentkit_standin import wire

    details = {"agentId": AGENT_ID, "agentName": "echo-agent", "version": "1.2.3", "capabilities": ["a", "b"],
               "contactEndpoint": "http://host:9000/", "metadata": {}}
    assert wire.webhook_body("REGISTER", details) == WEBHOOK_BODY
    assert wire.webhook_headers(WEBHOOK_BODY, "test-webhook-secret", now=1795471675.9) == {
        "Content-Type": "application/json", "X-AgentKit-Timestamp": WEBHOOK_TIMESTAMP,
        "X-AgentKit-Signature": WEBHOOK_SIGNATURE}


def test_the_env_key_works_without_a_migrate(db, settings):
    """OPSCORE_API_KEY (the SDK's fleet-wide key) is installed on its first use."""
    settings.OPSCORE_API_KEY = "opk_fleet-wide-key-from-the-environment"
    response = APIClient().generic("POST", f"/v1/opscore/agent/{AGENT_ID}/state", STATE_BODY,
                                   content_type="application/json",
                                   HTTP_AUTHORIZATION="Bearer opk_fleet-wide-key-from-the-environment")
    assert response.status_code == 202
    response = APIClient().generic("POST", f"/v1/opscore/agent/{AGENT_ID}/state", STATE_BODY,
                                   content_type="application/json", HTTP_AUTHORIZATION="Bearer opk_fleet-wide-key-wrong")
    assert response.status_code == 401
