"""Admin for sessions, tasks, attempts and events. Statuses are read-only here."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from sessions import engine
from sessions.bulk import run_each, skipped_text
from agents.admin import AgentAdmin
from agents.models import Agent
from sessions.models import ControlEvent, FleetDispatch, QuarantineEvent, Session, Task, TaskAttempt, TaskEvent
from ui.permissions import ReadOnlyGroupAdminMixin
from workflows.admin import WorkflowDefinitionAdmin
from workflows.models import WorkflowDefinition


def _run_each(modeladmin: admin.ModelAdmin, request: HttpRequest, objects, action, verb: str) -> None:
    """Call the engine `action` on each object; report done and skipped (raced or not allowed) counts."""
    by = engine.By.operator(request.user)
    done, skipped = run_each(objects, lambda obj: action(obj, by))
    modeladmin.message_user(request, f"{verb} {done}." + skipped_text(skipped),
                            messages.WARNING if skipped else messages.SUCCESS)


class TaskInline(admin.TabularInline):
    model = Task
    fields = ("sequence", "step_id", "status", "attempt", "last_error", "dispatched_at", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("sequence",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Session)
class SessionAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("id", "workflow_id", "agent", "status", "created_at", "ended_at")
    list_filter = ("status", "workflow_id")
    search_fields = ("=id", "workflow_id", "agent__id")
    raw_id_fields = ("agent", "definition", "created_by")
    list_select_related = ("agent",)
    date_hierarchy = "created_at"
    show_full_result_count = False
    readonly_fields = (
        "id", "status", "workflow_id", "definition", "definition_revision", "agent", "spec_snapshot",
        "initial_payload", "result", "error", "idempotency_key", "request_fingerprint", "created_by",
        "created_at", "started_at", "updated_at", "ended_at", "paused_at",
    )
    inlines = [TaskInline]
    actions = ["cancel_selected", "retry_selected", "pause_selected", "resume_selected"]

    def has_add_permission(self, request) -> bool:
        return False  # sessions are started through the engine (API, UI or command)

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting a session here would end it outside the engine and erase who did what; finished
        # sessions leave through opscore_prune (retention).
        return False

    @admin.action(description="Cancel selected sessions", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        _run_each(self, request, queryset.exclude(status__in=Session.TERMINAL),
                  lambda s, by: engine.session_cancel(session=s, by=by, reason="cancelled in the admin"),
                  "Cancelled session(s):")

    @admin.action(description="Retry selected failed sessions (from the failed step)", permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        _run_each(self, request, queryset,
                  lambda s, by: engine.session_retry(session=s, by=by, reason="retried in the admin"),
                  "Retried session(s):")

    @admin.action(description="Pause selected sessions (steps in flight finish)", permissions=["change"])
    def pause_selected(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        _run_each(self, request, queryset,
                  lambda s, by: engine.session_pause(session=s, by=by, reason="paused in the admin"),
                  "Paused session(s):")

    @admin.action(description="Resume selected paused sessions", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        _run_each(self, request, queryset,
                  lambda s, by: engine.session_resume(session=s, by=by, reason="resumed in the admin"),
                  "Resumed session(s):")


class AttemptInline(admin.TabularInline):
    model = TaskAttempt
    fields = ("number", "agent", "outcome", "agent_fault", "reference_at", "http_status", "error", "started_at",
              "ended_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("id", "step_id", "session", "agent", "status", "attempt", "updated_at")
    list_filter = ("status",)
    search_fields = ("=id", "=session__id", "step_id", "agent__id", "last_error")
    raw_id_fields = ("session", "agent", "fallback_for")
    list_select_related = ("session", "agent")
    show_full_result_count = False
    readonly_fields = (
        "id", "session", "agent", "step_id", "name", "sequence", "fallback_for", "payload", "status",
        "attempt", "max_retries", "timeout_seconds", "retry_backoff_seconds", "next_attempt_at",
        "timeout_at", "reference_at", "enqueued_at", "last_error", "result", "created_at", "updated_at",
        "dispatched_at", "started_at", "finished_at", "capability", "pinned", "queue_timeout_seconds",
        "routing_note", "waiting_since", "queue_deadline_at", "probe",
    )
    inlines = [AttemptInline]
    actions = ["retry_selected", "approve_selected", "reject_selected"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # history: the engine and opscore_prune own these rows

    @admin.action(description="Retry selected tasks (dead or failed)", permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _run_each(self, request, queryset,
                  lambda t, by: engine.task_retry(task=t, by=by, reason="retried in the admin"),
                  "Retried task(s):")

    @admin.action(description="Approve selected approval steps", permissions=["change"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _run_each(self, request, queryset,
                  lambda t, by: engine.approval_decide(task=t, approve=True, comment="approved in the admin", by=by),
                  "Approved:")

    @admin.action(description="Reject selected approval steps", permissions=["change"])
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _run_each(self, request, queryset,
                  lambda t, by: engine.approval_decide(task=t, approve=False, comment="rejected in the admin", by=by),
                  "Rejected:")


@admin.register(TaskAttempt)
class TaskAttemptAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("task", "number", "agent", "outcome", "agent_fault", "http_status", "started_at", "ended_at")
    list_filter = ("outcome", "agent_fault")
    search_fields = ("=task__id", "agent__id", "error")
    raw_id_fields = ("task", "agent")
    readonly_fields = ("task", "number", "agent", "outcome", "agent_fault", "reference_at", "http_status", "error",
                       "started_at", "ended_at")
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # history: the engine and opscore_prune own these rows


@admin.register(TaskEvent)
class TaskEventAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "session", "task", "old_status", "new_status", "actor", "actor_user", "reason")
    list_filter = ("actor", "new_status")
    search_fields = ("=session__id", "=task__id", "reason", "actor_agent_id")
    raw_id_fields = ("session", "task", "actor_user")
    list_select_related = ("actor_user",)
    readonly_fields = (
        "session", "task", "old_status", "new_status", "actor", "actor_user", "actor_agent_id",
        "attempt", "reason", "created_at",
    )
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # history: the engine and opscore_prune own these rows


@admin.register(QuarantineEvent)
class QuarantineEventAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "agent", "old_state", "new_state", "actor", "actor_user", "reason")
    list_filter = ("actor", "new_state")
    search_fields = ("agent__id", "reason")
    raw_id_fields = ("agent", "actor_user")
    list_select_related = ("actor_user",)
    readonly_fields = ("agent", "old_state", "new_state", "actor", "actor_user", "reason", "failures", "created_at")


# workflows/ knows nothing of sessions, so the definitions' pause actions are added from here.
@admin.action(description="Pause selected definitions (hold new sessions; running ones go on)",
              permissions=["change"])
def pause_definitions(modeladmin, request: HttpRequest, queryset: QuerySet[WorkflowDefinition]) -> None:
    _run_each(modeladmin, request, queryset,
              lambda d, by: engine.definition_pause(definition=d, by=by, reason="paused in the admin"),
              "Paused definition(s):")


@admin.action(description="Pause selected definitions and their sessions", permissions=["change"])
def pause_definitions_and_sessions(modeladmin, request: HttpRequest, queryset: QuerySet[WorkflowDefinition]) -> None:
    _run_each(modeladmin, request, queryset,
              lambda d, by: engine.definition_pause(definition=d, by=by, reason="paused in the admin",
                                                    pause_sessions=True),
              "Paused definition(s) and their sessions:")


@admin.action(description="Resume selected definitions and their paused sessions", permissions=["change"])
def resume_definitions(modeladmin, request: HttpRequest, queryset: QuerySet[WorkflowDefinition]) -> None:
    _run_each(modeladmin, request, queryset,
              lambda d, by: engine.definition_resume(definition=d, by=by, reason="resumed in the admin",
                                                     resume_sessions=True),
              "Resumed definition(s):")


WorkflowDefinitionAdmin.actions = [*(WorkflowDefinitionAdmin.actions or []), pause_definitions,
                                   pause_definitions_and_sessions, resume_definitions]
WorkflowDefinitionAdmin.list_display = (*WorkflowDefinitionAdmin.list_display, "paused_at")
WorkflowDefinitionAdmin.readonly_fields = (*WorkflowDefinitionAdmin.readonly_fields, "paused_at", "paused_by_label",
                                           "pause_reason")


@admin.register(FleetDispatch)
class FleetDispatchAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    """The fleet's dispatch switch: one row, changed only by its two actions."""

    list_display = ("__str__", "paused_at", "paused_by_label", "reason")
    readonly_fields = ("paused_at", "paused_by", "paused_by_label", "reason")
    actions = ["dispatch_off", "dispatch_on"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Turn the fleet's dispatch off (maintenance)", permissions=["change"])
    def dispatch_off(self, request: HttpRequest, queryset: QuerySet[FleetDispatch]) -> None:
        _run_each(self, request, queryset[:1], lambda f, by: engine.fleet_pause(by=by, reason="turned off in the admin"),
                  "Dispatch turned off:")

    @admin.action(description="Turn the fleet's dispatch back on", permissions=["change"])
    def dispatch_on(self, request: HttpRequest, queryset: QuerySet[FleetDispatch]) -> None:
        _run_each(self, request, queryset[:1], lambda f, by: engine.fleet_resume(by=by, reason="turned on in the admin"),
                  "Dispatch turned on:")


@admin.register(ControlEvent)
class ControlEventAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "scope", "target", "action", "actor_label", "reason")
    list_filter = ("scope", "action")
    search_fields = ("target", "reason", "actor_label")
    readonly_fields = ("scope", "target", "action", "actor", "actor_user", "actor_label", "reason", "created_at")
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # history: the engine owns these rows


# The agent admin's quarantine actions call the engine, which `agents` may not import
# (DESIGN.md: sessions -> agents only), so they are attached to it from here.
@admin.action(description="Quarantine selected agents (no dispatch until released)", permissions=["change"])
def quarantine_selected(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
    _run_each(modeladmin, request, queryset, lambda agent, by: engine.agent_quarantine(
        agent=agent, by=by, reason="quarantined in the admin"), "Quarantined agent(s):")


@admin.action(description="Release selected agents from quarantine", permissions=["change"])
def release_selected(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
    _run_each(modeladmin, request, queryset, lambda agent, by: engine.agent_release(
        agent=agent, by=by, reason="released in the admin"), "Released agent(s):")


AgentAdmin.actions = [*AgentAdmin.actions, quarantine_selected, release_selected]
