"""Small forms shared by operator actions."""

from __future__ import annotations

from django import forms


class ReasonForm(forms.Form):
    """An operator's reason for an action; recorded with their name."""

    reason = forms.CharField(max_length=500, required=False, strip=True)


class RequiredReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, required=True, strip=True,
                             error_messages={"required": "Say why (it is recorded with your name)."})
