"""Engine fixtures: AgentKit stubbed at the HTTP seam (unit tests only)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from agents import agentkit


class AgentKitStub:
    """Answers AgentKit's /run like the real one unless told otherwise; records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answer: Callable[[httpx.Request], httpx.Response] = self.accept

    @staticmethod
    def accept(request: httpx.Request) -> httpx.Response:
        agent_id = request.url.path.split("/")[3]
        return httpx.Response(202, json={
            "status": "success", "message": f"Task accepted for agent {agent_id}. Dispatch scheduled.",
            "data": {"agentId": agent_id, "dispatch_status": "scheduled"}, "error_code": None})

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]

    def respond(self, status: int, body: dict | None = None) -> None:
        self.answer = lambda request: httpx.Response(status, json=body or {"detail": f"status {status}"})

    def raise_(self, exc: Exception) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            raise exc
        self.answer = answer


@pytest.fixture
def agentkit_stub(monkeypatch, settings) -> AgentKitStub:
    settings.AGENTKIT_API_URL = "http://agentkit.test"
    stub = AgentKitStub()
    client = httpx.Client(transport=httpx.MockTransport(stub.handler))
    monkeypatch.setattr(agentkit, "_client", lambda: client)
    return stub
