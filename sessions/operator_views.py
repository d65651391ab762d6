"""Operator pages for pause and resume (a session, many sessions by filter, a definition, the fleet)
and the approvals inbox. Every change calls sessions.engine with By.operator(request.user) and a reason.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from django.contrib import messages
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from opscore_site.filters import page_filter
from sessions import engine
from sessions.bulk import run_each, skipped_text
from sessions.filters import SessionFilter
from sessions.forms import ApprovalDecisionForm
from sessions.models import FleetDispatch, Session, Task
from ui.forms import ReasonForm, reason_problem
from ui.permissions import actor_required, viewer_required
from ui.rendering import paginate, render_page
from workflows.models import WorkflowDefinition

BULK_LIMIT = 500
SS = Session.Status
# What a bulk pause or resume acts on, of the sessions matching the filter.
BULK_SOURCES = {"pause": (SS.PENDING, SS.RUNNING), "resume": (SS.PAUSED,)}


def operator_loop(request: HttpRequest) -> dict:
    """Context for every page: the fleet switch when it is off (the banner) and the approvals waiting (the nav)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # One query for both, since every page pays for it (a LEFT JOIN: the switch row may be missing = on).
    sql = (f"SELECT (SELECT COUNT(*) FROM {Task._meta.db_table} WHERE status = %s), f.paused_at "
           f"FROM (SELECT 1 AS one) o LEFT JOIN {FleetDispatch._meta.db_table} f ON f.id = 1")
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, [Task.Status.WAITING_APPROVAL])
            waiting, paused_at = cursor.fetchone()
    except DatabaseError:  # the database-down page must still render
        return {}
    # Off (rare): read the row through the ORM, which converts its time on every database.
    switch = FleetDispatch.objects.filter(pk=1).first() if paused_at is not None else None
    return {"fleet_off": switch, "approvals_waiting": waiting}


