"""The session engine: the one module that changes the status of a Task or a Session.

Views, API views, admin actions, commands, jobs and the scheduler call the public
functions here; nothing else writes `status`. Every change is a compare-and-set on
the row plus a TaskEvent saying who caused it (agent, operator, system) and why.

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

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents import agentkit
from agents.models import Agent
from opscore_site.errors import ApplicationError
from sessions.models import Actor, Session, Task, TaskAttempt, TaskEvent
from workflows.models import WorkflowDefinition
from workflows.schema import StepSpec, validate_definition

logger = logging.getLogger(__name__)

S = Task.Status
SS = Session.Status

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


def _event(*, session_id, task_id=None, old: str, new: str, by: By, reason: str, attempt=None) -> None:
    TaskEvent.objects.create(
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
    if to == S.QUEUED:
        _send_job(task=task, now=now)
    return task


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
    return session


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

    # Jobs take ids only.
    async_task(JOB_PATH, str(task.pk), task_name=f"send-task-{task.pk}-{int(now.timestamp() * 1000)}")


def _payload_for(step: StepSpec, *, base: dict[str, Any] | None, previous_result: Any) -> dict[str, Any]:
    payload = dict(step.parameters)
    if base:
        payload.update(base)
    if previous_result is not None:
        payload["previous_result"] = previous_result
    return payload


def _new_task(*, session: Session, step: StepSpec, payload: dict[str, Any], by: By,
              fallback_for: Task | None = None, reason: str) -> Task:
    sequence = (session.tasks.order_by("-sequence").values_list("sequence", flat=True).first() or 0) + 1
    task = Task.objects.create(
        session=session,
        agent_id=session.agent_id,
        step_id=step.taskId,
        name=step.name or step.taskId,
        sequence=sequence,
        fallback_for=fallback_for,
        payload=payload,
        status=S.PENDING,
        max_retries=step.maxRetries,
        timeout_seconds=step.timeoutSeconds,
        retry_backoff_seconds=step.retryBackoffSeconds,
    )
    task_transition(task=task, to=S.QUEUED, by=by, reason=reason)
    return task


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
    with transaction.atomic():
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
            spec.first_step, base=initial_payload, previous_result=None), by=by, reason="first step")
    return session


# --------------------------------------------------------------------------- dispatching


@dataclass
class DispatchResult:
    outcome: str  # "dispatched", "skipped", "busy", "unavailable", "failed"
    detail: str = ""


def _claim(task_id) -> tuple[Task, TaskAttempt] | DispatchResult:
    """Lock the task and its agent, check the agent, and fence a new attempt. Commits."""
    agent_id = Task.objects.filter(pk=task_id, status=S.QUEUED).values_list("agent_id", flat=True).first()
    if agent_id is None:
        return DispatchResult("skipped", "no such queued task")
    with transaction.atomic():
        # Lock order everywhere: agent, then task, then session. A state report holds the
        # agent row (its upsert) while it touches the agent's tasks; locking the task first
        # here would deadlock with it. The agent lock also serialises dispatches to one agent.
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        task = Task.objects.select_for_update().filter(pk=task_id).first()
        if task is None or task.status != S.QUEUED:
            return DispatchResult("skipped", f"task is {task.status if task else 'gone'}")
        session = Session.objects.select_for_update().get(pk=task.session_id)
        if session.is_terminal:
            # A step queued while its session was being cancelled: it must not wait forever.
            task_transition(task=task, to=S.CANCELLED, by=By.system(), reason=f"session is {session.status}",
                            finished_at=timezone.now())
            return DispatchResult("skipped", f"session is {session.status}")
        if agent.deregistered_at is not None:
            # Nothing will ever run it: fail it now so the fallback runs or the session fails.
            reason = f"agent '{agent.pk}' is deregistered"
            task_transition(task=task, to=S.FAILED, by=By.system(), reason=reason, last_error=reason,
                            finished_at=timezone.now())
            _task_dead(task=task, reason=reason)
            return DispatchResult("unavailable", reason)
        if agent.drained_at is not None:
            return DispatchResult("unavailable", "agent is drained")
        if agent.state != Agent.State.IDLE:
            return DispatchResult("busy", f"agent is {agent.state or 'unknown'}")
        if Task.objects.filter(agent_id=agent.pk, status__in=Task.IN_FLIGHT).exists():
            return DispatchResult("busy", "agent has a task in flight")
        now = timezone.now()
        held = _held_by_cancelled_task(agent=agent, now=now)
        if held is not None:
            return DispatchResult("busy", f"agent may still be working on cancelled task {held.pk}")
        number = task.attempt + 1
        try:
            with transaction.atomic():
                attempt = TaskAttempt.objects.create(task=task, number=number, reference_at=now)
                task_transition(
                    task=task, to=S.DISPATCHED, by=By.system(), reason=f"attempt {number} sent to AgentKit",
                    attempt=number, reference_at=now, dispatched_at=now, started_at=None,
                    timeout_at=now + timedelta(seconds=task.timeout_seconds), next_attempt_at=None,
                )
        except IntegrityError:
            # The one-in-flight constraint or the attempt fence: another worker won.
            return DispatchResult("busy", "another dispatch won the race")
        if session.status == SS.PENDING:
            session_transition(session=session, to=SS.RUNNING, by=By.system(), reason="first task dispatched")
    return task, attempt


def _held_by_cancelled_task(*, agent: Agent, now: datetime) -> Task | None:
    """A task cancelled in flight that its agent may still be working on, or None.

    An agent reports only after its work (AGENTKIT.md section 4), so cancelling a task
    does not free the agent: its late `active`/`idle` would be taken for the outcome of
    the next task sent to it. The cancelled attempt holds the agent until the agent
    reports a state received after the attempt went out, or the attempt's deadline
    passes (a lost forward), unless AgentKit refused the POST (it never reached the agent).
    """
    # One filter() call: every condition is about the same (latest) attempt row.
    candidates = Task.objects.filter(
        Q(attempts__http_status__isnull=True) | Q(attempts__http_status__lt=300),
        agent_id=agent.pk, status=S.CANCELLED, attempts__number=F("attempt"),
        attempts__outcome=TaskAttempt.Outcome.CANCELLED,
    )
    if agent.state_received_at is not None:
        candidates = candidates.filter(reference_at__gte=agent.state_received_at)
    for task in candidates.only("pk", "reference_at", "timeout_seconds"):
        if task.reference_at + timedelta(seconds=task.timeout_seconds) > now:
            return task
    return None


def task_dispatch(*, task_id) -> DispatchResult:
    """The dispatch job's body: claim, fence and commit, then POST to AgentKit once."""
    claimed = _claim(task_id)
    if isinstance(claimed, DispatchResult):
        logger.info("dispatch of task %s: %s (%s)", task_id, claimed.outcome, claimed.detail)
        return claimed
    task, attempt = claimed
    session_id = str(task.session_id)
    message = agentkit.dispatch_message(
        task_name=task.step_id, task_parameters=task.payload, session_id=session_id,
        task_id=str(task.pk), attempt=attempt.number,
    )
    try:
        accepted = agentkit.run_task(agent_id=task.agent_id, message=message)
    except agentkit.AgentKitError as exc:
        with transaction.atomic():
            _attempt_failed(task_id=task.pk, number=attempt.number, error=exc.message,
                            permanent=exc.permanent, http_status=exc.http_status, by=By.system())
            # Cancelled meanwhile: keep AgentKit's answer (a refusal means the agent never got it).
            TaskAttempt.objects.filter(pk=attempt.pk, outcome=TaskAttempt.Outcome.CANCELLED).update(
                http_status=exc.http_status, error=exc.message[:5000])
        return DispatchResult("failed", exc.message)
    # Only the fence row changes here: an instant agent may already have completed the task
    # (then only AgentKit's status is added to the attempt it already closed).
    if not TaskAttempt.objects.filter(pk=attempt.pk, outcome=TaskAttempt.Outcome.SENDING).update(
            outcome=TaskAttempt.Outcome.ACCEPTED, http_status=accepted.http_status):
        TaskAttempt.objects.filter(pk=attempt.pk, http_status__isnull=True).update(http_status=accepted.http_status)
    return DispatchResult("dispatched")


