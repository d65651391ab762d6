"""The session engine: the one module that writes `Task.status`, `Session.status` and
`TaskAttempt.outcome`.

Here live the allowed moves of each (TASK_ALLOWED, SESSION_ALLOWED, ATTEMPT_ALLOWED), their
writers (`task_transition`, `session_transition`, `attempt_transition`: compare-and-set on
the row, plus a TaskEvent for tasks and sessions saying who caused it and why) and the
lifecycle: starting a session, completing, failing and retrying tasks, reacting to the
agents' reports, and the operators' cancel and retry. `sessions/dispatch.py` (claim,
fence, POST) and `sessions/sweeps.py` (the scheduler's passes) call these functions;
views, API views, admin actions, commands and jobs call them or those two modules.

How a session runs (DESIGN.md): the trigger creates the Session and its first Task
`queued` and enqueues the dispatch job in the same transaction (the ORM broker
makes the job exist if and only if the rows commit). The job claims the task and
fences the attempt in the database (TaskAttempt row, `reference_at`) and commits
before it POSTs to AgentKit, so a second delivery of the job cannot POST the same
attempt again. The agent's own reports then drive the task: `active` -> running,
`idle` -> completed, `error` -> failed. Failures retry with exponential backoff
and jitter; when attempts are exhausted the task is dead and the step's fallback
runs, or the session fails. The scheduler loop (`opscore_scheduler`) dispatches
due retries, times out overdue attempts and re-enqueues work whose job was lost.
"""

from __future__ import annotations

import contextvars
import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from opscore_site import metrics
from opscore_site.errors import ApplicationError
from sessions.models import Actor, Session, Task, TaskAttempt, TaskEvent
from workflows.models import WorkflowDefinition
from workflows.schema import StepSpec, WorkflowSpec, validate_definition

logger = logging.getLogger(__name__)

S = Task.Status
SS = Session.Status
Outcome = TaskAttempt.Outcome

# Lock order, everywhere: agent, then task, then session. A state report holds its agent row
# (the upsert) while the engine locks the agent's task in flight, so anything that locked a
# task or session first and then waited for its agent would deadlock with it.

TASK_ALLOWED: dict[str, set[str]] = {
    S.PENDING: {S.QUEUED, S.CANCELLED},
    S.QUEUED: {S.DISPATCHED, S.FAILED, S.CANCELLED},  # FAILED: its agent is gone
    S.DISPATCHED: {S.RUNNING, S.COMPLETED, S.FAILED, S.CANCELLED},
    S.RUNNING: {S.COMPLETED, S.FAILED, S.CANCELLED},
    S.FAILED: {S.RETRY_SCHEDULED, S.DEAD, S.QUEUED, S.CANCELLED},  # QUEUED: an operator's retry
    S.RETRY_SCHEDULED: {S.QUEUED, S.CANCELLED},
    S.DEAD: {S.QUEUED},  # an operator's retry
}
SESSION_ALLOWED: dict[str, set[str]] = {
    SS.PENDING: {SS.RUNNING, SS.COMPLETED, SS.FAILED, SS.CANCELLED},
    SS.RUNNING: {SS.COMPLETED, SS.FAILED, SS.CANCELLED},
    SS.FAILED: {SS.RUNNING},  # an operator's retry from the failed step
}
# An attempt is `sending` from its fence until AgentKit answers; every other outcome but
# `accepted` is final.
ATTEMPT_ALLOWED: dict[str, set[str]] = {
    Outcome.SENDING: {Outcome.ACCEPTED, Outcome.COMPLETED, Outcome.FAILED, Outcome.REJECTED, Outcome.CANCELLED},
    Outcome.ACCEPTED: {Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED},
}

MAX_BACKOFF_SECONDS = 3600.0
JOB_PATH = "sessions.tasks.send_task_job"


class EngineError(ApplicationError):
    """An engine call was refused; `code` is stable for API clients (the API answers 409)."""

    code = "engine_error"
    http_status = 409


class InvalidTransition(EngineError):
    """The status change is not allowed from the current status (or raced and lost)."""

    code = "invalid_transition"


