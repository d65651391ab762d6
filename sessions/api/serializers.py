"""Session API shapes: the trigger (upstream) and the sessions/tasks resources."""

from __future__ import annotations

from rest_framework import serializers

from sessions.models import Session, Task, TaskAttempt
from workflows.schema import SpecError, validate_definition


class WorkflowTriggerIn(serializers.Serializer):
    """Exactly one of workflowDefinitionId / workflowDefinition, plus an optional initialPayload."""

    workflowDefinitionId = serializers.CharField(max_length=100, required=False, allow_null=True)
    workflowDefinition = serializers.JSONField(required=False, allow_null=True,
                                               help_text="An inline definition (upstream JSON shape).")
    initialPayload = serializers.JSONField(required=False, allow_null=True, default=None,
                                           help_text="An object or null; merged into the first step's parameters.")

    def validate_workflowDefinition(self, value):
        if value is None:
            return None
        try:
            return validate_definition(value)
        except SpecError as exc:
            raise serializers.ValidationError({path or "non_field_errors": msgs
                                               for path, msgs in exc.errors.items()}) from None

    def validate_initialPayload(self, value):
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError("must be an object or null")
        return value

    def validate(self, attrs):
        given = [name for name in ("workflowDefinitionId", "workflowDefinition") if attrs.get(name) is not None]
        if len(given) != 1:
            raise serializers.ValidationError(
                "give exactly one of workflowDefinitionId or workflowDefinition"
            )
        return attrs


class WorkflowTriggerOut(serializers.Serializer):
    sessionId = serializers.UUIDField()
    workflowId = serializers.CharField()
    message = serializers.CharField()


class ActionIn(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class QuarantineIn(serializers.Serializer):
    reason = serializers.CharField(max_length=1000, error_messages={
        "required": "a quarantine needs a reason", "blank": "a quarantine needs a reason"})


class TaskAttemptOut(serializers.ModelSerializer):
    httpStatus = serializers.IntegerField(source="http_status")
    referenceAt = serializers.DateTimeField(source="reference_at")
    startedAt = serializers.DateTimeField(source="started_at")
    endedAt = serializers.DateTimeField(source="ended_at")

    class Meta:
        model = TaskAttempt
        fields = ["number", "outcome", "httpStatus", "error", "referenceAt", "startedAt", "endedAt"]


class TaskOut(serializers.ModelSerializer):
    taskId = serializers.UUIDField(source="id")
    sessionId = serializers.UUIDField(source="session_id")
    agentId = serializers.CharField(source="agent_id")
    stepId = serializers.CharField(source="step_id")
    maxRetries = serializers.IntegerField(source="max_retries")
    timeoutSeconds = serializers.IntegerField(source="timeout_seconds")
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at")
    timeoutAt = serializers.DateTimeField(source="timeout_at")
    lastError = serializers.CharField(source="last_error")
    fallbackFor = serializers.UUIDField(source="fallback_for_id")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    dispatchedAt = serializers.DateTimeField(source="dispatched_at")
    startedAt = serializers.DateTimeField(source="started_at")
    finishedAt = serializers.DateTimeField(source="finished_at")

    class Meta:
        model = Task
        fields = ["taskId", "sessionId", "agentId", "stepId", "name", "sequence", "status", "attempt",
                  "maxRetries", "timeoutSeconds", "payload", "result", "lastError", "fallbackFor",
                  "nextAttemptAt", "timeoutAt", "createdAt", "updatedAt", "dispatchedAt", "startedAt",
                  "finishedAt"]


class TaskDetailOut(TaskOut):
    attempts = TaskAttemptOut(many=True, read_only=True)

    class Meta(TaskOut.Meta):
        fields = [*TaskOut.Meta.fields, "attempts"]


class SessionOut(serializers.ModelSerializer):
    sessionId = serializers.UUIDField(source="id")
    workflowId = serializers.CharField(source="workflow_id")
    definitionRevision = serializers.IntegerField(source="definition_revision")
    agentId = serializers.CharField(source="agent_id")
    initialPayload = serializers.JSONField(source="initial_payload")
    createdAt = serializers.DateTimeField(source="created_at")
    startedAt = serializers.DateTimeField(source="started_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    endedAt = serializers.DateTimeField(source="ended_at")
    pausedAt = serializers.DateTimeField(source="paused_at", help_text="When it was paused (null: not paused).")

    class Meta:
        model = Session
        fields = ["sessionId", "workflowId", "definitionRevision", "agentId", "status", "initialPayload",
                  "result", "error", "createdAt", "startedAt", "updatedAt", "endedAt", "pausedAt"]


class SessionDetailOut(SessionOut):
    tasks = TaskDetailOut(many=True, read_only=True)

    class Meta(SessionOut.Meta):
        fields = [*SessionOut.Meta.fields, "tasks"]


class WorkflowPauseIn(ActionIn):
    sessions = serializers.BooleanField(
        required=False, default=False,
        help_text="Also pause (on resume: resume) the definition's pending and running (paused) sessions.")


class WorkflowPauseOut(serializers.Serializer):
    workflowId = serializers.CharField()
    paused = serializers.BooleanField()
    pausedAt = serializers.DateTimeField(allow_null=True)
    pausedBy = serializers.CharField(allow_blank=True)
    reason = serializers.CharField(allow_blank=True)
    sessions = serializers.IntegerField(help_text="Sessions paused, or released and resumed, by this call.")


class FleetDispatchOut(serializers.Serializer):
    dispatch = serializers.ChoiceField(choices=["on", "off"])
    pausedAt = serializers.DateTimeField(allow_null=True, help_text="Off since (null: dispatch is on).")
    pausedBy = serializers.CharField(allow_blank=True)
    reason = serializers.CharField(allow_blank=True)

    @staticmethod
    def of(switch) -> dict:
        return {"dispatch": "off" if switch.is_off else "on", "pausedAt": switch.paused_at,
                "pausedBy": switch.paused_by_label, "reason": switch.reason}


class ApprovalOut(serializers.ModelSerializer):
    """A waiting approval step, with what the approver is asked to approve (the previous step's result)."""

    taskId = serializers.UUIDField(source="id")
    sessionId = serializers.UUIDField(source="session_id")
    workflowId = serializers.CharField(source="session.workflow_id")
    agentId = serializers.CharField(source="agent_id")
    stepId = serializers.CharField(source="step_id")
    approvers = serializers.SerializerMethodField(help_text="The group that decides (null: any operator).")
    previousResult = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")
    timeoutAt = serializers.DateTimeField(source="timeout_at", help_text="Rejected when still waiting then.")

    class Meta:
        model = Task
        fields = ["taskId", "sessionId", "workflowId", "agentId", "stepId", "name", "status", "approvers",
                  "previousResult", "createdAt", "timeoutAt"]

    def get_approvers(self, task: Task) -> str | None:
        return task.approvers

    def get_previousResult(self, task: Task) -> dict | list | str | int | float | bool | None:
        return task.payload.get("previous_result") if isinstance(task.payload, dict) else None


class ApprovalDecisionIn(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approve", "reject"])
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
