"""Operator pages: dashboard, agents with their tasks, sessions, the failures queue, starting a session.

Every change goes through sessions.engine with By.operator(request.user) and a reason.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.db.models import CharField, OuterRef, Subquery, UUIDField
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme

from agents.filters import AgentFilter
from agents.models import Agent
from sessions import charts, engine
from sessions.bulk import run_each, skipped_text
from opscore_site.filters import page_filter
from sessions.filters import FailureFilter, SessionFilter
from sessions.forms import SessionStartForm
from sessions.models import Session, Task, TaskEvent
from sessions.attention import failure_groups
from sessions.overview import fleet_counts
from ui.forms import ReasonForm, RequiredReasonForm, reason_problem
from ui.permissions import actor_required, viewer_required
from ui.rendering import paginate, query_without_page, render_page
from workflows.models import WorkflowDefinition
from workflows.schema import main_path

THROUGHPUT_MINUTES = 15
BULK_RETRY_LIMIT = 500
AGENT_CHOICES_LIMIT = 200
HISTORY_LIMIT = 100
RECENT_SESSIONS = 20


def progress(session: Session, completed_steps: set[str]) -> dict:
    """Completed steps of the main path, for the progress bar."""
    path = main_path(session.spec_snapshot or {})
    done = len([step for step in path if step in completed_steps])
    total = len(path) or 1
    if session.status == Session.Status.COMPLETED:
        done = total
    return {"done": done, "total": total, "percent": round(100 * done / total)}


# --------------------------------------------------------------------------- dashboard


def throughput_window_start(now):
    """Where the dashboard's rate window starts: THROUGHPUT_MINUTES back, but no earlier than the first
    session ever started (nothing can have completed before it), and at least a minute back.

    A fresh installation 90 s old is measured over 90 s, not over 15 minutes of which 13 held no data.
    """
    window_start = now - timedelta(minutes=THROUGHPUT_MINUTES)
    first = Session.objects.order_by("created_at").values_list("created_at", flat=True).first()  # on an index
    if first is not None and first > window_start:
        window_start = min(first, now - timedelta(minutes=1))
    return window_start


@viewer_required
def dashboard(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    counts = fleet_counts(now=now)
    by_state, by_status, failures = (counts["agents_by_state"], counts["sessions_24h_by_status"],
                                     counts["failures_by_status"])
    agents = [{"state": state, "count": by_state.get(state, 0)} for state in Agent.State.values]
    window_start = throughput_window_start(now)
    completed = Task.objects.filter(status=Task.Status.COMPLETED, finished_at__gte=window_start).count()
    minutes = (now - window_start).total_seconds() / 60
    context = {
        "agents": agents,
        "agents_unknown": by_state.get(None, 0),
        "agents_total": sum(by_state.values()),
        "agents_stale": counts["agents_stale"],
        "agents_drained": counts["agents_drained"],
        "agents_deregistered": counts["agents_deregistered"],
        "sessions": [{"status": s, "count": by_status.get(s, 0)} for s in Session.Status.values],
        "sessions_total": sum(by_status.values()),
        "failures_failed": failures.get(Task.Status.FAILED, 0),
        "failures_dead": failures.get(Task.Status.DEAD, 0),
        "failures_total": sum(failures.values()),
        "completed_recent": completed,
        "throughput_minutes": minutes,
        "throughput_window": minutes_text(minutes),
        "tasks_per_minute": completed / minutes,
        **charts.dashboard_charts(now=now, window=charts.window_of(request.GET.get("window"))),
        "agents_quarantined": counts["agents_quarantined"],
        "tasks_waiting": counts["tasks_waiting"],
    }
    return render_page(request, "sessions/dashboard.html", "sessions/_dashboard.html", context)


def minutes_text(minutes: float) -> str:
    """'15 minutes', '2.5 minutes', '1 minute': the rate's window as the dashboard says it."""
    shown = f"{minutes:.0f}" if minutes >= 10 else f"{minutes:.1f}".removesuffix(".0")
    return f"{shown} minute" if shown == "1" else f"{shown} minutes"


