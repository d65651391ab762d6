"""Admin for alert rules (the operator form's checks) and their deliveries (read-only history)."""

from __future__ import annotations

from django.contrib import admin

from alerts.forms import AlertRuleForm
from alerts.models import AlertDelivery, AlertRule
from alerts.services import alert_rule_save
from ui.permissions import ReadOnlyGroupAdminMixin


@admin.register(AlertRule)
class AlertRuleAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    form = AlertRuleForm
    list_display = ("name", "kind", "channel", "enabled", "interval_minutes", "last_fired_at")
    list_filter = ("kind", "channel", "enabled")
    search_fields = ("name", "target", "workflow_id", "step_id")
    readonly_fields = ("last_fired_at", "created_at", "updated_at", "created_by")

    def save_model(self, request, obj, form, change) -> None:
        alert_rule_save(rule=obj, by=request.user)


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("id", "rule", "channel", "attempt", "result", "http_status", "created_at", "sent_at", "is_test")
    list_filter = ("result", "channel", "is_test")
    list_select_related = ("rule",)
    raw_id_fields = ("rule",)
    search_fields = ("error",)
    show_full_result_count = False
    readonly_fields = ("rule", "channel", "is_test", "attempt", "result", "payload", "http_status", "error",
                       "created_at", "next_attempt_at", "sent_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
