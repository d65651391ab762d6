"""agents.agentkit.list_agents against a mocked HTTP transport (run_task: tests/sessions/test_engine.py)."""

from __future__ import annotations

import httpx
import pytest

from agents import agentkit
from agents.agentkit import AgentKitError, AgentListingUnsupported, list_agents


@pytest.fixture
def answer(monkeypatch, settings):
    """Set `answer.with_(handler)`: the handler answers every request to AgentKit."""
    settings.AGENTKIT_API_URL = "http://agentkit.test/"
    settings.AGENTKIT_API_KEY = "ak-secret"
    seen: list[httpx.Request] = []

    class Answer:
        requests = seen

        def with_(self, handler) -> None:
            def record(request: httpx.Request) -> httpx.Response:
                seen.append(request)
                return handler(request)

            client = httpx.Client(transport=httpx.MockTransport(record))
            monkeypatch.setattr(agentkit, "_client", lambda: client)

    return Answer()


def test_a_404_listing_is_unsupported_and_permanent(answer):
    answer.with_(lambda r: httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(AgentListingUnsupported) as caught:
        list_agents()
    assert caught.value.permanent and caught.value.http_status == 404
    request = answer.requests[0]
    assert (request.method, str(request.url)) == ("GET", "http://agentkit.test/v1/agents")
    assert request.headers["Authorization"] == "Bearer ak-secret"


@pytest.mark.parametrize("body", [
    [{"agentId": "a1"}, "junk", {"agentId": "a2"}],
    {"data": [{"agentId": "a1"}, {"agentId": "a2"}]},
    {"agents": [{"agentId": "a1"}, {"agentId": "a2"}]},
])
def test_a_200_listing_returns_the_agents(answer, body):
    answer.with_(lambda r: httpx.Response(200, json=body))
    assert [agent["agentId"] for agent in list_agents()] == ["a1", "a2"]


@pytest.mark.parametrize("status, permanent", [(500, False), (503, False), (429, False), (401, True)])
def test_error_statuses(answer, status, permanent):
    answer.with_(lambda r: httpx.Response(status, json={"detail": "nope"}))
    with pytest.raises(AgentKitError) as caught:
        list_agents()
    assert not isinstance(caught.value, AgentListingUnsupported)
    assert (caught.value.permanent, caught.value.http_status) == (permanent, status)
    assert "nope" in caught.value.message


@pytest.mark.parametrize("exc, words", [
    (httpx.ConnectError("connection refused"), "unreachable: ConnectError"),
    (httpx.ReadTimeout("slow"), "timed out: ReadTimeout"),
])
def test_transport_failures_are_transient(answer, exc, words):
    def fail(request):
        raise exc

    answer.with_(fail)
    with pytest.raises(AgentKitError) as caught:
        list_agents()
    assert not caught.value.permanent and caught.value.http_status is None
    assert words in caught.value.message


@pytest.mark.parametrize("response", [
    httpx.Response(200, text="<html>"),
    httpx.Response(200, json="a string"),
])
def test_a_listing_that_is_not_a_json_list_is_permanent(answer, response):
    answer.with_(lambda r: response)
    with pytest.raises(AgentKitError) as caught:
        list_agents()
    assert caught.value.permanent


def test_no_configured_url_is_a_transient_error(settings):
    settings.AGENTKIT_API_URL = ""
    with pytest.raises(AgentKitError, match="AGENTKIT_API_URL is not configured") as caught:
        list_agents()
    assert not caught.value.permanent


@pytest.mark.parametrize("url", ["http://[::1", "http://agentkit.test:abc"])
def test_a_malformed_url_is_a_clear_transient_error_not_a_crash(settings, url):
    """A typo in AGENTKIT_API_URL must fail the attempt like any unreachable AgentKit (the job must not raise)."""
    settings.AGENTKIT_API_URL = url
    with pytest.raises(AgentKitError, match="AGENTKIT_API_URL") as caught:
        agentkit.run_task(agent_id="a1", message={"senderId": "opscore"})
    assert not caught.value.permanent and caught.value.http_status is None