# --------------------------------------------------------------------------- agents, with their tasks


def _with_task_in_flight(queryset):
    # Each annotation names its output_field: without it SQLite hands a UUID back as 32-character hex
    # text (PostgreSQL as a UUID), which <uuid:...> refuses when the row links to the session.
    in_flight = Task.objects.filter(agent_id=OuterRef("pk"), status__in=Task.IN_FLIGHT)
    return queryset.annotate(
        in_flight_task_id=Subquery(in_flight.values("pk")[:1], output_field=UUIDField()),
        in_flight_session_id=Subquery(in_flight.values("session_id")[:1], output_field=UUIDField()),
        in_flight_step=Subquery(in_flight.values("step_id")[:1], output_field=CharField()),
    )


@viewer_required
def agent_list(request: HttpRequest) -> HttpResponse:
    filters = page_filter(AgentFilter, request.GET, Agent.objects.all(), registered_by_default=True)
    page = paginate(request, _with_task_in_flight(filters.qs).order_by("id"))
    context = {"form": filters.form, "page": page, "query": query_without_page(request)}
    return render_page(request, "agents/agent_list.html", "agents/_agent_rows.html", context)


@viewer_required
def agent_detail(request: HttpRequest, agent_id: str) -> HttpResponse:
    agent = get_object_or_404(Agent.objects.select_related("drained_by", "quarantined_by"), pk=agent_id)
    history = list(agent.state_history.all()[:HISTORY_LIMIT])
    timeline, time_in_state = charts.agent_timeline(agent=agent, history=history, now=timezone.now())
    context = {
        "agent": agent,
        "is_stale": agent.is_stale(),
        "history": history,
        "timeline": timeline,
        "time_in_state": time_in_state,
        "in_flight": Task.objects.filter(agent=agent, status__in=Task.IN_FLIGHT).select_related("session").first(),
        "queued_count": Task.objects.filter(agent=agent, status=Task.Status.QUEUED).count(),
        "sessions": Session.objects.filter(agent=agent).order_by("-created_at")[:RECENT_SESSIONS],
        "quarantine_events": agent.quarantine_events.select_related("actor_user")[:10],
    }
    return render_page(request, "agents/agent_detail.html", "agents/_agent_detail.html", context)


# --------------------------------------------------------------------------- sessions


@viewer_required
def session_list(request: HttpRequest) -> HttpResponse:
    filters = page_filter(SessionFilter, request.GET, Session.objects.all())
    sessions = (filters.qs.select_related("agent")
                .only("id", "workflow_id", "agent__id", "agent__name", "status", "created_at", "ended_at",
                      "spec_snapshot", "error")
                .order_by("-created_at"))
    page = paginate(request, sessions)
    # The page's tasks in one query: each session's task count and its completed step ids (the
    # detail's rule). Not a Count() annotation: that grouped every session with every task
    # before the page's LIMIT, so the list slowed as history grew (49 ms at 7,200 sessions).
    completed: dict = defaultdict(set)
    task_counts: dict = defaultdict(int)
    for session_id, step_id, status in (Task.objects.filter(session__in=[s.pk for s in page]).order_by()
                                        .values_list("session_id", "step_id", "status")):
        task_counts[session_id] += 1
        if status == Task.Status.COMPLETED:
            completed[session_id].add(step_id)
    for s in page:
        s.task_count = task_counts[s.pk]
    rows = [(s, progress(s, completed[s.pk])) for s in page]
    context = {"form": filters.form, "page": page, "rows": rows, "query": query_without_page(request)}
    return render_page(request, "sessions/session_list.html", "sessions/_session_rows.html", context)


def _session_or_404(session_id: uuid.UUID) -> Session:
    return get_object_or_404(Session.objects.select_related("agent", "definition", "created_by"), pk=session_id)