# --------------------------------------------------------------------------- outcomes


def _backoff_seconds(task: Task) -> float:
    base = task.retry_backoff_seconds * (2 ** max(task.attempt - 1, 0))
    return min(base * random.uniform(0.5, 1.5), MAX_BACKOFF_SECONDS)


def _attempt_failed(*, task_id, number: int, error: str, permanent: bool, by: By,
                    http_status: int | None = None, outcome: str = TaskAttempt.Outcome.FAILED) -> Task | None:
    """Attempt `number` of the task failed: retry with backoff, or mark it dead.

    Does nothing when the task has moved on (a later attempt, a cancel): the fence.
    """
    task = Task.objects.select_for_update().filter(pk=task_id).first()
    if task is None or task.attempt != number or task.status not in Task.IN_FLIGHT:
        return None
    now = timezone.now()
    TaskAttempt.objects.filter(task=task, number=number).update(
        outcome=TaskAttempt.Outcome.REJECTED if permanent else outcome,
        error=error[:5000], http_status=http_status, ended_at=now,
    )
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
    return task


def _task_dead(*, task: Task, reason: str) -> None:
    task_transition(task=task, to=S.DEAD, by=By.system(), reason=reason)
    session = Session.objects.select_for_update().get(pk=task.session_id)
    if session.is_terminal:
        return
    spec = validate_definition(session.spec_snapshot)
    step = spec.step(task.step_id)
    if step.fallbackTaskId:
        fallback = spec.step(step.fallbackTaskId)
        _new_task(session=session, step=fallback, by=By.system(), fallback_for=task,
                  payload=_payload_for(fallback, base=session.initial_payload if fallback is spec.first_step else None,
                                       previous_result=None),
                  reason=f"fallback for dead step '{task.step_id}'")
    else:
        session_transition(session=session, to=SS.FAILED, by=By.system(),
                           reason=f"step '{task.step_id}' is dead", error=f"step '{task.step_id}': {reason}")