class AgentUnavailable(EngineError):
    """The agent cannot take a session (deregistered)."""

    code = "agent_unavailable"


@dataclass(frozen=True)
class By:
    """Who causes a change: the system, an operator (a user), or an agent."""

    actor: str = Actor.SYSTEM
    user: Any = None
    agent_id: str = ""

    @classmethod
    def system(cls) -> By:
        return cls(Actor.SYSTEM)

    @classmethod
    def operator(cls, user) -> By:
        return cls(Actor.OPERATOR, user=user)

    @classmethod
    def agent(cls, agent_id: str) -> By:
        return cls(Actor.AGENT, agent_id=agent_id)


# --------------------------------------------------------------------------- transitions


# The events of one step (a task completed and the next one queued; a session started and its first
# task queued) go to the database in one INSERT at the end of the step (`_events_in_one_insert`).
_event_batch: contextvars.ContextVar[list[TaskEvent] | None] = contextvars.ContextVar("event_batch", default=None)


@contextmanager
def _events_in_one_insert():
    batch: list[TaskEvent] = []
    token = _event_batch.set(batch)
    try:
        yield
    finally:
        _event_batch.reset(token)
    if batch:  # only when the step did not raise: its transaction goes on, and so must its events
        TaskEvent.objects.bulk_create(batch)


def _event(*, session_id, task_id=None, old: str, new: str, by: By, reason: str, attempt=None) -> None:
    event = TaskEvent(
        session_id=session_id,
        task_id=task_id,
        old_status=old,
        new_status=new,
        actor=by.actor,
        actor_user=by.user if by.actor == Actor.OPERATOR else None,
        actor_agent_id=by.agent_id,
        attempt=attempt,
        reason=reason[:5000],
    )
    batch = _event_batch.get()
    if batch is None:
        event.save(force_insert=True)
    else:
        batch.append(event)


def task_transition(*, task: Task, to: str, by: By, reason: str = "", **changes: Any) -> Task:
    """Move `task` to `to` (compare-and-set) with `changes`, and record a TaskEvent.

    Entering `queued` also enqueues the task's dispatch job, in the caller's transaction.
    """
    old = task.status
    if to not in TASK_ALLOWED.get(old, set()):
        raise InvalidTransition(f"task {task.pk}: {old} -> {to} is not allowed")
    now = timezone.now()
    if to == S.QUEUED:
        changes["enqueued_at"] = now
    changed = Task.objects.filter(pk=task.pk, status=old).update(status=to, updated_at=now, **changes)
    if changed != 1:
        raise InvalidTransition(f"task {task.pk} changed underneath us (was {old})")
    for name, value in changes.items():
        setattr(task, name, value)
    task.status, task.updated_at = to, now
    _event(session_id=task.session_id, task_id=task.pk, old=old, new=to, by=by, reason=reason,
           attempt=task.attempt or None)
    metrics.task_moved(task=task, old=old, to=to, now=now,
                       queued_since=_queued_since(task) if to == S.DISPATCHED else None)
    if to == S.QUEUED:
        _send_job(task=task, now=now)
    return task


def _queued_since(task: Task) -> datetime | None:
    """When the task last entered `queued`, for the schedule-to-start metric: its creation for a first
    attempt (steps are created queued), else its newest `queued` event (a kick re-enqueues a waiting
    task without re-queueing it, so `enqueued_at` is not it)."""
    if not task.attempt or task.attempt <= 1:
        return task.created_at
    return (TaskEvent.objects.filter(task_id=task.pk, new_status=S.QUEUED).order_by("-created_at")
            .values_list("created_at", flat=True).first())


