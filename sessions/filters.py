"""The sessions and tasks list filters: one FilterSet each for the API lists and the operator pages
(`TaskFilter` with `awaiting_decision` is the failures queue)."""

from __future__ import annotations

import uuid

import django_filters
from django import forms
from drf_spectacular.types import OpenApiTypes

from opscore_site.filters import ChoiceListFilter, YesNoFilter, date_range_filters, text_filter
from sessions.models import Session, Task


def _id_prefix(field: str):
    """A full UUID matches exactly; a fragment of hex digits matches ids starting with it."""

    def method(queryset, name, value):
        text = value.strip().lower()
        try:
            return queryset.filter(**{field: uuid.UUID(text)})
        except ValueError:
            return queryset.filter(**{f"{field}__startswith": text})

    return method


class SessionFilter(django_filters.FilterSet):
    """status (`a,b`), workflow, agent, the start time (since, after, before), the id or its first characters (q)."""

    q = text_filter(label="Session id", method=_id_prefix("id"), help_text="the session id or its first characters")
    status = ChoiceListFilter(field_name="status", label="Status", choices=Session.Status.choices,
                              empty_label="any status", help_text="comma-separated statuses")
    workflow = text_filter(label="Workflow", field_name="workflow_id", help_text="workflow definition id")
    agent = text_filter(label="Agent", field_name="agent_id", help_text="agent id")
    since, after, before = date_range_filters("created_at", noun="Started")

    class Meta:
        model = Session
        fields: list[str] = []


class SessionIdField(forms.CharField):
    def clean(self, value):
        text = super().clean(value)
        if not text:
            return None
        try:
            return uuid.UUID(text)
        except ValueError:
            raise forms.ValidationError("must be a session id (UUID)") from None


class SessionIdFilter(django_filters.Filter):
    field_class = SessionIdField
    api_type = OpenApiTypes.UUID


class TaskFilter(django_filters.FilterSet):
    """status (`a,b`), agent, session, workflow, step, error text (q), awaiting_decision (the failures queue)."""

    status = ChoiceListFilter(field_name="status", label="Status", choices=Task.Status.choices,
                              empty_label="any status", help_text="comma-separated statuses")
    agent = text_filter(label="Agent", field_name="agent_id", help_text="agent id")
    session = SessionIdFilter(label="Session", field_name="session_id", help_text="session id")
    workflow = text_filter(label="Workflow", field_name="session__workflow_id", help_text="workflow definition id")
    step = text_filter(label="Step", field_name="step_id", help_text="step id (taskId in the spec)")
    q = text_filter(label="Error contains", field_name="last_error", lookup_expr="icontains",
                    help_text="substring of the last error")
    awaiting_decision = YesNoFilter(label="Awaiting decision", method="filter_awaiting_decision",
                                    help_text="dead or failed, and an operator may still retry it (the failures queue)",
                                    choices=[("", "any"), ("yes", "awaiting a decision"), ("no", "not awaiting")])

    class Meta:
        model = Task
        fields: list[str] = []

    def filter_awaiting_decision(self, queryset, name, value: bool):
        return queryset.awaiting_decision() if value else queryset.exclude(pk__in=Task.objects.awaiting_decision())


class FailureFilter(TaskFilter):
    """The failures page: `TaskFilter` over the tasks awaiting a decision, whose status is failed or dead."""

    status = ChoiceListFilter(field_name="status", label="Status",
                              choices=[(Task.Status.FAILED, "failed"), (Task.Status.DEAD, "dead")],
                              empty_label="failed or dead", help_text="failed or dead")

    def filter_queryset(self, queryset):
        return super().filter_queryset(queryset.awaiting_decision())
