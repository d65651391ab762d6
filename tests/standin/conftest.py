"""A recording fake Ops-Core (stdlib HTTP) and a stand-in wired to it. No database, no Django."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentkit_standin import StandIn

API_KEY = "opk_test_fleet_key"
WEBHOOK_SECRET = "test-webhook-secret"


@dataclass
class Received:
    """One request as it arrived: raw body bytes, headers and arrival order."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def state(self) -> str | None:
        return self.json().get("state") if "/state" in self.path else None


class Recorder:
    """Records every request the stand-in sends to "Ops-Core"; answers `status` (202 by default)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 202
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with recorder._changed:
                    recorder.requests.append(Received("POST", self.path, dict(self.headers.items()), body,
                                                      time.monotonic()))
                    recorder._changed.notify_all()
                    status = recorder.status
                data = b'{"status":"success"}' if status < 300 else b'{"detail":"refused by the recorder"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reports(self, agent_id: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/state")
                    and (agent_id is None or r.path == f"/v1/opscore/agent/{agent_id}/state")]

    def states(self, agent_id: str | None = None) -> list[str]:
        return [r.json()["state"] for r in self.reports(agent_id)]

    def webhooks(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/opscore/internal/agent/notify"]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` requests arrived; fail the test otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(self.requests)}: "
                                         f"{[(r.path, r.body) for r in self.requests]}")
                self._changed.wait(remaining)
            return list(self.requests)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def make_standin(recorder):
    """Build and start stand-ins pointed at the recorder; all are stopped after the test."""
    started: list[StandIn] = []

    def make(**settings: Any) -> StandIn:
        settings = {"opscore_url": recorder.url, "api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET,
                    "seed": 7, **settings}
        standin = StandIn(**settings).start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@pytest.fixture
def standin(make_standin):
    return make_standin()


def run_message(task_id: str = "task-1", attempt: int = 1, **parameters: Any) -> dict[str, Any]:
    """The dispatch body Ops-Core sends (AGENTKIT.md section 3)."""
    return {
        "senderId": "opscore",
        "messageType": "workflow_task",
        "payload": {"task_name": "step_1", "task_parameters": parameters, "opscore_session_id": "session-1",
                    "opscore_task_id": task_id, "attempt": attempt},
        "sessionContext": {"sessionId": "session-1"},
        "task_name": "step_1",
        "opscore_session_id": "session-1",
        "opscore_task_id": task_id,
    }