def session_transition(*, session: Session, to: str, by: By, reason: str = "", **changes: Any) -> Session:
    """Move `session` to `to` (compare-and-set) with `changes`, and record a TaskEvent."""
    old = session.status
    if to not in SESSION_ALLOWED.get(old, set()):
        raise InvalidTransition(f"session {session.pk}: {old} -> {to} is not allowed")
    now = timezone.now()
    if to in Session.TERMINAL:
        changes.setdefault("ended_at", now)
    if to == SS.RUNNING:
        changes.setdefault("started_at", session.started_at or now)
        changes.setdefault("ended_at", None)
    changed = Session.objects.filter(pk=session.pk, status=old).update(status=to, updated_at=now, **changes)
    if changed != 1:
        raise InvalidTransition(f"session {session.pk} changed underneath us (was {old})")
    for name, value in changes.items():
        setattr(session, name, value)
    session.status, session.updated_at = to, now
    _event(session_id=session.pk, old=old, new=to, by=by, reason=reason)
    metrics.session_moved(to=to)
    return session


def attempt_transition(*, task_id, number: int, to: str, **changes: Any) -> bool:
    """Move attempt `number` of the task to outcome `to` with `changes` (compare-and-set).

    Returns False and changes nothing when the attempt already has an outcome that cannot
    move to `to`: a report, a timeout, a cancel or AgentKit's answer closed it first. The
    attempt row is its own history (no TaskEvent).
    """
    sources = [old for old, allowed in ATTEMPT_ALLOWED.items() if to in allowed]
    if not sources:
        raise InvalidTransition(f"no attempt outcome moves to {to}")
    changed = (TaskAttempt.objects.filter(task_id=task_id, number=number, outcome__in=sources)
               .update(outcome=to, **changes))
    return changed == 1


# --------------------------------------------------------------------------- enqueueing


def task_enqueue(*, task: Task) -> None:
    """Enqueue the dispatch job of a task that is already `queued` again (a kick, a lost job).

    Inside the caller's transaction: with django-q2's ORM broker the job row is written on
    the same connection, so it exists if and only if the caller's rows commit.
    """
    now = timezone.now()
    Task.objects.filter(pk=task.pk).update(enqueued_at=now)
    task.enqueued_at = now
    _send_job(task=task, now=now)


def _send_job(*, task: Task, now: datetime) -> None:
    from django_q.tasks import async_task

    # Jobs take ids only. A dispatch's outcome is recorded on its TaskAttempt, so django-q2 keeps
    # no success row for the job (save=False: one INSERT less per step); a failed job is kept.
    async_task(JOB_PATH, str(task.pk), task_name=f"send-task-{task.pk}-{int(now.timestamp() * 1000)}", save=False)


def _payload_for(step: StepSpec, *, base: dict[str, Any] | None, previous_result: Any) -> dict[str, Any]:
    payload = dict(step.parameters)
    if base:
        payload.update(base)
    if previous_result is not None:
        payload["previous_result"] = previous_result
    return payload


def _new_task(*, session: Session, step: StepSpec, payload: dict[str, Any], by: By, after: Task | None,
              fallback_for: Task | None = None, reason: str) -> Task:
    """Create the step's Task already `queued` (one INSERT, its event and its job), after `after`.

    A session's tasks form one chain: a task is created only when the newest one finishes
    (completed: the next step; dead: the fallback), and an operator's retry re-queues a task
    instead of creating one. So the new sequence is `after.sequence + 1`, with no MAX() query;
    the (session, sequence) unique constraint guards the rule.
    """
    now = timezone.now()
    task = Task.objects.create(
        session=session,
        agent_id=session.agent_id,
        step_id=step.taskId,
        name=step.name or step.taskId,
        sequence=after.sequence + 1 if after is not None else 1,
        fallback_for=fallback_for,
        payload=payload,
        status=S.QUEUED,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
        max_retries=step.maxRetries,
        timeout_seconds=step.timeoutSeconds,
        retry_backoff_seconds=step.retryBackoffSeconds,
    )
    # The history reads as before: created (pending) and queued at once.
    _event(session_id=session.pk, task_id=task.pk, old=S.PENDING, new=S.QUEUED, by=by, reason=reason)
    _send_job(task=task, now=now)
    return task


# A session's spec snapshot never changes, so each worker parses it once, not at every step.
_SNAPSHOT_SPECS: dict[Any, WorkflowSpec] = {}
_SNAPSHOT_SPECS_MAX = 1024


