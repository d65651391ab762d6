"""Small forms shared by operator actions."""

from __future__ import annotations

from django import forms


class ReasonForm(forms.Form):
    """An operator's reason for an action; recorded with their name."""

    reason = forms.CharField(max_length=500, required=False, strip=True)


class RequiredReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, required=True, strip=True,
                             error_messages={"required": "Say why (it is recorded with your name)."})


def reason_problem(form: forms.Form) -> str | None:
    """Why the reason in `form` cannot be recorded as typed (too long, NUL...), or None.

    An action with such a reason is refused: dropping the reason silently loses what the operator wrote.
    """
    if form.is_valid():
        return None
    return " ".join(str(e) for e in form.errors.get("reason", [])) or "invalid reason"
