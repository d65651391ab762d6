"""`/v1/opscore/agent/{agentId}/state`: the hottest endpoint, with lean paths for the common calls.

A report that is plainly fine (a Bearer key this process has verified, or verifies now, that
may act for the agent; `Content-Type: application/json`; a body the serializer would accept;
no state-report throttle configured) is checked and recorded here without DRF's per-request
machinery; so is a key's read of a known agent's state (the same key check, then the API
throttle's counter, then the read). Anything else goes through DRF unchanged
(`super().dispatch`), which answers every error exactly as before: the lean paths only ever
accept what DRF would accept, and never answer an error themselves. The response bytes and
headers are DRF's (compact JSON, Allow).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.api.auth import AgentEndpoint, request_api_key
from agents.api.serializers import AcceptedOut, AgentStateOut, StateReportIn
from agents.models import Agent, ApiKey
from agents.services import ApiKeyExpired, agent_state_read, agent_state_record
from agents.timestamps import parse_iso_timestamp
from opscore_site.api import ApiThrottle, StateReportThrottle
from opscore_site.jsontext import text_problem
from opscore_site.parsers import parse_json_bytes

STATES = frozenset(Agent.State.values)

# One AgentStateOut for the lean GET: a new serializer deep-copies its declared fields on every
# instantiation (~50 us, about a tenth of the read). `to_representation` keeps no state on the
# instance, so the same serializer renders every agent, with the same fields and output.
_STATE_OUT = AgentStateOut()


def accepted_body(*, state: str, agent_id: str) -> dict[str, str]:
    return {"status": "success", "message": f"State '{state}' recorded for agent '{agent_id}'."}


def _plain_text(value: Any, max_length: int) -> bool:
    return type(value) is str and 0 < len(value) <= max_length and text_problem(value) is None


def lean_report(data: Any, *, agent_id: str, now: datetime) -> dict[str, Any] | None:
    """`data` as StateReportIn would validate it, or None when the serializer must decide (and explain)."""
    if type(data) is not dict:
        return None
    reported_id, raw_timestamp, state = data.get("agentId"), data.get("timestamp"), data.get("state")
    details = data.get("details")
    if not (_plain_text(reported_id, 255) and reported_id == agent_id and type(state) is str and state in STATES
            and (details is None or type(details) is dict) and _plain_text(raw_timestamp, 64)):
        return None
    raw_timestamp = raw_timestamp.strip()  # CharField trims
    if not raw_timestamp:
        return None
    try:
        timestamp = parse_iso_timestamp(raw_timestamp)
    except ValueError:
        return None
    if timestamp > now + timedelta(seconds=settings.OPSCORE_STATE_MAX_FUTURE_SECONDS):
        return None
    return {"state": state, "details": details, "timestamp": timestamp}


class AgentStateView(APIView):
    """`/v1/opscore/agent/{agentId}/state`: agents report their state; keys and operators read it."""

    permission_classes = [AgentEndpoint]

    @property
    def operators_allowed(self) -> bool:
        return self.request.method == "GET"

    # The lean GET counted this request and found no such agent: DRF answers the 404 without
    # counting or reading again.
    lean_missing = False

    def get_throttles(self):
        if self.lean_missing:
            return []
        # Each report is sent once, never retried (AGENTKIT.md section 2): not the API-wide rate.
        return [StateReportThrottle()] if self.request.method == "POST" else super().get_throttles()

    def dispatch(self, request: HttpRequest, *args, **kwargs):
        if request.method == "POST":
            response = self._lean_post(request, kwargs["agent_id"])
        elif request.method == "GET":
            response = self._lean_get(request, kwargs["agent_id"])
        else:
            response = None
        return response if response is not None else super().dispatch(request, *args, **kwargs)

    @staticmethod
    def _lean_key(request: HttpRequest, agent_id: str) -> ApiKey | None:
        """The Bearer key, when it is plainly valid and may act for `agent_id`; else None (DRF decides)."""
        scheme, _, raw = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not raw or " " in raw or not raw.isascii():
            return None
        try:
            key = request_api_key(request, raw)
        except ApiKeyExpired:
            return None  # DRF's authentication says why (401)
        if key is None or (key.kind == ApiKey.Kind.AGENT and key.agent_id != agent_id):
            return None
        return key

    def _lean_response(self, data: dict[str, Any], status_code: int) -> HttpResponse:
        """What DRF's JSONRenderer and finalize_response would send for `data` (compact JSON, Allow)."""
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        response = HttpResponse(body.encode(), status=status_code, content_type="application/json")
        response["Allow"] = ", ".join(self.allowed_methods)
        return response

    def _lean_post(self, request: HttpRequest, agent_id: str) -> HttpResponse | None:
        """The common report recorded without DRF, or None for DRF to handle it (errors included)."""
        if settings.OPSCORE_STATE_THROTTLE_RATE or request.content_type != "application/json":
            return None
        if self._lean_key(request, agent_id) is None:
            return None
        now = timezone.now()
        try:
            data = lean_report(parse_json_bytes(request.body), agent_id=agent_id, now=now)
        except (exceptions.APIException, RequestDataTooBig, OSError):  # DRF reads it again and says why
            return None
        if data is None:
            return None
        agent_state_record(agent_id=agent_id, received_at=now, **data)
        return self._lean_response(accepted_body(state=data["state"], agent_id=agent_id), status.HTTP_202_ACCEPTED)

    def _lean_get(self, request: HttpRequest, agent_id: str) -> HttpResponse | None:
        """A key's read of a known agent answered without DRF, or None for DRF to answer (operators,
        errors, a 429 or a 404 included). The same checks in DRF's order: key, permission, throttle."""
        key = self._lean_key(request, agent_id)
        if key is None:
            return None
        throttle, count = ApiThrottle(), None
        if throttle.rate is not None:
            count = throttle.hit(throttle.api_key_counter(key.pk, agent_id=agent_id))
            if count is None:
                return None  # a rate that allows nothing: DRF answers the 429
        read = agent_state_read(agent_id=agent_id, count=count)
        if not read.counted:
            return None  # DRF counts it again (a refused request changes no counter) and answers the 429
        if read.agent is None:
            self.lean_missing = True
            return None  # DRF answers the 404
        return self._lean_response(_STATE_OUT.to_representation(read.agent), status.HTTP_200_OK)

    @extend_schema(request=StateReportIn, responses={202: AcceptedOut}, operation_id="agent_state_report",
                   summary="Report an agent's state (AgentKit SDK)")
    def post(self, request, agent_id: str) -> Response:
        now = timezone.now()
        report = StateReportIn(data=request.data, context={"agent_id": agent_id, "now": now})
        report.is_valid(raise_exception=True)
        data = report.validated_data
        agent_state_record(agent_id=agent_id, state=data["state"], details=data["details"],
                           timestamp=data["timestamp"], received_at=now)
        return Response(accepted_body(state=data["state"], agent_id=agent_id), status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={200: AgentStateOut}, operation_id="agent_state_read",
                   summary="An agent's current state")
    def get(self, request, agent_id: str) -> Response:
        agent = None if self.lean_missing else agent_state_read(agent_id=agent_id).agent
        if agent is None:
            raise exceptions.NotFound(f"agent '{agent_id}' not found")
        return Response(AgentStateOut(agent).data)