def _spec_of(session: Session) -> WorkflowSpec:
    spec = _SNAPSHOT_SPECS.get(session.pk)
    if spec is None:
        spec = validate_definition(session.spec_snapshot)
        if len(_SNAPSHOT_SPECS) >= _SNAPSHOT_SPECS_MAX:
            _SNAPSHOT_SPECS.pop(next(iter(_SNAPSHOT_SPECS)))  # the oldest entry
        _SNAPSHOT_SPECS[session.pk] = spec
    return spec


# --------------------------------------------------------------------------- starting


def session_start(
    *,
    definition: WorkflowDefinition,
    agent: Agent,
    initial_payload: dict[str, Any] | None = None,
    by: By,
    idempotency_key: str | None = None,
    request_fingerprint: str = "",
) -> Session:
    """Create a Session for `agent` from `definition` and queue its first Task.

    The first step's parameters are merged with `initial_payload` (the payload wins).
    Raises AgentUnavailable for a deregistered agent, and IntegrityError when
    `idempotency_key` is already taken (the caller looks the session up).
    """
    if agent.deregistered_at is not None:
        raise AgentUnavailable(f"agent '{agent.pk}' is deregistered")
    spec = validate_definition(definition.spec)
    # No savepoint inside a caller's transaction (the trigger's): an error here ends it anyway.
    with transaction.atomic(savepoint=False), _events_in_one_insert():
        session = Session.objects.create(
            definition=definition,
            workflow_id=definition.pk,
            definition_revision=definition.revision,
            spec_snapshot=spec.to_document(),
            agent=agent,
            status=SS.PENDING,
            initial_payload=initial_payload,
            idempotency_key=idempotency_key,
            request_fingerprint=request_fingerprint,
            created_by=by.user if by.actor == Actor.OPERATOR else None,
        )
        _event(session_id=session.pk, old="", new=SS.PENDING, by=by, reason="session started")
        _new_task(session=session, step=spec.first_step, payload=_payload_for(
            spec.first_step, base=initial_payload, previous_result=None), by=by, after=None, reason="first step")
    return session


# --------------------------------------------------------------------------- outcomes


def _backoff_seconds(task: Task) -> float:
    base = task.retry_backoff_seconds * (2 ** max(task.attempt - 1, 0))
    return min(base * random.uniform(0.5, 1.5), MAX_BACKOFF_SECONDS)


def attempt_failed(*, task_id=None, task: Task | None = None, number: int, error: str, permanent: bool, by: By,
                   http_status: int | None = None) -> Task | None:
    """Attempt `number` of the task failed: retry with backoff, or mark it dead.

    Pass the `task` row when the caller holds its lock already, else its `task_id`. Does
    nothing when the task has moved on (a later attempt, a cancel): the fence. The agent is
    free again, so its next queued task is kicked in this transaction (its job answers busy
    while the agent is not idle; the agent's next `idle` report kicks again).
    """
    if task is None:
        task = Task.objects.select_for_update().filter(pk=task_id).first()
    if task is None or task.attempt != number or task.status not in Task.IN_FLIGHT:
        return None
    with _events_in_one_insert():
        _attempt_failed(task=task, number=number, error=error, permanent=permanent, by=by, http_status=http_status)
    return task


def _attempt_failed(*, task: Task, number: int, error: str, permanent: bool, by: By, http_status: int | None) -> None:
    now = timezone.now()
    attempt_transition(task_id=task.pk, number=number, to=Outcome.REJECTED if permanent else Outcome.FAILED,
                       error=error[:5000], http_status=http_status, ended_at=now)
    task_transition(task=task, to=S.FAILED, by=by, reason=error, last_error=error[:5000],
                    timeout_at=None, finished_at=now)
    retries_used = task.attempt - 1
    if not permanent and retries_used < task.max_retries:
        delay = _backoff_seconds(task)
        task_transition(task=task, to=S.RETRY_SCHEDULED, by=By.system(),
                        reason=f"retry {retries_used + 1} of {task.max_retries} in {delay:.1f}s",
                        next_attempt_at=now + timedelta(seconds=delay), finished_at=None)
    else:
        why = "permanent error" if permanent else f"retries exhausted ({task.max_retries})"
        _task_dead(task=task, reason=f"{why}: {error}")
    _kick_queued(agent_id=task.agent_id)


