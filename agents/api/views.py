"""Agent endpoints: AgentKit's webhook and the agents resource (state reports: agents/api/state_views.py)."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import webhook
from agents.api.auth import OperatorOrServiceKey
from agents.api.serializers import (
    AcceptedOut,
    AgentOut,
    AgentStateHistoryOut,
)
from agents.filters import AgentFilter
from agents.models import Agent
from agents.services import agent_deregister, agent_register, webhook_receipt_record
from opscore_site.api import ServiceUnavailable
from opscore_site.converters import PathIdConverter
from opscore_site.filters import api_filter, openapi_parameters
from opscore_site.parsers import parse_json_bytes


class AgentNotifyView(APIView):
    """AgentKit's registration webhook, verified over the raw body bytes (AGENTKIT.md section 1).

    Signed with HMAC-SHA256 (OPSCORE_WEBHOOK_SECRET). Without a configured secret it
    answers 503, unless OPSCORE_WEBHOOK_ALLOW_UNSIGNED (development, DEBUG only) is set.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]
    # Authenticated by its HMAC; a throttle would run before that check and let any
    # anonymous caller write a counter row per address.
    throttle_classes: list = []

    @extend_schema(request=webhook.WebhookEvent, responses={200: AcceptedOut}, auth=[], operation_id="agentkit_notify",
                   summary="AgentKit registration webhook (HMAC-signed)",
                   parameters=[
                       OpenApiParameter(webhook.TIMESTAMP_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER,
                                        description="Unix seconds (or ISO 8601)"),
                       OpenApiParameter(webhook.SIGNATURE_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER,
                                        description="hex HMAC-SHA256 of timestamp + '.' + body"),
                   ])
    def post(self, request) -> Response:
        if request.content_type.split(";")[0].strip().lower() != "application/json":
            raise exceptions.UnsupportedMediaType(request.content_type or "(none)")
        body = request.body
        delivery = self._authenticate(request, body)
        document = parse_json_bytes(body)
        try:
            event = webhook.parse_event(document)
        except ValueError as exc:
            raise exceptions.ValidationError(exc.args[0]) from None
        details = event.agent_details
        now = timezone.now()
        with transaction.atomic():
            if delivery is not None and not webhook_receipt_record(
                signature=delivery.signature, timestamp=delivery.sent_at, received_at=now,
                keep=timedelta(seconds=2 * settings.OPSCORE_WEBHOOK_TOLERANCE_SECONDS),
            ):
                raise webhook.WebhookRefused("replayed", "this webhook delivery was already accepted (replay)")
            if event.event_type == "DEREGISTER":
                known = agent_deregister(agent_id=details.agentId, at=now)
                message = f"agent '{details.agentId}' deregistered" if known else \
                    f"agent '{details.agentId}' is unknown; nothing to deregister"
            else:
                _, created = agent_register(
                    agent_id=details.agentId, name=details.agentName or "", version=details.version or "",
                    capabilities=details.capabilities, contact_endpoint=details.contactEndpoint or "",
                    metadata=details.metadata, at=now,
                )
                message = f"agent '{details.agentId}' {'registered' if created else 'updated'}"
        return Response({"status": "success", "message": message})

    def _authenticate(self, request, body: bytes) -> webhook.Delivery | None:
        """The verified delivery, None for an unsigned one in development; 401/503 otherwise."""
        timestamp = request.headers.get(webhook.TIMESTAMP_HEADER)
        signature = request.headers.get(webhook.SIGNATURE_HEADER)
        unsigned_ok = settings.OPSCORE_WEBHOOK_ALLOW_UNSIGNED and settings.DEBUG
        if unsigned_ok and not timestamp and not signature:
            return None
        secret = settings.OPSCORE_WEBHOOK_SECRET
        if not secret:
            raise ServiceUnavailable(
                "OPSCORE_WEBHOOK_SECRET is not configured, so webhooks cannot be verified and are refused",
                code="webhook_not_configured",
            )
        return webhook.verify(secret=secret, timestamp=timestamp, signature=signature, body=body,
                              now=time.time(), tolerance=settings.OPSCORE_WEBHOOK_TOLERANCE_SECONDS)


@extend_schema(parameters=openapi_parameters(AgentFilter))
class AgentViewSet(viewsets.ReadOnlyModelViewSet):
    """Agents (list with filters, detail) and each agent's state history."""

    permission_classes = [OperatorOrServiceKey]
    serializer_class = AgentOut
    lookup_field = "pk"
    lookup_url_kwarg = "agent_id"
    lookup_value_regex = PathIdConverter.regex

    def get_queryset(self):
        queryset = Agent.objects.all().order_by("id")
        if self.action != "list":
            return queryset
        return api_filter(AgentFilter, self.request, queryset)

    @extend_schema(responses={200: AgentStateHistoryOut(many=True)}, parameters=[])
    @action(detail=True, methods=["get"])
    def history(self, request, agent_id: str) -> Response:
        """The agent's state reports, newest first (paginated)."""
        agent = self.get_object()
        page = self.paginate_queryset(agent.state_history.order_by("-received_at", "-id"))
        return self.get_paginated_response(AgentStateHistoryOut(page, many=True).data)
