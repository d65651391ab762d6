"""Sessions (one run of a workflow for one agent), their Tasks, attempts and events.

Statuses and attempt outcomes are decided only by `sessions/engine.py`; nothing else
writes `status` or `outcome`. This module reads: fields, constraints, queue filters and
the retry rule both the failures queue and the engine's guard use.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Actor(models.TextChoices):
    """Who caused a change."""

    AGENT = "agent"
    OPERATOR = "operator"
    SYSTEM = "system"


class Session(models.Model):
    """One run of a workflow definition for one agent, with the spec snapshot it started with."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        PAUSED = "paused"  # an operator's pause: in-flight steps finish, no new step is dispatched

    TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
    # Sessions whose queued tasks are not dispatched: ended, or paused by an operator.
    NOT_DISPATCHING = TERMINAL | {Status.PAUSED}

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    definition = models.ForeignKey(
        "workflows.WorkflowDefinition", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="sessions",
    )
    workflow_id = models.CharField(max_length=100, help_text="The definition id, kept if it is deleted.")
    definition_revision = models.PositiveIntegerField(default=1)
    spec_snapshot = models.JSONField()
    # No index of its own: (agent, -created_at) below serves every lookup by agent.
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="sessions", db_index=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    initial_payload = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # Idempotency-Key of the trigger request and a hash of its body.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True, help_text="When the session was paused (null: not paused).")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="session_idempotency_key_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="session_status_created_idx"),
            models.Index(fields=["agent", "-created_at"], name="session_agent_created_idx"),
            models.Index(fields=["workflow_id", "-created_at"], name="session_workflow_created_idx"),
            models.Index(fields=["-created_at"], name="session_created_idx"),
            models.Index(fields=["ended_at"], name="session_ended_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} for {self.agent_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class TaskQuerySet(models.QuerySet["Task"]):
    def awaiting_decision(self) -> TaskQuerySet:
        """The failures queue: dead or failed tasks an operator can still retry.

        `Task.retry_refusal` as a filter (the engine's guard): not in a cancelled or
        completed session, and no fallback step has taken over from the task.
        """
        return (self.filter(status__in=Task.NEEDS_DECISION, fallbacks__isnull=True)
                .exclude(session__status__in=tuple(Task.RETRY_CLOSED_SESSIONS)))


class Task(models.Model):
    """One step of one session, sent to one agent through AgentKit."""

    class Status(models.TextChoices):
        PENDING = "pending"
        QUEUED = "queued"
        DISPATCHED = "dispatched"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        RETRY_SCHEDULED = "retry_scheduled"
        DEAD = "dead"
        CANCELLED = "cancelled"
        WAITING_APPROVAL = "waiting_approval"  # an approval step: waits for a person's decision
        REJECTED = "rejected"  # an approval step rejected (or timed out): final

    TERMINAL = frozenset({Status.COMPLETED, Status.DEAD, Status.CANCELLED, Status.REJECTED})
    IN_FLIGHT = frozenset({Status.DISPATCHED, Status.RUNNING})
    # Waiting for an operator's decision (the failures queue).
    NEEDS_DECISION = frozenset({Status.FAILED, Status.DEAD})
    # Sessions whose tasks are never retried, and why (`retry_refusal`, `awaiting_decision`).
    RETRY_CLOSED_SESSIONS = {Session.Status.CANCELLED: "is cancelled", Session.Status.COMPLETED: "is already completed"}

    objects = TaskQuerySet.as_manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No indexes of their own: (session, sequence) and (agent, status) below serve every lookup by
    # session or agent, and each index more is written at every status change of a task.
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="tasks", db_index=False)
    step_id = models.CharField(max_length=100)
    name = models.CharField(max_length=255, blank=True)
    sequence = models.PositiveIntegerField(default=1, help_text="Order of this task within its session.")
    fallback_for = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="fallbacks",
        help_text="The dead task this one runs as the fallback of.",
    )
    payload = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)

    attempt = models.PositiveIntegerField(default=0, help_text="Number of the latest attempt (0: none yet).")
    max_retries = models.PositiveIntegerField(default=3)
    timeout_seconds = models.PositiveIntegerField(default=300)
    retry_backoff_seconds = models.FloatField(default=5.0)

    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="When a scheduled retry is due.")
    timeout_at = models.DateTimeField(null=True, blank=True, help_text="Deadline of the attempt in flight.")
    reference_at = models.DateTimeField(
        null=True, blank=True,
        help_text="Reports received after this time count for the attempt in flight.",
    )
    enqueued_at = models.DateTimeField(
        null=True, blank=True, help_text="When the dispatch job was last enqueued (lost-job detection)."
    )
    last_error = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)

    # Routing (DESIGN.md "Where a step goes"): copied from the step, so the claim decides without the spec.
    capability = models.CharField(max_length=255, blank=True, help_text="The step's agentCapability.")
    pinned = models.BooleanField(default=False, help_text="The step runs on the session's agent only.")
    queue_timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="How long it may wait for an agent (empty: OPSCORE_QUEUE_TIMEOUT_SECONDS).")
    routing_note = models.CharField(max_length=500, blank=True,
                                    help_text="Why the task is on its agent, or what it waits for.")
    waiting_since = models.DateTimeField(null=True, blank=True,
                                         help_text="Set while no agent can take the task.")
    queue_deadline_at = models.DateTimeField(null=True, blank=True,
                                             help_text="When waiting fails the attempt (schedule-to-start timeout).")
    probe = models.BooleanField(default=False, help_text="The attempt in flight probes its quarantined agent.")

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "sequence"]
        constraints = [
            # The final guard of "one task in flight per agent": an `idle` report is
            # only attributable to a task when it is the agent's only one.
            models.UniqueConstraint(
                fields=["agent"],
                condition=Q(status__in=["dispatched", "running"]),
                name="task_one_in_flight_per_agent",
            ),
            models.UniqueConstraint(fields=["session", "sequence"], name="task_session_sequence_unique"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="task_status_next_attempt_idx"),
            models.Index(fields=["status", "timeout_at"], name="task_status_timeout_idx"),
            models.Index(fields=["agent", "status"], name="task_agent_status_idx"),
            models.Index(fields=["status", "-updated_at"], name="task_status_updated_idx"),
            # Throughput on the dashboard: completed tasks by finish time.
            models.Index(fields=["status", "finished_at"], name="task_status_finished_idx"),
            # The approvals inbox and the approval timeout sweep.
            models.Index(fields=["status", "timeout_at"], condition=Q(status="waiting_approval"),
                         name="task_waiting_approval_idx"),
            # Tasks waiting for an agent (the idle-report kick and the attention list): few rows.
            models.Index(fields=["waiting_since"], name="task_waiting_idx", condition=Q(waiting_since__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.step_id} of {self.session_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def approvers(self) -> str | None:
        """The group that decides this approval step (from the session's snapshot), or None: any operator."""
        for step in self.session.spec_snapshot.get("tasks") or []:
            if isinstance(step, dict) and step.get("taskId") == self.step_id:
                return step.get("approvers") or None
        return None

    def retry_refusal(self, session: Session) -> str | None:
        """Why an operator cannot retry this task of `session` now, or None if they can.

        The one retry rule: `engine.task_retry` refuses with this reason, and the failures
        queue (`Task.objects.awaiting_decision()`) is the same rule as a filter.
        """
        if self.status not in self.NEEDS_DECISION:
            return f"task {self.pk} is {self.status}; only dead or failed tasks can be retried"
        if session.status in self.RETRY_CLOSED_SESSIONS:
            return f"session {session.pk} {self.RETRY_CLOSED_SESSIONS[session.status]}"
        if self.fallbacks.exists():
            return f"task {self.pk} already has a fallback task; retry that one instead"
        return None


class TaskAttempt(models.Model):
    """One dispatch attempt of a task, fenced in the database before AgentKit is called."""

    class Outcome(models.TextChoices):
        SENDING = "sending"  # fenced and committed; the POST is under way or was cut short
        ACCEPTED = "accepted"  # AgentKit answered 2xx
        COMPLETED = "completed"  # the agent reported idle
        FAILED = "failed"  # transient dispatch error, error report or timeout
        REJECTED = "rejected"  # permanent dispatch error (404/422/4xx)
        CANCELLED = "cancelled"

    # No indexes of their own: (task, number) and (agent, -started_at) below serve every lookup.
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="attempts", db_index=False)
    number = models.PositiveIntegerField()
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.PROTECT, related_name="attempts", db_index=False,
        help_text="Where the attempt went (empty: it never left the queue).",
    )
    agent_fault = models.BooleanField(
        default=False, help_text="Failed by the agent's fault (AgentKit 404/5xx, a lost forward): counts toward quarantine.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SENDING)
    reference_at = models.DateTimeField(help_text="Taken before the POST; later reports count.")
    http_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["task", "number"]
        constraints = [
            # A duplicate delivery of the dispatch job cannot fence the same attempt twice.
            models.UniqueConstraint(fields=["task", "number"], name="taskattempt_task_number_unique"),
        ]
        indexes = [
            # The agent's latest attempts: its run of failures (quarantine) and the failures page.
            models.Index(fields=["agent", "-started_at"], name="taskattempt_agent_started_idx"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.task_id}: {self.outcome}"


class TaskEvent(models.Model):
    """An append-only record of a status change of a task or a session, and who caused it."""

    # No indexes of their own: (session, created_at) and (task, created_at) below serve every lookup.
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="events", db_index=False)
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.CASCADE, related_name="events",
                             db_index=False)
    old_status = models.CharField(max_length=16, blank=True)
    new_status = models.CharField(max_length=16)
    actor = models.CharField(max_length=16, choices=Actor.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_agent_id = models.CharField(max_length=255, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["session", "created_at"], name="taskevent_session_created_idx"),
            models.Index(fields=["task", "created_at"], name="taskevent_task_created_idx"),
            models.Index(fields=["created_at"], name="taskevent_created_idx"),
        ]

    def __str__(self) -> str:
        subject = f"task {self.task_id}" if self.task_id else f"session {self.session_id}"
        return f"{subject}: {self.old_status or '-'} -> {self.new_status} by {self.actor}"

    @property
    def actor_label(self) -> str:
        if self.actor == Actor.OPERATOR and self.actor_user_id:
            return f"operator {self.actor_user}"
        if self.actor == Actor.AGENT and self.actor_agent_id:
            return f"agent {self.actor_agent_id}"
        return str(self.actor)


class QuarantineEvent(models.Model):
    """An append-only record of a change of an agent's quarantine state, who caused it and why."""

    # No index of its own: (agent, -created_at) below serves every lookup by agent.
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="quarantine_events",
                              db_index=False)
    old_state = models.CharField(max_length=16, blank=True)
    new_state = models.CharField(max_length=16, blank=True)
    actor = models.CharField(max_length=16, choices=Actor.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True)
    failures = models.JSONField(default=list, blank=True,
                                help_text="The attempts that caused it: task, attempt, error.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["agent", "-created_at"], name="quarantineevent_agent_idx")]

    def __str__(self) -> str:
        return f"{self.agent_id}: {self.old_state or 'ok'} -> {self.new_state or 'ok'} by {self.actor}"

    @property
    def actor_label(self) -> str:
        if self.actor == Actor.OPERATOR and self.actor_user_id:
            return f"operator {self.actor_user}"
        return str(self.actor)


class FleetDispatch(models.Model):
    """The fleet-wide dispatch switch (maintenance): one row; `paused_at` set means nothing is dispatched.

    Written only by `sessions/engine.py` (`fleet_pause` / `fleet_resume`); every change is a ControlEvent.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    paused_at = models.DateTimeField(null=True, blank=True, help_text="Dispatch off since (null: dispatch on).")
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    paused_by_label = models.CharField(max_length=255, blank=True, help_text="Who turned dispatch off.")
    reason = models.TextField(blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="fleetdispatch_singleton")]

    def __str__(self) -> str:
        return "fleet dispatch off" if self.paused_at else "fleet dispatch on"

    @classmethod
    def current(cls) -> FleetDispatch:
        """The switch (a fresh read; a row that was never written reads as "on")."""
        return cls.objects.filter(pk=1).first() or cls(pk=1)

    @property
    def is_off(self) -> bool:
        return self.paused_at is not None


class ControlEvent(models.Model):
    """An append-only record of a pause or resume of a workflow definition or of the fleet's dispatch.

    A session's own pause and resume are TaskEvents (they change its status).
    """

    class Scope(models.TextChoices):
        FLEET = "fleet"
        DEFINITION = "definition"

    class Action(models.TextChoices):
        PAUSED = "paused"
        RESUMED = "resumed"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    target = models.CharField(max_length=100, blank=True, help_text="The definition id (blank for the fleet).")
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.CharField(max_length=16, choices=Actor.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=255, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["scope", "target", "-created_at"], name="controlevent_target_idx")]

    def __str__(self) -> str:
        return f"{self.scope} {self.target} {self.action} by {self.actor_label or self.actor}"
