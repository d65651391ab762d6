"""POST /v1/opscore/internal/agent/notify: AgentKit's signed registration webhook."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from agents.models import Agent
from agents.webhook import sign
from tests.agents.factories import AgentFactory
from tests.api.conftest import assert_error

pytestmark = pytest.mark.django_db
URL = "/v1/opscore/internal/agent/notify"
SECRET = "test-webhook-secret"  # settings_test.py


def register_body(agent_id: str = "b2d3c1e0-0000-4000-8000-000000000001", **details) -> bytes:
    agent_details = {"agentId": agent_id, "agentName": "Echo", "version": "1.2.3", "capabilities": ["a", "b"],
                     "contactEndpoint": "http://host:9000/", "metadata": {}, **details}
    return json.dumps({"event_type": "REGISTER", "agent_details": agent_details}, separators=(",", ":")).encode()


def deliver(body: bytes, *, timestamp: str | None = None, signature: str | None = None, secret: str = SECRET,
            unsigned: bool = False):
    headers = {}
    if not unsigned:
        timestamp = timestamp or str(int(time.time()))
        headers["HTTP_X_AGENTKIT_TIMESTAMP"] = timestamp
        headers["HTTP_X_AGENTKIT_SIGNATURE"] = signature or sign(secret=secret, timestamp=timestamp, body=body)
    return APIClient().post(URL, body, content_type="application/json", **headers)


def test_register_upserts_details(db):
    response = deliver(register_body("a1"))
    assert response.status_code == 200 and response.json()["status"] == "success"
    agent = Agent.objects.get(pk="a1")
    assert (agent.name, agent.version, agent.capabilities, agent.contact_endpoint) == (
        "Echo", "1.2.3", ["a", "b"], "http://host:9000/")
    assert agent.registered_at is not None and agent.state is None


def test_register_is_idempotent_and_updates(db):
    deliver(register_body("a1"))
    deliver(register_body("a1", version="2.0.0"))
    assert Agent.objects.get(pk="a1").version == "2.0.0" and Agent.objects.count() == 1


def test_webhook_after_the_first_report_keeps_the_state(api):
    """In practice the first report arrives 50-80 ms before the webhook (AGENTKIT.md section 1)."""
    at = datetime.now(UTC)
    api.post("/v1/opscore/agent/a1/state", {"agentId": "a1", "timestamp": at.isoformat(), "state": "idle",
                                            "details": {"k": 1}}, format="json")
    assert deliver(register_body("a1")).status_code == 200
    agent = Agent.objects.get(pk="a1")
    assert (agent.state, agent.state_details, agent.state_timestamp, agent.name) == ("idle", {"k": 1}, at, "Echo")


def test_deregister_soft_deletes_and_register_brings_back(db):
    AgentFactory(id="a1", state="active")
    body = json.dumps({"event_type": "DEREGISTER", "agent_details": {"agentId": "a1"}}).encode()
    assert deliver(body).status_code == 200
    agent = Agent.objects.get(pk="a1")
    assert agent.deregistered_at is not None and agent.state == "active"
    deliver(register_body("a1"))
    assert Agent.objects.get(pk="a1").deregistered_at is None


def test_iso_timestamp_header_is_accepted(db):
    timestamp = datetime.now(UTC).isoformat()
    assert deliver(register_body("a1"), timestamp=timestamp).status_code == 200


@pytest.mark.parametrize("kwargs, code", [
    ({"signature": "0" * 64}, "bad_signature"),
    ({"secret": "wrong-secret"}, "bad_signature"),
    ({"timestamp": str(int(time.time()) - 301)}, "stale_timestamp"),
    ({"timestamp": str(int(time.time()) + 400)}, "stale_timestamp"),
    ({"timestamp": "not-a-time"}, "bad_timestamp"),
    ({"timestamp": "\u00b2"}, "bad_timestamp"),  # a non-ASCII digit: isdigit() but not a number
    ({"timestamp": "\u0661\u0662"}, "bad_timestamp"),  # Arabic-Indic digits
    ({"unsigned": True}, "missing_signature"),
])
def test_bad_signatures_are_401(db, kwargs, code):
    assert_error(deliver(register_body("a1"), **kwargs), 401, code)
    assert not Agent.objects.exists()


def test_signature_is_over_the_raw_bytes(db):
    body = register_body("a1")
    timestamp = str(int(time.time()))
    signature = sign(secret=SECRET, timestamp=timestamp, body=body)
    reserialised = json.dumps(json.loads(body), indent=2).encode()
    assert_error(deliver(reserialised, timestamp=timestamp, signature=signature), 401, "bad_signature")


def test_replayed_delivery_is_401(db):
    body = register_body("a1")
    timestamp = str(int(time.time()))
    signature = sign(secret=SECRET, timestamp=timestamp, body=body)
    assert deliver(body, timestamp=timestamp, signature=signature).status_code == 200
    assert_error(deliver(body, timestamp=timestamp, signature=signature), 401, "replayed")


def test_replay_is_refused_after_the_shared_cache_filled_up(db):
    """The replay guard is a table: ~300 throttle counters in the cache once culled it away."""
    from django.core.cache import cache

    body = register_body("a1")
    timestamp = str(int(time.time()))
    signature = sign(secret=SECRET, timestamp=timestamp, body=body)
    assert deliver(body, timestamp=timestamp, signature=signature).status_code == 200
    for n in range(400):
        cache.set(f"throttle:api:ip:10.0.{n // 256}.{n % 256}", [time.time()], 60)
    assert_error(deliver(body, timestamp=timestamp, signature=signature.upper()), 401, "replayed")


def test_the_shared_cache_is_not_culled_at_300_entries(db):
    from django.core.cache import cache

    for n in range(400):
        cache.set(f"throttle:api:key:{n:03d}", n, 60)
    assert cache.get("throttle:api:key:000") == 0 and cache.get("throttle:api:key:399") == 399


def test_receipts_past_twice_the_window_are_deleted(db, settings):
    from datetime import timedelta

    from agents.models import WebhookReceipt

    settings.OPSCORE_WEBHOOK_TOLERANCE_SECONDS = 300
    now = datetime.now(UTC)
    WebhookReceipt.objects.create(signature="a" * 64, timestamp=now, received_at=now - timedelta(seconds=601))
    WebhookReceipt.objects.create(signature="b" * 64, timestamp=now, received_at=now - timedelta(seconds=500))
    assert deliver(register_body("a1")).status_code == 200
    assert not WebhookReceipt.objects.filter(signature="a" * 64).exists()
    assert WebhookReceipt.objects.filter(signature="b" * 64).exists() and WebhookReceipt.objects.count() == 2


def test_a_refused_body_records_no_receipt(db):
    from agents.models import WebhookReceipt

    body = json.dumps({"event_type": "PING", "agent_details": {}}).encode()
    assert_error(deliver(body), 400, "invalid")
    assert not WebhookReceipt.objects.exists()


def test_the_webhook_is_not_throttled_and_spoofed_callers_leave_no_rows(db, settings):
    from django.db import connection

    from opscore_site.throttle import TABLE

    settings.OPSCORE_THROTTLE_RATE = "2/min"
    for n in range(3):
        assert deliver(register_body(f"a{n}")).status_code == 200
    count = f"SELECT (SELECT count(*) FROM opscore_cache), (SELECT count(*) FROM {TABLE})"
    with connection.cursor() as cursor:
        cursor.execute(count)
        before = cursor.fetchone()
        for n in range(5):
            response = APIClient().post(URL, register_body("x"), content_type="application/json",
                                        HTTP_X_FORWARDED_FOR=f"10.9.9.{n}")
            assert_error(response, 401, "missing_signature")
        cursor.execute(count)
        assert cursor.fetchone() == before


def test_no_secret_refuses_with_503(db, settings):
    settings.OPSCORE_WEBHOOK_SECRET = ""
    assert_error(deliver(register_body("a1"), secret="x"), 503, "webhook_not_configured")
    assert_error(deliver(register_body("a1"), unsigned=True), 503, "webhook_not_configured")


def test_unsigned_only_with_the_development_setting(db, settings):
    settings.OPSCORE_WEBHOOK_SECRET = ""
    settings.OPSCORE_WEBHOOK_ALLOW_UNSIGNED = True
    settings.DEBUG = True
    assert deliver(register_body("a1"), unsigned=True).status_code == 200
    settings.DEBUG = False
    assert_error(deliver(register_body("a2"), unsigned=True), 503)


def test_bad_bodies_are_400(db):
    assert_error(deliver(b'{"event_type": '), 400, "parse_error")
    body = assert_error(deliver(json.dumps({"event_type": "PING", "agent_details": {}}).encode()), 400, "invalid")
    assert "event_type" in body["errors"] and "agent_details.agentId" in body["errors"]
    response = APIClient().post(URL, b"x=1", content_type="text/plain")
    assert_error(response, 415)


def test_the_webhook_is_csrf_exempt_even_next_to_an_operator_session(db, operator):
    """AgentKit sends no CSRF token; a session cookie on the same client must not make it a 403."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator)
    body = register_body("a1")
    timestamp = str(int(time.time()))
    response = client.post(URL, body, content_type="application/json", HTTP_X_AGENTKIT_TIMESTAMP=timestamp,
                           HTTP_X_AGENTKIT_SIGNATURE=sign(secret=SECRET, timestamp=timestamp, body=body))
    assert response.status_code == 200, response.content
    # And the session does not stand in for the signature.
    assert_error(client.post(URL, register_body("a2"), content_type="application/json"), 401, "missing_signature")