@viewer_required
def session_detail(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = _session_or_404(session_id)
    tasks = list(session.tasks.order_by("sequence").select_related("fallback_for")
                 .prefetch_related("attempts", "events__actor_user"))
    context = {
        "session": session,
        "tasks": tasks,
        "progress": progress(session, {t.step_id for t in tasks if t.status == Task.Status.COMPLETED}),
        "session_events": TaskEvent.objects.filter(session=session, task__isnull=True)
        .select_related("actor_user").order_by("created_at", "id"),
        "retry_task": next((t for t in reversed(tasks) if t.status in Task.NEEDS_DECISION), None),
        "timeline": charts.session_timeline(session=session, tasks=tasks, now=timezone.now()) if tasks else None,
    }
    return render_page(request, "sessions/session_detail.html", "sessions/_session_detail.html", context)


def _back(request: HttpRequest, default: str) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect(default)


@actor_required
def session_cancel(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = _session_or_404(session_id)
    form = RequiredReasonForm(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Not cancelled: {problem}")
        return redirect("sessions:session-detail", session_id=session.pk)
    try:
        engine.session_cancel(session=session, by=engine.By.operator(request.user),
                              reason=form.cleaned_data["reason"])
    except engine.InvalidTransition as exc:
        messages.error(request, f"Not cancelled: {exc}")
    else:
        messages.success(request, "Session cancelled.")
    return redirect("sessions:session-detail", session_id=session.pk)


@actor_required
def session_retry(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = _session_or_404(session_id)
    form = ReasonForm(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Not retried: {problem}")
        return redirect("sessions:session-detail", session_id=session.pk)
    try:
        task = engine.session_retry(session=session, by=engine.By.operator(request.user),
                                    reason=form.cleaned_data["reason"])
    except engine.InvalidTransition as exc:
        messages.error(request, f"Not retried: {exc}")
    else:
        messages.success(request, f"Retrying from step '{task.step_id}'.")
    return redirect("sessions:session-detail", session_id=session.pk)


@actor_required
def task_retry(request: HttpRequest, task_id: uuid.UUID) -> HttpResponse:
    task = get_object_or_404(Task, pk=task_id)
    back = reverse("sessions:session-detail", kwargs={"session_id": task.session_id})
    form = ReasonForm(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Not retried: {problem}")
        return _back(request, back)
    try:
        engine.task_retry(task=task, by=engine.By.operator(request.user), reason=form.cleaned_data["reason"])
    except engine.InvalidTransition as exc:
        messages.error(request, f"Not retried: {exc}")
    else:
        messages.success(request, f"Task '{task.step_id}' of session {task.session_id} is queued again.")
    return _back(request, back)


# --------------------------------------------------------------------------- failures queue

GROUPS_SHOWN = 20


def _failures(params) -> tuple[FailureFilter, object]:
    filters = page_filter(FailureFilter, params, Task.objects.all())
    return filters, filters.qs


@viewer_required
def failure_list(request: HttpRequest) -> HttpResponse:
    filters, tasks = _failures(request.GET)
    tasks = tasks.select_related("session").only(
        "id", "step_id", "name", "status", "attempt", "last_error", "updated_at", "finished_at", "agent_id",
        "session__id", "session__workflow_id", "session__status",
    ).order_by("-updated_at", "id")
    page = paginate(request, tasks)
    context = {"form": filters.form, "page": page, "query": query_without_page(request),
               "filters": _filter_params(filters), "groups": failure_groups(tasks)[:GROUPS_SHOWN]}
    return render_page(request, "sessions/failure_list.html", "sessions/_failure_rows.html", context)


def _bulk_targets(params) -> tuple[object, str, list[str], FailureFilter]:
    """The tasks a bulk retry is about: the selected ids, or all matching the filter.

    A filter with a bad value selects nothing: ignoring it would retry more than the operator asked for.
    """
    filters, tasks = _failures(params)
    problems: list[str] = []
    if params.get("scope") == "all":
        if filters.errors:
            problems = [f"filter '{name}': {' '.join(errors)}" for name, errors in filters.errors.items()]
            return Task.objects.none(), "all", problems, filters
        return tasks, "all", problems, filters
    ids = []
    for raw in params.getlist("ids"):
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            problems.append(f"'{raw}' is not a task id")
    # Every selected task goes to the engine: one it refuses (retried meanwhile) is reported as skipped.
    return Task.objects.filter(pk__in=ids), "selected", problems, filters


def _filter_params(filters: FailureFilter) -> dict:
    """The filter values in force (valid and not empty), as they were typed."""
    form = filters.form
    form.is_valid()
    return {name: form.data.get(name) for name in form.fields if form.cleaned_data.get(name)}


@viewer_required
def failure_retry(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _failure_retry_post(request)
    tasks, scope, problems, filters = _bulk_targets(request.GET)
    count = tasks.count()
    context = {
        "count": count,
        "scope": scope,
        "problems": problems,
        "sample": tasks.select_related("session").order_by("-updated_at", "id")[:20],
        "ids": request.GET.getlist("ids"),
        "filters": _filter_params(filters),
        "limit": BULK_RETRY_LIMIT,
        "back": reverse("sessions:failure-list") + "?" + urlencode(_filter_params(filters)),
        "form": ReasonForm(),
    }
    return render(request, "sessions/failure_confirm.html", context)


@actor_required
def _failure_retry_post(request: HttpRequest) -> HttpResponse:
    tasks, scope, problems, filters = _bulk_targets(request.POST)
    back = reverse("sessions:failure-list") + "?" + urlencode(_filter_params(filters))
    if filters.errors and scope == "all":
        messages.error(request, "Nothing retried: " + "; ".join(problems))
        return redirect(back)
    form = ReasonForm(request.POST)
    if problem := reason_problem(form):
        messages.error(request, f"Nothing retried: {problem}")
        return redirect(back)
    reason = form.cleaned_data["reason"] or f"bulk retry ({scope}) by operator"
    by = engine.By.operator(request.user)
    batch = list(tasks.order_by("updated_at", "id")[:BULK_RETRY_LIMIT])
    retried, skipped = run_each(batch, lambda task: engine.task_retry(task=task, by=by, reason=reason))
    text = f"Retried {retried} task(s)." + skipped_text(skipped)
    if len(batch) == BULK_RETRY_LIMIT and scope == "all":
        text += f" At most {BULK_RETRY_LIMIT} are retried at once: run it again for the rest."
    if problems:
        text += " Ignored: " + "; ".join(problems[:5])
    if skipped:
        messages.warning(request, text)
    else:
        messages.success(request, text)
    return redirect(back)


# --------------------------------------------------------------------------- starting a session


@viewer_required
def session_start(request: HttpRequest, workflow_id: str) -> HttpResponse:
    definition = get_object_or_404(WorkflowDefinition, pk=workflow_id)
    if request.method == "POST":
        return _session_start_post(request, definition)
    form = SessionStartForm(initial={"agent": request.GET.get("agent", "")})
    return _start_page(request, definition, form)


def _start_page(request, definition, form, status=200) -> HttpResponse:
    agents = (Agent.objects.active().filter(drained_at__isnull=True).order_by("id")
              .values_list("id", "state")[:AGENT_CHOICES_LIMIT])
    return render(request, "sessions/session_start.html",
                  {"definition": definition, "form": form, "agents": agents}, status=status)


@actor_required
def _session_start_post(request: HttpRequest, definition: WorkflowDefinition) -> HttpResponse:
    form = SessionStartForm(request.POST)
    if not form.is_valid():
        return _start_page(request, definition, form, status=400)
    try:
        session = engine.session_start(definition=definition, agent=form.cleaned_data["agent"],
                                       initial_payload=form.cleaned_data["initial_payload"],
                                       by=engine.By.operator(request.user))
    except engine.EngineError as exc:
        form.add_error("agent", str(exc))
        return _start_page(request, definition, form, status=400)
    messages.success(request, f"Session started for agent {session.agent_id}.")
    if session.agent.is_drained:
        messages.warning(request, f"Agent {session.agent_id} is drained: the first task waits until it is undrained.")
    return redirect("sessions:session-detail", session_id=session.pk)