def task_give_up(*, task: Task, reason: str) -> None:
    """Fail a queued `task` that nothing will ever run (its agent is gone), without a retry:
    it is dead at once, and its step's fallback runs or the session fails."""
    task_transition(task=task, to=S.FAILED, by=By.system(), reason=reason, last_error=reason,
                    finished_at=timezone.now())
    _task_dead(task=task, reason=reason)


def _task_dead(*, task: Task, reason: str) -> None:
    task_transition(task=task, to=S.DEAD, by=By.system(), reason=reason)
    session = Session.objects.select_for_update().get(pk=task.session_id)
    if session.is_terminal:
        return
    spec = _spec_of(session)
    step = spec.step(task.step_id)
    if step.fallbackTaskId:
        fallback = spec.step(step.fallbackTaskId)
        _new_task(session=session, step=fallback, by=By.system(), after=task, fallback_for=task,
                  payload=_payload_for(fallback, base=session.initial_payload if fallback is spec.first_step else None,
                                       previous_result=None),
                  reason=f"fallback for dead step '{task.step_id}'")
    else:
        session_transition(session=session, to=SS.FAILED, by=By.system(),
                           reason=f"step '{task.step_id}' is dead", error=f"step '{task.step_id}': {reason}")


def _task_completed(*, task: Task, result: Any, by: By) -> Task | None:
    """Complete `task`; return the next step's task (queued, its job enqueued) or None."""
    now = timezone.now()
    attempt_transition(task_id=task.pk, number=task.attempt, to=Outcome.COMPLETED, ended_at=now)
    task_transition(task=task, to=S.COMPLETED, by=by, reason="agent reported idle", result=result,
                    finished_at=now, timeout_at=None)
    session = Session.objects.select_for_update().get(pk=task.session_id)
    if session.is_terminal:
        return None
    spec = _spec_of(session)
    step = spec.step(task.step_id)
    if step.nextTaskId:
        nxt = spec.step(step.nextTaskId)
        return _new_task(session=session, step=nxt, by=By.system(), after=task,
                         payload=_payload_for(nxt, base=None, previous_result=result),
                         reason=f"after step '{task.step_id}'")
    session_transition(session=session, to=SS.COMPLETED, by=By.system(),
                       reason=f"last step '{task.step_id}' completed", result=result, error="")
    return None


def _named_task_id(details: Any) -> str | None:
    if not isinstance(details, dict):
        return None
    for key in ("taskId", "task_id", "opscore_task_id"):
        value = details.get(key)
        if value:
            return str(value)
    return None


def on_agent_state(*, agent_id: str, state: str, details: Any, received_at: datetime, **_: Any) -> None:
    """React to a recorded state report (receiver of agents.signals.agent_state_reported).

    Runs inside the report's transaction, in a savepoint: if the engine fails here the
    report is still recorded (an agent's report is sent once and never retried), and the
    scheduler's timeout and lost-job sweeps recover the task.
    """
    try:
        with transaction.atomic(), _events_in_one_insert():
            _apply_report(agent_id=agent_id, state=state, details=details, received_at=received_at)
    except Exception:
        logger.exception("engine could not apply a %s report of agent %s; the sweeps will recover",
                         state, agent_id)


def _apply_report(*, agent_id: str, state: str, details: Any, received_at: datetime) -> None:
    """A report counts for the task in flight only when it was received after that
    attempt's reference time and, if it names a task id, names this task."""
    task = (Task.objects.select_for_update()
            .filter(agent_id=agent_id, status__in=Task.IN_FLIGHT).first())
    by = By.agent(agent_id)
    if task is not None and task.reference_at is not None and received_at > task.reference_at:
        named = _named_task_id(details)
        if named is None or named == str(task.pk):
            if state == Agent.State.ACTIVE and task.status == S.DISPATCHED:
                task_transition(task=task, to=S.RUNNING, by=by, reason="agent reported active",
                                started_at=received_at)
            elif state == Agent.State.IDLE:
                result = details.get("result") if isinstance(details, dict) else None
                if _task_completed(task=task, result=result, by=by) is not None:
                    return  # the next step's job is enqueued already: no second job to kick
                task = None
            elif state == Agent.State.ERROR:
                attempt_failed(task=task, number=task.attempt, error=_error_text(details), permanent=False,
                               by=by)
                task = None
    if state == Agent.State.IDLE and task is None:
        _kick_queued(agent_id=agent_id)


