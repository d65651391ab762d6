"""The HTML forms that start a session and decide an approval (the list filters are sessions/filters.py)."""

from __future__ import annotations

from django import forms
from rest_framework.exceptions import ParseError

from agents.models import Agent
from opscore_site.parsers import parse_json_bytes

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


class ApprovalDecisionForm(forms.Form):
    """An approve or reject from the approvals inbox, with its comment (kept in the step's result)."""

    decision = forms.ChoiceField(choices=[("approve", "approve"), ("reject", "reject")])
    comment = forms.CharField(max_length=2000, required=False, strip=True)
