"""The only module that talks HTTP to AgentKit (AGENTKIT.md sections 3 and "Who calls whom").

Every call has an explicit timeout. Failures raise AgentKitError with `permanent`
telling the engine whether a retry can help: 404/422/other 4xx are permanent;
timeouts, connection errors, 5xx and 429 are transient. `maybe_delivered` marks a
request sent whole that got no answer (read timeout, dropped connection): AgentKit
may have scheduled it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

from opscore_site import metrics

logger = logging.getLogger(__name__)

SENDER_ID = "opscore"
MESSAGE_TYPE = "workflow_task"


class AgentKitError(Exception):
    """A call to AgentKit failed. `permanent` errors are not worth retrying."""

    def __init__(self, message: str, *, permanent: bool, http_status: int | None = None,
                 maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.http_status = http_status
        # The whole request went out and no answer came back (a read timeout, a dropped
        # connection): AgentKit may have taken it, so sending it again could run it twice.
        self.maybe_delivered = maybe_delivered


class AgentListingUnsupported(AgentKitError):
    """AgentKit has no agent listing endpoint (today's AgentKit answers 404)."""


@dataclass(frozen=True)
class Accepted:
    """AgentKit scheduled the task (2xx); its body says nothing more that Ops-Core uses."""

    http_status: int


# Failures after the request was sent whole: the answer is missing, not the request. A connect
# error or timeout, a pool timeout or a failed write never delivered it.
UNANSWERED = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)

_clients: dict[int, httpx.Client] = {}


def _client() -> httpx.Client:
    # One pooled client per process: qcluster workers are forked, and a client
    # (with its sockets) must not be shared across a fork.
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        _clients.clear()
        client = httpx.Client(follow_redirects=False)
        _clients[pid] = client
    return client


def _base_url() -> str:
    url = settings.AGENTKIT_API_URL
    if not url:
        raise AgentKitError("AGENTKIT_API_URL is not configured", permanent=False)
    return url.rstrip("/")


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.AGENTKIT_API_KEY:
        headers["Authorization"] = f"Bearer {settings.AGENTKIT_API_KEY}"
    return headers


def _send(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request to AgentKit with the configured timeout; transport failures as transient AgentKitError."""
    started, code = time.perf_counter(), "error"
    try:
        response = _client().request(method, url, headers=_headers(), timeout=settings.AGENTKIT_TIMEOUT_SECONDS,
                                     **kwargs)
        code = str(response.status_code)
        return response
    except httpx.TimeoutException as exc:
        code = "timeout"
        raise AgentKitError(f"AgentKit timed out: {exc.__class__.__name__}", permanent=False,
                            maybe_delivered=isinstance(exc, UNANSWERED)) from exc
    except httpx.HTTPError as exc:
        raise AgentKitError(f"AgentKit unreachable: {exc.__class__.__name__}: {exc}", permanent=False,
                            maybe_delivered=isinstance(exc, UNANSWERED)) from exc
    except httpx.InvalidURL as exc:  # not an HTTPError: a typo in the setting must not crash the job
        raise AgentKitError(f"AGENTKIT_API_URL is not a valid URL: {exc}", permanent=False) from exc
    finally:
        metrics.agentkit_request(code=code, seconds=time.perf_counter() - started)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("message") or body)[:300]
    return str(body)[:300]


def dispatch_message(
    *, task_name: str, task_parameters: dict[str, Any], session_id: str, task_id: str, attempt: int
) -> dict[str, Any]:
    """The body AgentKit keeps (AGENTKIT.md section 3): everything agents need is in `payload`."""
    return {
        "senderId": SENDER_ID,
        "messageType": MESSAGE_TYPE,
        "payload": {
            "task_name": task_name,
            "task_parameters": task_parameters,
            "opscore_session_id": session_id,
            "opscore_task_id": task_id,
            "attempt": attempt,
        },
        "sessionContext": {"sessionId": session_id},
        "task_name": task_name,
        "opscore_session_id": session_id,
        "opscore_task_id": task_id,
    }


def run_task(*, agent_id: str, message: dict[str, Any]) -> Accepted:
    """POST a task to `/v1/agents/{agent_id}/run`. 2xx means only "scheduled" by AgentKit."""
    response = _send("POST", f"{_base_url()}/v1/agents/{quote(agent_id, safe='')}/run", json=message)
    status = response.status_code
    if 200 <= status < 300:
        return Accepted(http_status=status)
    detail = _detail(response)
    if status == 404:
        raise AgentKitError(f"AgentKit does not know agent '{agent_id}': {detail}", permanent=True, http_status=404)
    if status == 422:
        # Our request is malformed: a bug on our side, worth shouting about.
        logger.error("AgentKit rejected a dispatch as malformed (422): %s", detail,
                     extra={"agent_id": agent_id, "agentkit_status": status})
        raise AgentKitError(f"AgentKit rejected the request (422): {detail}", permanent=True, http_status=422)
    if status == 429 or status >= 500:
        raise AgentKitError(f"AgentKit answered {status}: {detail}", permanent=False, http_status=status)
    raise AgentKitError(f"AgentKit answered {status}: {detail}", permanent=True, http_status=status)


def list_agents() -> list[dict[str, Any]]:
    """GET /v1/agents. Raises AgentListingUnsupported when AgentKit has no listing (404)."""
    response = _send("GET", f"{_base_url()}/v1/agents")
    if response.status_code == 404:
        raise AgentListingUnsupported(
            "this AgentKit has no agent listing endpoint (GET /v1/agents answered 404)",
            permanent=True, http_status=404,
        )
    if not 200 <= response.status_code < 300:
        raise AgentKitError(
            f"AgentKit answered {response.status_code}: {_detail(response)}",
            permanent=response.status_code < 500 and response.status_code != 429,
            http_status=response.status_code,
        )
    try:
        body = response.json()
    except ValueError as exc:
        raise AgentKitError("AgentKit's agent listing is not JSON", permanent=True) from exc
    if isinstance(body, dict):
        body = body.get("data", body.get("agents", []))
    if not isinstance(body, list):
        raise AgentKitError("AgentKit's agent listing is not a list", permanent=True)
    return [item for item in body if isinstance(item, dict)]