@pytest.mark.parametrize("endpoint", [
    "javascript:alert(3)", "JavaScript:alert(3)", "data:text/html,<script>alert(1)</script>", "file:///etc/passwd",
    "ftp://host/", "host:9000", "//host:9000/", "http://", "http:/host", "http://host:9000/\r\nX-Evil: 1",
    "http://ho st/", "http://[::1",
])
def test_a_contact_endpoint_that_is_not_an_http_url_is_400(db, endpoint):
    body = assert_error(deliver(register_body("a1", contactEndpoint=endpoint)), 400, "invalid")
    assert list(body["errors"]) == ["agent_details.contactEndpoint"], body
    message = body["errors"]["agent_details.contactEndpoint"][0]
    assert message.startswith(("must be an http:// or https:// URL", "must not contain", "is not a valid URL")), message
    assert body["detail"] == f"agent_details.contactEndpoint: {message}"
    assert not Agent.objects.exists()


@pytest.mark.parametrize("endpoint, stored", [
    ("https://agents.example.com/a1", "https://agents.example.com/a1"),
    ("HTTP://host:9000/", "HTTP://host:9000/"),
    ("http://[::1]:9000/", "http://[::1]:9000/"),
    (None, ""),
    ("", ""),
])
def test_http_contact_endpoints_and_none_are_stored(db, endpoint, stored):
    assert deliver(register_body("a1", contactEndpoint=endpoint)).status_code == 200
    assert Agent.objects.get(pk="a1").contact_endpoint == stored