def _error_text(details: Any) -> str:
    if isinstance(details, dict):
        code = details.get("error_code")
        message = details.get("message") or details.get("error")
        if code or message:
            return f"agent reported error: {code + ': ' if code else ''}{message or ''}".strip()
        return f"agent reported error: {details}"[:2000]
    return "agent reported error"


def _kick_queued(*, agent_id: str) -> None:
    """The agent is idle: enqueue its oldest queued task, if it has one (a drained agent takes none)."""
    task = (Task.objects.filter(agent_id=agent_id, status=S.QUEUED, agent__drained_at__isnull=True)
            .exclude(session__status__in=Session.TERMINAL)
            .order_by("created_at").only("pk", "enqueued_at").first())
    if task is not None:
        task_enqueue(task=task)


# --------------------------------------------------------------------------- operator actions


def session_cancel(*, session: Session, by: By, reason: str = "") -> Session:
    """Cancel a session and its unfinished tasks. A late report for them changes nothing.

    A task cancelled in flight still holds its agent until the agent reports again or the
    attempt's deadline passes (`dispatch._held_by_cancelled_task`), so that late report cannot
    complete the next task sent to the agent.
    """
    with transaction.atomic():
        tasks = list(Task.objects.select_for_update().filter(session=session).exclude(status__in=Task.TERMINAL))
        session = Session.objects.select_for_update().get(pk=session.pk)
        if session.is_terminal:
            raise InvalidTransition(f"session {session.pk} is already {session.status}")
        now = timezone.now()
        freed = {task.agent_id for task in tasks if task.status in Task.IN_FLIGHT}
        for task in tasks:
            if task.status in Task.IN_FLIGHT:
                attempt_transition(task_id=task.pk, number=task.attempt, to=Outcome.CANCELLED, ended_at=now)
            if S.CANCELLED in TASK_ALLOWED.get(task.status, set()):
                task_transition(task=task, to=S.CANCELLED, by=by, reason=reason or "session cancelled",
                                finished_at=now, timeout_at=None, next_attempt_at=None)
        session_transition(session=session, to=SS.CANCELLED, by=by, reason=reason or "cancelled")
        # The agents this session held take their next queued task (the job answers busy while
        # the cancelled attempt may still hold its agent; the agent's next report kicks again).
        for agent_id in sorted(freed):
            _kick_queued(agent_id=agent_id)
    return session


def task_retry(*, task: Task, by: By, reason: str = "") -> Task:
    """An operator's retry of a dead or failed task: a fresh round of attempts.

    A failed session comes back to running when its failed task is retried.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task.pk)
        session = Session.objects.select_for_update().get(pk=task.session_id)
        if refusal := task.retry_refusal(session):
            raise InvalidTransition(refusal)
        if session.status == SS.FAILED:  # first: the task's job may run at once (sync mode)
            session_transition(session=session, to=SS.RUNNING, by=by, reason=reason or "retried by operator",
                               error="")
        # A retry starts a fresh budget of max_retries on top of the attempts so far.
        task_transition(task=task, to=S.QUEUED, by=by, reason=reason or "retried by operator",
                        max_retries=task.attempt + task.max_retries, last_error=task.last_error,
                        next_attempt_at=None, finished_at=None)
    return task


def session_retry(*, session: Session, by: By, reason: str = "") -> Task:
    """Retry a failed session from its failed step (the latest dead or failed task)."""
    failed = (Task.objects.filter(session=session, status__in=Task.NEEDS_DECISION)
              .order_by("-sequence").first())
    if session.status != SS.FAILED or failed is None:
        raise InvalidTransition(f"session {session.pk} is {session.status}; only a failed session can be retried")
    return task_retry(task=failed, by=by, reason=reason or "session retried by operator")