def _task_completed(*, task: Task, result: Any, by: By) -> Task | None:
    """Complete `task`; return the next step's task (queued, its job enqueued) or None."""
    now = timezone.now()
    TaskAttempt.objects.filter(task=task, number=task.attempt).update(
        outcome=TaskAttempt.Outcome.COMPLETED, ended_at=now
    )
    task_transition(task=task, to=S.COMPLETED, by=by, reason="agent reported idle", result=result,
                    finished_at=now, timeout_at=None)
    session = Session.objects.select_for_update().get(pk=task.session_id)
    if session.is_terminal:
        return None
    spec = validate_definition(session.spec_snapshot)
    step = spec.step(task.step_id)
    if step.nextTaskId:
        nxt = spec.step(step.nextTaskId)
        return _new_task(session=session, step=nxt, by=By.system(),
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
        with transaction.atomic():
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
                error = _error_text(details)
                _attempt_failed(task_id=task.pk, number=task.attempt, error=error, permanent=False, by=by)
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
    attempt's deadline passes (`_held_by_cancelled_task`), so that late report cannot
    complete the next task sent to the agent.
    """
    with transaction.atomic():
        # Lock order: task rows before their session row (agent rows are never locked here).
        tasks = list(Task.objects.select_for_update().filter(session=session).exclude(status__in=Task.TERMINAL))
        session = Session.objects.select_for_update().get(pk=session.pk)
        if session.is_terminal:
            raise InvalidTransition(f"session {session.pk} is already {session.status}")
        now = timezone.now()
        for task in tasks:
            if task.status in Task.IN_FLIGHT:
                TaskAttempt.objects.filter(task=task, number=task.attempt).update(
                    outcome=TaskAttempt.Outcome.CANCELLED, ended_at=now)
            if S.CANCELLED in TASK_ALLOWED.get(task.status, set()):
                task_transition(task=task, to=S.CANCELLED, by=by, reason=reason or "session cancelled",
                                finished_at=now, timeout_at=None, next_attempt_at=None)
        session_transition(session=session, to=SS.CANCELLED, by=by, reason=reason or "cancelled")
    return session


def task_retry(*, task: Task, by: By, reason: str = "") -> Task:
    """An operator's retry of a dead or failed task: a fresh round of attempts.

    A failed session comes back to running when its failed task is retried.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task.pk)
        if task.status not in Task.NEEDS_DECISION:
            raise InvalidTransition(f"task {task.pk} is {task.status}; only dead or failed tasks can be retried")
        session = Session.objects.select_for_update().get(pk=task.session_id)
        if session.status == SS.CANCELLED:
            raise InvalidTransition(f"session {session.pk} is cancelled")
        if session.status == SS.COMPLETED:
            raise InvalidTransition(f"session {session.pk} is already completed")
        if task.fallbacks.exists():
            raise InvalidTransition(f"task {task.pk} already has a fallback task; retry that one instead")
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


# --------------------------------------------------------------------------- the scheduler


@dataclass
class SweepCounts:
    retries_due: int = 0
    timed_out: int = 0
    requeued: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"retries_due": self.retries_due, "timed_out": self.timed_out, "requeued": self.requeued}


SWEEP_BATCH = 100


