"""Agent API shapes. Upstream endpoints keep AgentKit's camelCase names; so do the others."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from rest_framework import serializers

from agents.models import Agent, AgentState
from agents.timestamps import parse_iso_timestamp

STATES = ", ".join(Agent.State.values)


class StateReportIn(serializers.Serializer):
    """A state report as the AgentKit SDK sends it (AGENTKIT.md section 2)."""

    agentId = serializers.CharField(max_length=255, trim_whitespace=False)
    timestamp = serializers.CharField(max_length=64, help_text="ISO 8601 with a UTC offset.")
    state = serializers.ChoiceField(
        choices=Agent.State.values,
        error_messages={"invalid_choice": f"'{{input}}' is not a valid state; allowed: {STATES}"},
    )
    details = serializers.JSONField(required=False, allow_null=True, default=None,
                                    help_text="An object, {} or null.")

    def validate_timestamp(self, value: str) -> datetime:
        try:
            parsed = parse_iso_timestamp(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        limit = self.context["now"] + timedelta(seconds=settings.OPSCORE_STATE_MAX_FUTURE_SECONDS)
        if parsed > limit:
            raise serializers.ValidationError(
                f"is more than {settings.OPSCORE_STATE_MAX_FUTURE_SECONDS}s in the future (server time "
                f"{self.context['now'].isoformat()})"
            )
        return parsed

    def validate_details(self, value):
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError("must be an object or null")
        return value

    def validate(self, attrs):
        if attrs["agentId"] != self.context["agent_id"]:
            raise serializers.ValidationError(
                {"agentId": [f"'{attrs['agentId']}' does not match the agent id in the path "
                             f"'{self.context['agent_id']}'"]}
            )
        return attrs


class AcceptedOut(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()


class AgentStateOut(serializers.Serializer):
    """GET .../agent/{agentId}/state."""

    agentId = serializers.CharField(source="id")
    state = serializers.CharField(allow_null=True)
    details = serializers.JSONField(source="state_details", allow_null=True)
    timestamp = serializers.DateTimeField(source="state_timestamp", allow_null=True)


class AgentOut(serializers.ModelSerializer):
    agentId = serializers.CharField(source="id")
    contactEndpoint = serializers.CharField(source="contact_endpoint")
    stateTimestamp = serializers.DateTimeField(source="state_timestamp")
    stateReceivedAt = serializers.DateTimeField(source="state_received_at")
    stateDetails = serializers.JSONField(source="state_details")
    lastSeenAt = serializers.DateTimeField(source="last_seen_at")
    registeredAt = serializers.DateTimeField(source="registered_at")
    createdAt = serializers.DateTimeField(source="created_at")
    deregisteredAt = serializers.DateTimeField(source="deregistered_at")
    drainedAt = serializers.DateTimeField(source="drained_at")
    stale = serializers.SerializerMethodField()
    quarantineState = serializers.CharField(source="quarantine_state",
                                            help_text="empty (not quarantined), quarantined or probing")
    quarantinedAt = serializers.DateTimeField(source="quarantined_at")
    quarantineReason = serializers.CharField(source="quarantine_reason")
    quarantineProbeAt = serializers.DateTimeField(source="quarantine_probe_at",
                                                  help_text="when the next probe may go (null: released by hand)")

    class Meta:
        model = Agent
        fields = ["agentId", "name", "version", "capabilities", "contactEndpoint", "metadata", "state",
                  "stateTimestamp", "stateReceivedAt", "stateDetails", "lastSeenAt", "registeredAt",
                  "createdAt", "deregisteredAt", "drainedAt", "stale", "quarantineState", "quarantinedAt",
                  "quarantineReason", "quarantineProbeAt"]

    def get_stale(self, agent: Agent) -> bool:
        return agent.is_stale()


class AgentStateHistoryOut(serializers.ModelSerializer):
    receivedAt = serializers.DateTimeField(source="received_at")

    class Meta:
        model = AgentState
        fields = ["id", "state", "details", "timestamp", "receivedAt"]
