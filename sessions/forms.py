"""HTML forms for sessions: list filters, failures filters, starting a session."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django import forms
from django.db.models import Q
from django.utils import timezone
from rest_framework.exceptions import ParseError

from agents.models import Agent
from opscore_site.parsers import parse_json_bytes
from sessions.models import Session, Task

SINCE_CHOICES = [("", "any time"), ("1h", "last hour"), ("24h", "last 24 h"), ("7d", "last 7 days")]
DATETIME_INPUT = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]
SINCE_DELTAS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


def _id_filter(field: str, text: str) -> Q:
    """A full UUID matches exactly; a fragment of hex digits matches ids starting with it."""
    text = text.strip().lower()
    try:
        return Q(**{field: uuid.UUID(text)})
    except ValueError:
        return Q(**{f"{field}__startswith": text})


class SessionFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Session id")
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *Session.Status.choices])
    workflow = forms.CharField(required=False)
    agent = forms.CharField(required=False)
    since = forms.ChoiceField(required=False, choices=SINCE_CHOICES)
    after = forms.DateTimeField(required=False, label="Started after", input_formats=DATETIME_INPUT,
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_INPUT[0]))
    before = forms.DateTimeField(required=False, label="Started before", input_formats=DATETIME_INPUT,
                                 widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_INPUT[0]))

    def filter(self, queryset):
        self.is_valid()  # a bad value is shown and ignored; the other filters still apply
        data = self.cleaned_data
        if query := data.get("q"):
            queryset = queryset.filter(_id_filter("id", query))
        if status := data.get("status"):
            queryset = queryset.filter(status=status)
        if workflow := data.get("workflow"):
            queryset = queryset.filter(workflow_id=workflow.strip())
        if agent := data.get("agent"):
            queryset = queryset.filter(agent_id=agent.strip())
        if since := data.get("since"):
            queryset = queryset.filter(created_at__gte=timezone.now() - SINCE_DELTAS[since])
        if after := data.get("after"):
            queryset = queryset.filter(created_at__gte=after)
        if before := data.get("before"):
            queryset = queryset.filter(created_at__lt=before)
        return queryset


class FailureFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "failed or dead"), (Task.Status.FAILED, "failed"),
                                                        (Task.Status.DEAD, "dead")])
    workflow = forms.CharField(required=False)
    agent = forms.CharField(required=False)
    step = forms.CharField(required=False)
    q = forms.CharField(required=False, label="Error contains")

    def filter(self, queryset):
        self.is_valid()  # a bad value is shown and ignored; the other filters still apply
        data = self.cleaned_data
        queryset = queryset.awaiting_decision()
        if status := data.get("status"):
            queryset = queryset.filter(status=status)
        if workflow := data.get("workflow"):
            queryset = queryset.filter(session__workflow_id=workflow.strip())
        if agent := data.get("agent"):
            queryset = queryset.filter(agent_id=agent.strip())
        if step := data.get("step"):
            queryset = queryset.filter(step_id=step.strip())
        if query := data.get("q"):
            queryset = queryset.filter(last_error__icontains=query)
        return queryset


class SessionStartForm(forms.Form):
    agent = forms.CharField(max_length=255, label="Agent id",
                            widget=forms.TextInput(attrs={"list": "agent-ids", "autocomplete": "off"}))
    initial_payload = forms.CharField(required=False, label="Initial payload (JSON object)",
                                      widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}))

    def clean_agent(self):
        agent_id = self.cleaned_data["agent"].strip()
        agent = Agent.objects.filter(pk=agent_id).first()
        if agent is None:
            raise forms.ValidationError(f"no agent with id '{agent_id}'")
        return agent  # whether it can take a session is the engine's to say (a deregistered one cannot)

    def clean_initial_payload(self):
        text = self.cleaned_data["initial_payload"].strip()
        if not text:
            return None
        try:
            # The API's strict reader: what json accepts but PostgreSQL cannot store (NUL, NaN, Infinity,
            # very deep nesting, huge integers) is a message here, not a failure in the database (a 500).
            value = parse_json_bytes(text.encode("utf-8", "surrogatepass"))
        except ParseError as exc:
            raise forms.ValidationError(f"invalid JSON: {str(exc.detail).removeprefix('JSON parse error - ')}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError(f"must be a JSON object, not {type(value).__name__}")
        return value
