"""Operator pages for what needs a person: the attention list, the failure groups' actions with a
preview, and quarantine/release from the agent page. Every change goes through the engine."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent
from agents.services import agent_drain
from sessions import engine
from sessions.attention import attention, failure_group
from sessions.bulk import run_each, skipped_text
from sessions.models import Task
from ui.forms import ReasonForm, RequiredReasonForm, reason_problem
from ui.permissions import actor_required, viewer_required
from ui.rendering import render_page

GROUP_ACTIONS = ("retry", "drain", "quarantine")
BULK_LIMIT = 500


@viewer_required
def attention_list(request: HttpRequest) -> HttpResponse:
    context = {"attention": attention(now=timezone.now())}
    return render_page(request, "sessions/attention_list.html", "sessions/_attention.html", context)


@viewer_required
def failure_group_action(request: HttpRequest, fingerprint: str, action: str) -> HttpResponse:
    """GET: what `action` would do to the group, with its count; POST: do it."""
    if action not in GROUP_ACTIONS:
        raise Http404(f"no group action '{action}'")
    if request.method == "POST":
        return _failure_group_post(request, fingerprint, action)
    group = failure_group(fingerprint)
    context = {"group": group, "action": action, "fingerprint": fingerprint, "limit": BULK_LIMIT,
               "back": reverse("sessions:failure-list")}
    if group is not None:
        context["sample"] = (Task.objects.filter(pk__in=group.task_ids[:20]).select_related("session")
                             .order_by("-updated_at", "id"))
        context["queued"] = Task.objects.filter(agent_id=group.agent_id, status=Task.Status.QUEUED).count()
    return render(request, "sessions/failure_group_confirm.html", context, status=200 if group else 404)


@actor_required
def _failure_group_post(request: HttpRequest, fingerprint: str, action: str) -> HttpResponse:
    back = reverse("sessions:failure-list")
    group = failure_group(fingerprint)
    if group is None:
        messages.error(request, "Nothing done: that group has no failures waiting any more.")
        return redirect(back)
    form = (RequiredReasonForm if action != "retry" else ReasonForm)(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Nothing done: {problem}")
        return redirect(back)
    reason = form.cleaned_data["reason"]
    by = engine.By.operator(request.user)
    if action == "retry":
        batch = list(Task.objects.filter(pk__in=group.task_ids[:BULK_LIMIT]).order_by("updated_at", "id"))
        done, skipped = run_each(batch, lambda task: engine.task_retry(
            task=task, by=by, reason=reason or f"group retry: {group.cause}"))
        text = f"Retried {done} task(s) of the group." + skipped_text(skipped)
        (messages.warning if skipped else messages.success)(request, text)
        return redirect(back)
    agent = get_object_or_404(Agent, pk=group.agent_id)
    if action == "drain":
        agent_drain(agent=agent, by_user=request.user, reason=reason)
        messages.success(request, f"Agent {agent.pk} is drained: no new task will be dispatched to it.")
    else:
        try:
            engine.agent_quarantine(agent=agent, by=by, reason=reason)
        except engine.EngineError as exc:
            messages.error(request, f"Not quarantined: {exc}")
            return redirect(back)
        messages.success(request, f"Agent {agent.pk} is quarantined; its queued tasks move to capable agents.")
    return redirect(back)


def _agent_action(request: HttpRequest, agent_id: str, *, form_class, verb: str, act, done: str) -> HttpResponse:
    """One operator action on an agent through the engine: a reason, the call, a message, back."""
    agent = get_object_or_404(Agent, pk=agent_id)
    form = form_class(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Not {verb}: {problem}")
    else:
        try:
            act(agent=agent, by=engine.By.operator(request.user), reason=form.cleaned_data["reason"])
        except engine.EngineError as exc:
            messages.error(request, f"Not {verb}: {exc}")
        else:
            messages.success(request, done.format(agent=agent.pk))
    if request.POST.get("next") == "attention":
        return redirect("sessions:attention")
    return redirect("agents:agent-detail", agent_id=agent.pk)


@actor_required
def agent_quarantine_view(request: HttpRequest, agent_id: str) -> HttpResponse:
    return _agent_action(request, agent_id, form_class=RequiredReasonForm, verb="quarantined",
                         act=engine.agent_quarantine,
                         done="Agent {agent} is quarantined until you release it; its queued tasks move to capable "
                              "agents where their steps allow.")


@actor_required
def agent_release_view(request: HttpRequest, agent_id: str) -> HttpResponse:
    return _agent_action(request, agent_id, form_class=ReasonForm, verb="released", act=engine.agent_release,
                         done="Agent {agent} is released and takes tasks again.")
