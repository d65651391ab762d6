"""AgentKit's registration webhook: signature checks and the body's shape (AGENTKIT.md section 1)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.models import agent_id_problem
from agents.timestamps import parse_iso_timestamp
from opscore_site.errors import ApplicationError
from opscore_site.httpurl import http_url_problem

TIMESTAMP_HEADER = "X-AgentKit-Timestamp"
SIGNATURE_HEADER = "X-AgentKit-Signature"


class WebhookRefused(ApplicationError):
    """The webhook is not authentic (the API answers 401). `code` is stable: missing_signature,
    bad_timestamp, stale_timestamp, bad_signature, replayed."""

    code = "bad_signature"
    http_status = 401

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail, code=code)


def sign(*, secret: str, timestamp: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 over `timestamp + "." + body`, as AgentKit computes it."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def parse_timestamp(value: str) -> float:
    """Unix seconds from the header: integer seconds (what AgentKit sends) or ISO 8601 with an offset."""
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True too
        return float(value)
    try:
        return parse_iso_timestamp(value).timestamp()
    except ValueError as exc:
        raise WebhookRefused(
            "bad_timestamp", f"{TIMESTAMP_HEADER} must be Unix seconds or ISO 8601 with a UTC offset: the value {exc}"
        ) from None


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: its signature (lowercase hex) identifies it for the replay guard."""

    signature: str
    sent_at: datetime


def verify(*, secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float,
           tolerance: int) -> Delivery:
    """The verified delivery; WebhookRefused unless the signature is good and the timestamp within `tolerance`."""
    if not timestamp or not signature:
        raise WebhookRefused("missing_signature", f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are required")
    sent_at = parse_timestamp(timestamp)
    if abs(now - sent_at) > tolerance:
        raise WebhookRefused("stale_timestamp", f"{TIMESTAMP_HEADER} is more than {tolerance}s from server time")
    given = signature.strip().lower().removeprefix("sha256=")
    expected = sign(secret=secret, timestamp=timestamp, body=body)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise WebhookRefused("bad_signature", f"{SIGNATURE_HEADER} does not match the body")
    return Delivery(signature=expected, sent_at=datetime.fromtimestamp(sent_at, UTC))


class AgentDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    agentId: str = Field(min_length=1, max_length=255)
    agentName: str | None = Field(default=None, max_length=255)
    version: str | None = Field(default=None, max_length=64)
    capabilities: list[str] | None = None
    contactEndpoint: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, Any] | None = None

    @field_validator("agentId")
    @classmethod
    def _addressable(cls, value: str) -> str:
        if problem := agent_id_problem(value):
            raise ValueError(f"agentId: {problem}")
        return value

    @field_validator("contactEndpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Shown as the agent's endpoint on operator pages: a `javascript:` URL must never be stored.
        if value and (problem := http_url_problem(value)):
            raise ValueError(problem)
        return value


class WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    event_type: Literal["REGISTER", "DEREGISTER"]
    agent_details: AgentDetails

    @field_validator("event_type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def parse_event(document: Any) -> WebhookEvent:
    """The event in a parsed body, or ValueError with {field path: [messages]} in `.args[0]`."""
    try:
        return WebhookEvent.model_validate(document)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or "non_field_errors"
            errors.setdefault(path, []).append(err["msg"].removeprefix("Value error, "))
        raise ValueError(errors) from None
