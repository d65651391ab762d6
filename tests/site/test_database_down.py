"""The database unreachable: every API request is a 503 JSON with Retry-After, pages a plain 503,
and the log one line per failure class per interval, not a traceback per request.

The database is really unreachable here: the connection is pointed at a port nothing listens on.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime

import pytest
from django.db import connection
from rest_framework.test import APIClient

from agents.services import api_key_create
from opscore_site import dbdown

pytestmark = pytest.mark.django_db(transaction=True)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def database_down():
    """Point the default connection at a closed port for the test (restored after)."""
    saved = {key: connection.settings_dict[key] for key in ("HOST", "PORT")}
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(closed_port()))
    dbdown.limiter.reset()
    yield
    connection.close()
    connection.settings_dict.update(saved)
    dbdown.limiter.reset()


@pytest.fixture
def api() -> APIClient:
    _, raw = api_key_create(name="fleet")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def state_report(api: APIClient, agent_id: str = "a1"):
    body = {"agentId": agent_id, "timestamp": datetime.now(UTC).isoformat(), "state": "idle", "details": {}}
    return api.post(f"/v1/opscore/agent/{agent_id}/state", body, format="json")


def assert_database_unavailable(response) -> None:
    assert response.status_code == 503, (response.status_code, response.content[:300])
    assert response.json() == {"detail": "the database is unavailable", "code": "database_unavailable",
                               "errors": {}}
    assert response["Retry-After"] == str(dbdown.RETRY_AFTER_SECONDS)


def test_every_api_request_is_a_503_that_says_the_database_is_unavailable(api, database_down):
    for response in (state_report(api), api.get("/v1/opscore/agent/a1/state"), api.get("/v1/opscore/sessions"),
                     api.get("/v1/opscore/agents/a1"),
                     api.post("/v1/opscore/agent/a1/workflow", {"workflowDefinitionId": "wf"}, format="json")):
        assert_database_unavailable(response)


def test_pages_answer_a_plain_503_page(client, django_user_model, request):
    client.force_login(django_user_model.objects.create_user("olivia", password="x", is_staff=True))
    request.getfixturevalue("database_down")  # after the login: the session lookup itself fails now
    for path in ("/", "/agents/", "/sessions/", "/admin/"):
        response = client.get(path)
        assert response.status_code == 503, (path, response.status_code)
        assert b"The database is unavailable" in response.content
        assert response["Retry-After"] == str(dbdown.RETRY_AFTER_SECONDS)


def test_the_log_has_one_line_per_failure_class_per_interval_and_no_traceback(api, database_down, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(10):
        assert_database_unavailable(state_report(api))
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].name == "opscore_site.dbdown" and lines[0].exc_info is None
    assert lines[0].getMessage().startswith("the database is unavailable: OperationalError: ")
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_after_the_interval_the_next_line_counts_what_it_left_out(api, database_down, caplog, monkeypatch):
    caplog.set_level(logging.ERROR, logger="opscore_site.dbdown")
    for _ in range(4):
        state_report(api)
    monkeypatch.setattr(dbdown.limiter, "interval", 0.0)  # the interval has passed
    state_report(api)
    messages = [r.getMessage() for r in caplog.records if r.name == "opscore_site.dbdown"]
    assert len(messages) == 2 and messages[1].endswith("(3 more since the last line)")


def test_the_api_works_again_once_the_database_is_back(api):
    saved = {key: connection.settings_dict[key] for key in ("HOST", "PORT")}
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(closed_port()))
    try:
        assert_database_unavailable(state_report(api))
    finally:
        connection.close()
        connection.settings_dict.update(saved)
    assert state_report(api).status_code == 202