def _act(request: HttpRequest, change, *, done: str, back: str) -> HttpResponse:
    """Validate the reason, call the engine's `change(by, reason)`, say what happened, go `back`."""
    form = ReasonForm(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Nothing changed: {problem}")
        return redirect(back)
    try:
        change(engine.By.operator(request.user), form.cleaned_data["reason"])
    except engine.EngineError as exc:
        messages.error(request, f"Nothing changed: {exc}")
    else:
        messages.success(request, done)
    return redirect(back)


# --------------------------------------------------------------------------- one session


@actor_required
def session_pause(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = get_object_or_404(Session, pk=session_id)
    return _act(request, lambda by, reason: engine.session_pause(session=session, by=by, reason=reason),
                done="Session paused: its step in flight finishes, the next waits until you resume.",
                back=reverse("sessions:session-detail", kwargs={"session_id": session.pk}))


@actor_required
def session_resume(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = get_object_or_404(Session, pk=session_id)
    return _act(request, lambda by, reason: engine.session_resume(session=session, by=by, reason=reason),
                done="Session resumed.", back=reverse("sessions:session-detail", kwargs={"session_id": session.pk}))


# --------------------------------------------------------------------------- many sessions, by filter


def _bulk_targets(verb: str, params) -> tuple[object, SessionFilter, list[str]]:
    filters = page_filter(SessionFilter, params, Session.objects.all())
    if filters.errors:  # a bad filter value selects nothing: ignoring it would act on more than asked for
        return Session.objects.none(), filters, [f"filter '{name}': {' '.join(errors)}"
                                                 for name, errors in filters.errors.items()]
    return filters.qs.filter(status__in=BULK_SOURCES[verb]), filters, []


def _filter_params(filters: SessionFilter) -> dict:
    form = filters.form
    form.is_valid()
    return {name: form.data.get(name) for name in form.fields if form.cleaned_data.get(name)}


@viewer_required
def session_bulk(request: HttpRequest, verb: str) -> HttpResponse:
    """Pause (or resume) every session matching the sessions page's filter, after a confirmation page
    that shows how many."""
    if verb not in BULK_SOURCES:
        return render(request, "404.html", {"request_path": request.path}, status=404)
    if request.method == "POST":
        return _session_bulk_post(request, verb)
    sessions, filters, problems = _bulk_targets(verb, request.GET)
    params = _filter_params(filters)
    context = {
        "verb": verb, "count": sessions.count(), "problems": problems, "filters": params, "limit": BULK_LIMIT,
        "sample": sessions.select_related("agent").order_by("-created_at")[:20],
        "sources": BULK_SOURCES[verb], "back": reverse("sessions:session-list") + "?" + urlencode(params),
    }
    return render(request, "sessions/session_bulk_confirm.html", context)


@actor_required
def _session_bulk_post(request: HttpRequest, verb: str) -> HttpResponse:
    sessions, filters, problems = _bulk_targets(verb, request.POST)
    back = reverse("sessions:session-list") + "?" + urlencode(_filter_params(filters))
    form = ReasonForm(request.POST)
    if problems or (problem := reason_problem(form)):
        messages.error(request, "Nothing changed: " + "; ".join(problems or [problem]))
        return redirect(back)
    by, reason = engine.By.operator(request.user), form.cleaned_data["reason"] or f"bulk {verb} by operator"
    change = engine.session_pause if verb == "pause" else engine.session_resume
    batch = list(sessions.order_by("created_at", "id")[:BULK_LIMIT])
    done, skipped = run_each(batch, lambda session: change(session=session, by=by, reason=reason))
    text = f"{'Paused' if verb == 'pause' else 'Resumed'} {done} session(s)." + skipped_text(skipped)
    if len(batch) == BULK_LIMIT:
        text += f" At most {BULK_LIMIT} at once: run it again for the rest."
    (messages.warning if skipped else messages.success)(request, text)
    return redirect(back)


# --------------------------------------------------------------------------- a definition, the fleet


def _definition_change(request: HttpRequest, workflow_id: str, *, resume: bool) -> HttpResponse:
    definition = get_object_or_404(WorkflowDefinition, pk=workflow_id)
    with_sessions = request.POST.get("sessions") == "on"
    if resume:
        change = lambda by, reason: engine.definition_resume(  # noqa: E731
            definition=definition, by=by, reason=reason, resume_sessions=with_sessions)
        done = "Workflow resumed: its held sessions start" + (
            " and its paused sessions resume." if with_sessions else ".")
    else:
        change = lambda by, reason: engine.definition_pause(  # noqa: E731
            definition=definition, by=by, reason=reason, pause_sessions=with_sessions)
        done = "Workflow paused: new sessions are held pending" + (
            ", and its sessions are paused." if with_sessions else "; running sessions go on.")
    return _act(request, change, done=done,
                back=reverse("workflows:workflow-detail", kwargs={"workflow_id": definition.pk}))


@actor_required
def definition_pause(request: HttpRequest, workflow_id: str) -> HttpResponse:
    return _definition_change(request, workflow_id, resume=False)


@actor_required
def definition_resume(request: HttpRequest, workflow_id: str) -> HttpResponse:
    return _definition_change(request, workflow_id, resume=True)


@actor_required
def fleet_pause(request: HttpRequest) -> HttpResponse:
    return _act(request, lambda by, reason: engine.fleet_pause(by=by, reason=reason),
                done="Dispatch is off for the whole fleet: steps in flight finish, nothing new is sent.",
                back=reverse("sessions:dashboard"))


@actor_required
def fleet_resume(request: HttpRequest) -> HttpResponse:
    return _act(request, lambda by, reason: engine.fleet_resume(by=by, reason=reason),
                done="Dispatch is on again; the held work is being sent.", back=reverse("sessions:dashboard"))


# --------------------------------------------------------------------------- approvals inbox


@viewer_required
def approval_list(request: HttpRequest) -> HttpResponse:
    """Approval steps waiting for a decision, oldest first, with the previous step's result."""
    waiting = (Task.objects.filter(status=Task.Status.WAITING_APPROVAL).select_related("session")
               .order_by("created_at", "id"))
    page = paginate(request, waiting)
    rows = []
    for task in page:
        approvers = task.approvers
        refusal = engine.approval_refusal(approvers=approvers, by=engine.By.operator(request.user))
        rows.append({"task": task, "approvers": approvers, "refusal": refusal,
                     "previous": task.payload.get("previous_result") if isinstance(task.payload, dict) else None})
    return render_page(request, "sessions/approval_list.html", "sessions/_approval_rows.html",
                       {"page": page, "rows": rows, "query": ""})


@actor_required
def approval_decide(request: HttpRequest, task_id: uuid.UUID) -> HttpResponse:
    task = get_object_or_404(Task, pk=task_id)
    back = reverse("sessions:approval-list")
    form = ApprovalDecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Nothing decided: " + " ".join(f"{name}: {' '.join(errors)}"
                                                              for name, errors in form.errors.items()))
        return redirect(back)
    approve = form.cleaned_data["decision"] == "approve"
    try:
        engine.approval_decide(task=task, approve=approve, comment=form.cleaned_data["comment"],
                               by=engine.By.operator(request.user))
    except engine.EngineError as exc:
        messages.error(request, f"Nothing decided: {exc}")
    else:
        messages.success(request, f"{'Approved' if approve else 'Rejected'} '{task.name}' of session "
                                  f"{task.session_id}.")
    return redirect(back)