def _sweep(queryset, action, *, limit: int) -> list[Task]:
    """Claim up to `limit` rows (SKIP LOCKED, so several schedulers share the work; SQLite
    ignores locking) and act on each in its own savepoint: one bad row is logged and
    skipped instead of blocking the sweep on every pass."""
    done = []
    with transaction.atomic():
        for task in list(queryset.select_for_update(skip_locked=True, of=("self",))[:limit]):
            try:
                with transaction.atomic():
                    action(task)
            except Exception:
                logger.exception("scheduler could not handle task %s", task.pk)
                continue
            done.append(task)
    return done


def _requeue_due(task: Task) -> None:
    task_transition(task=task, to=S.QUEUED, by=By.system(), reason="retry due", next_attempt_at=None)


def _time_out(task: Task) -> None:
    _attempt_failed(task_id=task.pk, number=task.attempt, permanent=False, by=By.system(),
                    error=f"no outcome within {task.timeout_seconds}s (attempt {task.attempt})")


def due_retries(*, now: datetime):
    """Tasks whose retry is due (what `sweep_due_retries` acts on)."""
    return Task.objects.filter(status=S.RETRY_SCHEDULED, next_attempt_at__lte=now).order_by("next_attempt_at")


def sweep_due_retries(*, now: datetime, limit: int = SWEEP_BATCH) -> int:
    return len(_sweep(due_retries(now=now), _requeue_due, limit=limit))


def overdue_tasks(*, now: datetime):
    """Tasks in flight past their deadline (what `sweep_timeouts` acts on)."""
    return Task.objects.filter(status__in=Task.IN_FLIGHT, timeout_at__lte=now).order_by("timeout_at")


def sweep_timeouts(*, now: datetime, limit: int = SWEEP_BATCH) -> int:
    return len(_sweep(overdue_tasks(now=now), _time_out, limit=limit))


def sweep_lost_jobs(*, now: datetime, limit: int = SWEEP_BATCH, dry_run: bool = False) -> list[Task]:
    """Queued tasks whose job has not run for a while although it would now decide something.

    Covers a worker killed mid-job, a job that found the agent busy and was never kicked
    again, an agent that deregistered (the job fails the task) and a session ended while
    the task was queued (the job cancels it). Re-enqueueing is safe: the job does nothing
    unless the task is queued.
    """
    cutoff = now - timedelta(seconds=settings.OPSCORE_LOST_JOB_SECONDS)
    ready_agents = Agent.objects.filter(state=Agent.State.IDLE, deregistered_at__isnull=True,
                                        drained_at__isnull=True)
    gone_agents = Agent.objects.filter(deregistered_at__isnull=False)  # their job fails the task
    busy_agents = Task.objects.filter(status__in=Task.IN_FLIGHT).values("agent_id")
    queryset = (Task.objects.filter(status=S.QUEUED)
                .filter(Q(agent__in=ready_agents) | Q(agent__in=gone_agents) | Q(session__status__in=Session.TERMINAL))
                .filter(Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True))
                .exclude(agent_id__in=busy_agents).order_by("created_at"))
    if dry_run:
        return list(queryset[:limit])
    return _sweep(queryset, lambda task: task_enqueue(task=task), limit=limit)


def scheduler_preview(*, now: datetime, limit: int = SWEEP_BATCH) -> dict[str, list[Task]]:
    """What one pass of the scheduler would act on, changing nothing (for dry runs and listings)."""
    return {
        "retries_due": list(due_retries(now=now)[:limit]),
        "timed_out": list(overdue_tasks(now=now)[:limit]),
        "requeued": sweep_lost_jobs(now=now, limit=limit, dry_run=True),
    }


def scheduler_tick(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> SweepCounts:
    """One pass of the scheduler loop, at most `limit` tasks of each kind. Each sweep commits on its own."""
    now = now or timezone.now()
    counts = SweepCounts()
    sweeps = (
        ("retries_due", lambda: sweep_due_retries(now=now, limit=limit)),
        ("timed_out", lambda: sweep_timeouts(now=now, limit=limit)),
        ("requeued", lambda: len(sweep_lost_jobs(now=now, limit=limit))),
    )
    for name, sweep in sweeps:
        try:
            setattr(counts, name, sweep())
        except (OperationalError, InterfaceError):
            raise  # the database itself: every sweep would fail; the caller reports it once
        except Exception as exc:  # one failing sweep must not stop the others
            logger.exception("scheduler sweep %s failed", name)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            counts.errors.append(f"{name}: {exc.__class__.__name__}: {first_line}")
    return counts
