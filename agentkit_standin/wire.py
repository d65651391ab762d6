"""AgentKit's wire shapes (AGENTKIT.md sections 1-3), as the deployed AgentKit and its SDK send them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from typing import Any

WEBHOOK_PATH = "/v1/opscore/internal/agent/notify"


def json_response_bytes(body: Any) -> bytes:
    """Serialise like Starlette's JSONResponse: compact, UTF-8, no NaN."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def accepted_body(agent_id: str) -> dict[str, Any]:
    """The 202 body of `POST /v1/agents/{id}/run`."""
    return {
        "status": "success",
        "message": f"Task accepted for agent {agent_id}. Dispatch scheduled.",
        "data": {"agentId": agent_id, "dispatch_status": "scheduled"},
        "error_code": None,
    }


def not_found_body(agent_id: str) -> dict[str, Any]:
    """The 404 body for an agent AgentKit does not know."""
    return {"detail": f"Agent with ID '{agent_id}' not found."}


def registered_body(agent_name: str, agent_id: str) -> dict[str, Any]:
    """The 201 body of `POST /v1/agents/register`."""
    return {
        "status": "success",
        "message": f"Agent '{agent_name}' registered successfully.",
        "data": {"agentId": agent_id},
        "error_code": None,
    }


def report_timestamp(now: datetime | None = None) -> str:
    """ISO 8601 with offset and microseconds, as the SDK sends (`2026-11-23T22:09:39.929454+00:00`)."""
    return (now or datetime.now(timezone.utc)).isoformat(timespec="microseconds")


def state_report(agent_id: str, state: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of `POST /v1/opscore/agent/{agentId}/state`."""
    return {"agentId": agent_id, "timestamp": report_timestamp(), "state": state, "details": details or {}}


def webhook_body(event_type: str, agent_details: dict[str, Any]) -> bytes:
    """The registration webhook body: compact JSON, ASCII-escaped (AgentKit uses json.dumps defaults)."""
    return json.dumps({"event_type": event_type, "agent_details": agent_details}, separators=(",", ":")).encode()


def webhook_headers(body: bytes, secret: str, now: float | None = None) -> dict[str, str]:
    """Content-Type plus the HMAC headers: integer-seconds timestamp, hex SHA-256 over `ts.body`."""
    timestamp = str(int(time.time() if now is None else now))
    signature = hmac.new(secret.encode("utf-8"), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-AgentKit-Timestamp": timestamp,
        "X-AgentKit-Signature": signature,
    }


# --- request validation, shaped like FastAPI/pydantic v2 errors ------------------------------------

def _error(kind: str, loc: list[Any], msg: str, value: Any, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    error = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx:
        error["ctx"] = ctx
    return error


def _check_str(errors: list, body: dict, field: str, *, required: bool, loc: list[Any]) -> None:
    if field not in body:
        if required:
            errors.append(_error("missing", [*loc, field], "Field required", body))
        return
    value = body[field]
    if value is None and not required:
        return
    if not isinstance(value, str):
        errors.append(_error("string_type", [*loc, field], "Input should be a valid string", value))


def _check_timestamp(errors: list, body: dict) -> None:
    value = body.get("timestamp")
    if "timestamp" not in body or isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
            return
        except ValueError:
            pass
    errors.append(_error("datetime_parsing", ["body", "timestamp"], "Input should be a valid datetime", value))


def _check_session_context(errors: list, body: dict) -> None:
    context = body.get("sessionContext")
    if context is None:
        return
    loc = ["body", "sessionContext"]
    if not isinstance(context, dict):
        errors.append(_error("model_type", loc, "Input should be a valid dictionary or instance of SessionContext",
                             context, {"class_name": "SessionContext"}))
        return
    _check_str(errors, context, "sessionId", required=False, loc=loc)
    prior = context.get("priorMessages")
    if prior is None:
        return
    if not isinstance(prior, list):
        errors.append(_error("list_type", [*loc, "priorMessages"], "Input should be a valid list", prior))
        return
    for index, item in enumerate(prior):
        if not isinstance(item, str):
            errors.append(_error("string_type", [*loc, "priorMessages", index], "Input should be a valid string", item))


def validate_run_body(raw: bytes) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Parse a `/run` body like AgentKit's MessagePayload model: (message, []) or (None, FastAPI-style errors)."""
    if not raw.strip():
        return None, [_error("missing", ["body"], "Field required", None)]
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        pos = getattr(exc, "pos", 0)
        reason = getattr(exc, "msg", str(exc))
        return None, [_error("json_invalid", ["body", pos], "JSON decode error", {}, {"error": reason})]
    if not isinstance(body, dict):
        return None, [_error("model_attributes_type", ["body"],
                             "Input should be a valid dictionary or object to extract fields from", body)]
    errors: list[dict[str, Any]] = []
    _check_str(errors, body, "senderId", required=True, loc=["body"])
    _check_timestamp(errors, body)
    _check_str(errors, body, "messageType", required=True, loc=["body"])
    if "payload" not in body:
        errors.append(_error("missing", ["body", "payload"], "Field required", body))
    elif not isinstance(body["payload"], dict):
        errors.append(_error("dict_type", ["body", "payload"], "Input should be a valid dictionary", body["payload"]))
    _check_session_context(errors, body)
    for field in ("task_name", "opscore_session_id", "opscore_task_id"):
        _check_str(errors, body, field, required=False, loc=["body"])
    return (None, errors) if errors else (body, [])
