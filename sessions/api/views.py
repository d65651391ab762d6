"""Workflow trigger (upstream), sessions and tasks resources, and the operator actions."""

from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.api.auth import AgentEndpoint, ApiKeyUser, OperatorOrServiceKey, key_label
from agents.api.views import AgentViewSet
from opscore_site.filters import api_filter, openapi_parameters
from sessions import engine
from sessions.api.serializers import (
    ActionIn,
    ApprovalDecisionIn,
    ApprovalOut,
    FleetDispatchOut,
    QuarantineIn,
    SessionDetailOut,
    SessionOut,
    TaskDetailOut,
    TaskOut,
    WorkflowPauseIn,
    WorkflowPauseOut,
    WorkflowTriggerIn,
    WorkflowTriggerOut,
)
from sessions.engine import By, agent_quarantine, agent_release, session_cancel, session_retry, task_retry
from sessions.filters import SessionFilter, TaskFilter
from sessions.models import FleetDispatch, Session, Task, TaskAttempt
from sessions.services import request_fingerprint, session_trigger
from workflows.models import WorkflowDefinition
from workflows.schema import ID_PATTERN

IDEMPOTENCY_HEADER = "Idempotency-Key"


def _by(request, *, agent_id: str = "") -> tuple[By, str]:
    """The engine's actor for this request, and a note for the event's reason."""
    if isinstance(request.user, ApiKeyUser):
        note = f"via API key {key_label(request.user.key)}"
        return (By.agent(agent_id) if agent_id else By.system()), note
    return By.operator(request.user), ""


class WorkflowTriggerView(APIView):
    """`POST /v1/opscore/agent/{agentId}/workflow`: start a session for the agent."""

    permission_classes = [AgentEndpoint]
    operators_allowed = True

    @extend_schema(
        request=WorkflowTriggerIn, responses={202: WorkflowTriggerOut}, operation_id="agent_workflow_trigger",
        summary="Start a workflow session for an agent",
        parameters=[OpenApiParameter(IDEMPOTENCY_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="Same key and body within the TTL returns the same session")],
    )
    def post(self, request, agent_id: str) -> Response:
        key = request.headers.get(IDEMPOTENCY_HEADER) or None
        # Printable only: a NUL reached PostgreSQL's text column as a 500.
        if key is not None and (len(key) > 255 or not key.strip() or not key.isprintable()):
            raise exceptions.ValidationError({IDEMPOTENCY_HEADER: ["must be 1 to 255 printable, non-blank characters"]})
        trigger = WorkflowTriggerIn(data=request.data)
        trigger.is_valid(raise_exception=True)
        data = trigger.validated_data
        by, _ = _by(request, agent_id=agent_id)
        session, replayed = session_trigger(
            agent_id=agent_id, by=by, definition_id=data.get("workflowDefinitionId"),
            inline_spec=data.get("workflowDefinition"), initial_payload=data["initialPayload"],
            idempotency_key=key,
            fingerprint=request_fingerprint({"agentId": agent_id, "body": request.data}),
        )
        message = ("Workflow session already started for this Idempotency-Key." if replayed
                   else "Workflow session started; its first task is queued.")
        return Response({"sessionId": str(session.pk), "workflowId": session.workflow_id, "message": message},
                        status=status.HTTP_202_ACCEPTED)


