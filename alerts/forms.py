"""The alert rule form of the operator pages and the admin: one set of checks for both."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from alerts.models import AlertRule
from opscore_site.httpurl import http_url_problem

K = AlertRule.Kind
WORKFLOW_KINDS = {K.SESSION_FAILED, K.TASK_DEAD, K.STEP_FAILURES}
STEP_KINDS = {K.TASK_DEAD, K.STEP_FAILURES}


class AlertRuleForm(forms.ModelForm):
    class Meta:
        model = AlertRule
        fields = ["name", "kind", "workflow_id", "step_id", "threshold", "window_minutes", "interval_minutes",
                  "channel", "target", "enabled"]
        widgets = {"target": forms.TextInput(attrs={"size": 60})}

    def clean_interval_minutes(self) -> int:
        value = self.cleaned_data["interval_minutes"]
        if value < 1:
            raise ValidationError("at least 1 minute (the rule fires at most once per interval)")
        return value

    def clean_window_minutes(self) -> int:
        value = self.cleaned_data["window_minutes"]
        if value < 1:
            raise ValidationError("at least 1 minute")
        return value

    def clean(self) -> dict:
        data = super().clean()
        kind, channel, target = data.get("kind"), data.get("channel"), (data.get("target") or "").strip()
        if kind and data.get("workflow_id") and kind not in WORKFLOW_KINDS:
            self.add_error("workflow_id", "only session failed, task dead and step failures rules name a workflow")
        if kind and data.get("step_id") and kind not in STEP_KINDS:
            self.add_error("step_id", "only task dead and step failures rules name a step")
        if channel and target:
            if channel == AlertRule.Channel.EMAIL:
                addresses = [a.strip() for a in target.split(",") if a.strip()]
                bad = [a for a in addresses if not _is_email(a)]
                if bad or not addresses:
                    self.add_error("target", f"not an email address: {', '.join(bad) or target}")
                data["target"] = ", ".join(addresses)
            elif problem := http_url_problem(target):
                self.add_error("target", f"the webhook URL {problem}")
            else:
                data["target"] = target
        return data


def _is_email(value: str) -> bool:
    try:
        validate_email(value)
    except ValidationError:
        return False
    return True
