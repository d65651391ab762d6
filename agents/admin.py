"""Admin for agents, their state history and API keys: inspection first, changes through services."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.models import Agent, AgentState, ApiKey
from agents.services import agent_drain, agent_undrain, api_key_create, api_key_revoke
from ui.permissions import ReadOnlyGroupAdminMixin


@admin.register(Agent)
class AgentAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("id", "name", "state", "state_timestamp", "last_seen_at", "deregistered_at", "drained_at",
                    "quarantine_state")
    list_filter = ("state", ("deregistered_at", admin.EmptyFieldListFilter), ("drained_at", admin.EmptyFieldListFilter),
                   "quarantine_state")
    search_fields = ("id", "name", "contact_endpoint")
    readonly_fields = (
        "id", "created_at", "registered_at", "last_seen_at", "state", "state_timestamp",
        "state_received_at", "state_details", "deregistered_at", "drained_at", "drained_by", "drained_reason",
        "quarantine_state", "quarantined_at", "quarantine_reason", "quarantined_by", "quarantine_probe_at",
        "quarantine_strikes", "quarantine_released_at",
    )
    show_full_result_count = False

    actions = ["drain_selected", "undrain_selected"]

    def get_readonly_fields(self, request, obj=None):
        # Agents are created by their reports or AgentKit's webhook; the id is set once.
        if obj is None:
            return tuple(f for f in self.readonly_fields if f != "id")
        return self.readonly_fields

    @admin.action(description="Drain selected agents (no new tasks)", permissions=["change"])
    def drain_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        count = 0
        for agent in queryset.filter(drained_at__isnull=True):
            agent_drain(agent=agent, by_user=request.user, reason="drained in the admin")
            count += 1
        self.message_user(request, f"Drained {count} agent(s); a task in flight still finishes.", messages.SUCCESS)

    @admin.action(description="Undrain selected agents", permissions=["change"])
    def undrain_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        count = 0
        for agent in queryset.filter(drained_at__isnull=False):
            agent_undrain(agent=agent, by_user=request.user, reason="undrained in the admin")
            count += 1
        self.message_user(request, f"Undrained {count} agent(s).", messages.SUCCESS)


@admin.register(AgentState)
class AgentStateAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("agent", "state", "timestamp", "received_at")
    list_filter = ("state",)
    search_fields = ("agent__id",)
    raw_id_fields = ("agent",)
    list_select_related = ("agent",)
    date_hierarchy = "received_at"
    show_full_result_count = False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # history is append-only


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("name", "kind", "agent_id", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at",
                    "revoked_by")
    list_filter = ("kind", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix", "agent_id")
    fields = ("name", "agent_id", "kind", "prefix", "created_at", "created_by", "last_used_at", "expires_at",
              "revoked_at", "revoked_by")
    readonly_fields = ("kind", "prefix", "created_at", "created_by", "last_used_at", "revoked_at", "revoked_by")
    list_select_related = ("revoked_by",)
    actions = ["revoke_selected"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return self.readonly_fields + ("name", "agent_id", "expires_at")
        return self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            return  # keys are immutable; revoke and create a new one instead
        key, raw = api_key_create(name=obj.name, agent_id=obj.agent_id, by=request.user, expires_at=obj.expires_at)
        obj.pk = key.pk
        obj.__dict__.update(key.__dict__)
        messages.warning(request, f"The new key is shown this once; copy it now: {raw}")

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key, by=request.user)
            count += 1
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)