class _ActionMixin:
    def _action_args(self, request) -> tuple[By, str]:
        body = ActionIn(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        by, note = _by(request)
        reason = " ".join(part for part in (body.validated_data["reason"], note) if part)
        return by, reason

    def _named_args(self, request, serializer=ActionIn) -> tuple[By, dict]:
        """Who, by name (a service key by its label: the engine records it), and the validated body."""
        body = serializer(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        if isinstance(request.user, ApiKeyUser):
            return By.service_key(f"API key {key_label(request.user.key)}"), body.validated_data
        return By.operator(request.user), body.validated_data


@extend_schema(parameters=openapi_parameters(SessionFilter))
class SessionViewSet(_ActionMixin, viewsets.ReadOnlyModelViewSet):
    """Sessions: list with filters, detail with tasks and attempts, cancel and retry."""

    permission_classes = [OperatorOrServiceKey]
    lookup_url_kwarg = "session_id"

    def get_serializer_class(self):
        return SessionOut if self.action == "list" else SessionDetailOut

    def get_queryset(self):
        queryset = Session.objects.order_by("-created_at", "id")
        if self.action != "list":
            tasks = Task.objects.order_by("sequence").prefetch_related(
                Prefetch("attempts", queryset=TaskAttempt.objects.order_by("number")))
            return queryset.prefetch_related(Prefetch("tasks", queryset=tasks))
        return api_filter(SessionFilter, self.request, queryset)

    @extend_schema(request=ActionIn, responses={200: SessionDetailOut}, parameters=[])
    @action(detail=True, methods=["post"])
    def cancel(self, request, session_id=None) -> Response:
        """Cancel the session and its unfinished tasks (409 when it has already ended)."""
        by, reason = self._action_args(request)
        session_cancel(session=self.get_object(), by=by, reason=reason)
        return Response(SessionDetailOut(self.get_object()).data)

    @extend_schema(request=ActionIn, responses={200: SessionDetailOut}, parameters=[])
    @action(detail=True, methods=["post"])
    def retry(self, request, session_id=None) -> Response:
        """Retry a failed session from its failed step (409 unless it is failed)."""
        by, reason = self._action_args(request)
        session_retry(session=self.get_object(), by=by, reason=reason)
        return Response(SessionDetailOut(self.get_object()).data)

    @extend_schema(request=ActionIn, responses={200: SessionDetailOut}, parameters=[])
    @action(detail=True, methods=["post"])
    def pause(self, request, session_id=None) -> Response:
        """Pause a pending or running session: its step in flight finishes, the next waits (409 otherwise)."""
        by, body = self._named_args(request)
        engine.session_pause(session=self.get_object(), by=by, reason=body["reason"])
        return Response(SessionDetailOut(self.get_object()).data)

    @extend_schema(request=ActionIn, responses={200: SessionDetailOut}, parameters=[])
    @action(detail=True, methods=["post"])
    def resume(self, request, session_id=None) -> Response:
        """Resume a paused session where it stopped (409 unless it is paused)."""
        by, body = self._named_args(request)
        engine.session_resume(session=self.get_object(), by=by, reason=body["reason"])
        return Response(SessionDetailOut(self.get_object()).data)


@extend_schema(parameters=openapi_parameters(TaskFilter))
class TaskViewSet(_ActionMixin, viewsets.ReadOnlyModelViewSet):
    """Tasks: list filtered by status, agent and session; detail with attempts; retry."""

    permission_classes = [OperatorOrServiceKey]
    lookup_url_kwarg = "task_id"

    def get_serializer_class(self):
        return TaskOut if self.action == "list" else TaskDetailOut

    def get_queryset(self):
        queryset = Task.objects.order_by("-created_at", "id")
        if self.action != "list":
            return queryset.prefetch_related(Prefetch("attempts", queryset=TaskAttempt.objects.order_by("number")))
        return api_filter(TaskFilter, self.request, queryset)

    @extend_schema(request=ActionIn, responses={200: TaskDetailOut}, parameters=[])
    @action(detail=True, methods=["post"])
    def retry(self, request, task_id=None) -> Response:
        """Retry a dead or failed task: a fresh round of attempts (409 otherwise)."""
        by, reason = self._action_args(request)
        task_retry(task=self.get_object(), by=by, reason=reason)
        return Response(TaskDetailOut(self.get_object()).data)


class AgentFleetViewSet(_ActionMixin, AgentViewSet):
    """The agents resource plus the engine's actions on an agent (agents know nothing of sessions,
    so the actions live here and this class is what the router serves at `agents`)."""

    @extend_schema(request=QuarantineIn, responses={200: AgentViewSet.serializer_class}, parameters=[],
                   summary="Quarantine an agent by hand")
    @action(detail=True, methods=["post"])
    def quarantine(self, request, agent_id=None) -> Response:
        """No new dispatch to the agent until it is released by hand (no automatic probe); its queued
        tasks move to other agents where their steps allow. 400 without a reason, 409 when it is
        already quarantined."""
        body = QuarantineIn(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        by, note = _by(request)
        agent = agent_quarantine(agent=self.get_object(), by=by,
                                 reason=" ".join(p for p in (body.validated_data["reason"], note) if p))
        return Response(self.get_serializer(agent).data)

    @extend_schema(request=ActionIn, responses={200: AgentViewSet.serializer_class}, parameters=[],
                   summary="Release an agent from quarantine")
    @action(detail=True, methods=["post"])
    def release(self, request, agent_id=None) -> Response:
        """The agent takes work again and its run of failures is forgotten (409 unless quarantined)."""
        by, reason = self._action_args(request)
        agent = agent_release(agent=self.get_object(), by=by, reason=reason)
        return Response(self.get_serializer(agent).data)


class WorkflowPauseViewSet(_ActionMixin, viewsets.GenericViewSet):
    """`workflows/{id}/pause` and `/resume`: served here because workflows/ knows nothing of sessions."""

    permission_classes = [OperatorOrServiceKey]
    queryset = WorkflowDefinition.objects.order_by("id")
    lookup_url_kwarg = "workflow_id"
    lookup_value_regex = ID_PATTERN.strip("^$")

    def _answer(self, definition: WorkflowDefinition, count: int) -> Response:
        return Response(WorkflowPauseOut({
            "workflowId": definition.pk, "paused": definition.paused_at is not None, "pausedAt": definition.paused_at,
            "pausedBy": definition.paused_by_label, "reason": definition.pause_reason, "sessions": count}).data)

    @extend_schema(request=WorkflowPauseIn, responses={200: WorkflowPauseOut}, operation_id="workflows_pause")
    @action(detail=True, methods=["post"])
    def pause(self, request, workflow_id=None) -> Response:
        """Pause a definition: new triggers are still accepted (202) and held pending until it resumes;
        with `sessions: true` its pending and running sessions pause too (409 when already paused)."""
        by, body = self._named_args(request, WorkflowPauseIn)
        definition = self.get_object()
        count = engine.definition_pause(definition=definition, by=by, reason=body["reason"],
                                        pause_sessions=body["sessions"])
        return self._answer(definition, count)

    @extend_schema(request=WorkflowPauseIn, responses={200: WorkflowPauseOut}, operation_id="workflows_resume")
    @action(detail=True, methods=["post"])
    def resume(self, request, workflow_id=None) -> Response:
        """Resume a definition: its held sessions start; with `sessions: true` its paused sessions
        resume too (409 when it is not paused)."""
        by, body = self._named_args(request, WorkflowPauseIn)
        definition = self.get_object()
        count = engine.definition_resume(definition=definition, by=by, reason=body["reason"],
                                         resume_sessions=body["sessions"])
        return self._answer(definition, count)


class FleetViewSet(_ActionMixin, viewsets.GenericViewSet):
    """The fleet-wide dispatch switch (maintenance). Per-agent drain is separate."""

    permission_classes = [OperatorOrServiceKey]
    serializer_class = FleetDispatchOut
    pagination_class = None

    @extend_schema(responses={200: FleetDispatchOut}, operation_id="fleet_dispatch")
    def list(self, request) -> Response:
        """Whether the fleet's dispatch is on, and when it is off: since when, by whom, why."""
        return Response(FleetDispatchOut(FleetDispatchOut.of(FleetDispatch.current())).data)

    @extend_schema(request=ActionIn, responses={200: FleetDispatchOut}, operation_id="fleet_pause")
    @action(detail=False, methods=["post"])
    def pause(self, request) -> Response:
        """Turn dispatch off for the whole fleet: steps in flight finish, reports and triggers are still
        accepted, nothing new is sent (409 when it is off already)."""
        by, body = self._named_args(request)
        engine.fleet_pause(by=by, reason=body["reason"])
        return self.list(request)

    @extend_schema(request=ActionIn, responses={200: FleetDispatchOut}, operation_id="fleet_resume")
    @action(detail=False, methods=["post"])
    def resume(self, request) -> Response:
        """Turn dispatch back on; the held work is dispatched (409 when it is on)."""
        by, body = self._named_args(request)
        engine.fleet_resume(by=by, reason=body["reason"])
        return self.list(request)


class ApprovalViewSet(_ActionMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The approvals inbox: approval steps waiting for a decision, oldest first, and the decision."""

    permission_classes = [OperatorOrServiceKey]
    serializer_class = ApprovalOut
    lookup_url_kwarg = "task_id"

    def get_queryset(self):
        if self.action == "list":
            return (Task.objects.filter(status=Task.Status.WAITING_APPROVAL).select_related("session")
                    .order_by("created_at", "id"))
        return Task.objects.all()  # a decided approval is found, and a second decision answers 409

    @extend_schema(request=ApprovalDecisionIn, responses={200: TaskDetailOut})
    @action(detail=True, methods=["post"])
    def decide(self, request, task_id=None) -> Response:
        """Approve or reject with a comment; it becomes the step's result. 409 when it is not waiting for
        a decision (decided already, cancelled, or not an approval step), 403 outside the step's group."""
        by, body = self._named_args(request, ApprovalDecisionIn)
        task = engine.approval_decide(task=self.get_object(), approve=body["decision"] == "approve",
                                      comment=body["comment"], by=by)
        return Response(TaskDetailOut(Task.objects.prefetch_related("attempts").get(pk=task.pk)).data)
