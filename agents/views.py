"""Operator actions on agents (drain/undrain) and the API key pages.

The agent list and detail show tasks and sessions, so they live in sessions/views.py
(agents know nothing of sessions).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from agents.models import Agent, ApiKey
from agents.services import agent_drain, agent_undrain, api_key_create, api_key_revoke
from opscore_site.durations import parse_duration
from ui.forms import ReasonForm, RequiredReasonForm, reason_problem
from ui.permissions import actor_required, viewer_required
from ui.rendering import paginate, query_without_page, render_page


@actor_required
def agent_drain_view(request: HttpRequest, agent_id: str) -> HttpResponse:
    agent = get_object_or_404(Agent, pk=agent_id)
    form = RequiredReasonForm(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Not drained: {problem}")
        return redirect("agents:agent-detail", agent_id=agent.pk)
    agent_drain(agent=agent, by_user=request.user, reason=form.cleaned_data["reason"])
    messages.success(request, f"Agent {agent.pk} is drained: no new task will be dispatched to it.")
    return redirect("agents:agent-detail", agent_id=agent.pk)


@actor_required
def agent_undrain_view(request: HttpRequest, agent_id: str) -> HttpResponse:
    agent = get_object_or_404(Agent, pk=agent_id)
    form = ReasonForm(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Not undrained: {problem}")
        return redirect("agents:agent-detail", agent_id=agent.pk)
    agent_undrain(agent=agent, by_user=request.user, reason=form.cleaned_data["reason"])
    messages.success(request, f"Agent {agent.pk} takes tasks again; its queued tasks are picked up shortly.")
    return redirect("agents:agent-detail", agent_id=agent.pk)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=200, strip=True)
    agent_id = forms.CharField(max_length=255, required=False, strip=True, label="Agent id",
                               help_text="Leave empty for a service key (may act for any agent).")
    expires = forms.CharField(max_length=20, required=False, strip=True, label="Expires after",
                              help_text="e.g. 90d or 12h; leave empty for a key that never expires.")

    def clean_expires(self):
        text = self.cleaned_data["expires"]
        if not text:
            return None
        try:
            return timezone.now() + parse_duration(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@viewer_required
def apikey_list(request: HttpRequest) -> HttpResponse:
    return _apikey_page(request)


def _apikey_page(request: HttpRequest, *, form: ApiKeyForm | None = None, created: tuple | None = None,
                 status: int = 200) -> HttpResponse:
    show = request.GET.get("show", "active")
    keys = ApiKey.objects.select_related("created_by", "revoked_by").order_by("-created_at")
    if show != "all":
        keys = keys.filter(revoked_at__isnull=True)
    context = {
        "page": paginate(request, keys),
        "query": query_without_page(request),
        "show": show,
        "form": form or ApiKeyForm(),
        "created_key": created[0] if created else None,
        "raw_key": created[1] if created else None,
    }
    if status == 200 and request.method == "GET":
        return render_page(request, "agents/apikey_list.html", "agents/_apikey_rows.html", context)
    return render(request, "agents/apikey_list.html", context, status=status)


@actor_required
def apikey_create(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    if not form.is_valid():
        return _apikey_page(request, form=form, status=400)
    try:
        key, raw = api_key_create(name=form.cleaned_data["name"], agent_id=form.cleaned_data["agent_id"],
                                  by=request.user, expires_at=form.cleaned_data["expires"])
    except ValidationError as exc:
        form.add_error(None, exc)
        return _apikey_page(request, form=form, status=400)
    # The raw key goes into this one response only: never into the session or a redirect.
    return _apikey_page(request, created=(key, raw))


@actor_required
def apikey_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=key_id)
    was_active = key.is_active
    api_key_revoke(key=key, by=request.user)
    if was_active:
        messages.success(request, f"API key {key} is revoked.")
    else:
        messages.info(request, f"API key {key} was already revoked.")
    return redirect("agents:apikey-list")
