"""Fixtures for the v1 API tests: clients with a service key, an agent-bound key, an operator."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from agents.services import api_key_create
from tests.sessions.conftest import agentkit_stub  # noqa: F401 (the engine's AgentKit stub, for the report pins)


@pytest.fixture
def service_key(db) -> str:
    _, raw = api_key_create(name="fleet")
    return raw


@pytest.fixture
def api(service_key) -> APIClient:
    """A client sending the fleet-wide service key."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_key}")
    return client


@pytest.fixture
def agent_key(db) -> str:
    """A key bound to agent 'bound-agent'."""
    _, raw = api_key_create(name="one agent", agent_id="bound-agent")
    return raw


@pytest.fixture
def bound_api(agent_key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_key}")
    return client


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def operator_api(operator) -> APIClient:
    """A logged-in operator's browser session, with CSRF checks on."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator)
    return client


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is the API's one error shape with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"detail", "code", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body
