"""The session engine: the one module that writes `Task.status`, `Session.status`,
`TaskAttempt.outcome` and `Agent.quarantine_state`.

Here live the allowed moves of each (TASK_ALLOWED, SESSION_ALLOWED, ATTEMPT_ALLOWED,
QUARANTINE_ALLOWED), their writers (`task_transition`, `session_transition`,
`attempt_transition`, `quarantine_transition`: compare-and-set on the row, plus a TaskEvent
for tasks and sessions, a QuarantineEvent for agents, saying who caused it and why) and the
lifecycle: starting a session, routing each task to an agent that can take it, completing,
failing and retrying tasks, quarantining agents that keep failing, reacting to the agents'
reports, and the operators' cancel, retry, quarantine and release. `sessions/dispatch.py` (claim,
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

Row locks are taken in one order (agent, task, session) and are all `FOR NO KEY UPDATE`
(`select_for_update(no_key=True)`): nothing here changes a primary key, and the weaker lock
does not block the foreign-key checks of inserts that reference the row (a trigger's new
task referencing its agent, an attempt or event referencing its task), which `FOR UPDATE`
would make wait for the whole claim or report.
"""

from __future__ import annotations

import contextvars
import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField, Count, ExpressionWrapper, Subquery
from django.db.models import Q as Where  # Q is the quarantine states below
from django.utils import timezone

from agents.models import Agent
from agents.signals import ReceiverFailed
from opscore_site import metrics
from opscore_site.dbdown import DATABASE_ERRORS
from opscore_site.errors import ApplicationError
from opscore_site.statements import Insert, Statement, Update
from sessions.models import Actor, ControlEvent, FleetDispatch, QuarantineEvent, Session, Task, TaskAttempt, TaskEvent
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
# Approval steps: held `pending` (definition paused) -> waiting for a decision -> approved
# (completed) or rejected (by a person or the timeout); no agent, no attempt, nothing sent.
TASK_ALLOWED[S.PENDING] |= {S.WAITING_APPROVAL}
TASK_ALLOWED[S.WAITING_APPROVAL] = {S.COMPLETED, S.REJECTED, S.CANCELLED}
SESSION_ALLOWED: dict[str, set[str]] = {
    SS.PENDING: {SS.RUNNING, SS.COMPLETED, SS.FAILED, SS.CANCELLED, SS.PAUSED},
    SS.RUNNING: {SS.COMPLETED, SS.FAILED, SS.CANCELLED, SS.PAUSED},
    SS.FAILED: {SS.RUNNING},  # an operator's retry from the failed step
    # Paused: steps in flight still finish (the last one completes the session, a dead one
    # without a fallback fails it); resume goes back to running, or pending if nothing ran yet.
    SS.PAUSED: {SS.RUNNING, SS.PENDING, SS.COMPLETED, SS.FAILED, SS.CANCELLED},
}
# The pause switch of a workflow definition and of the fleet's dispatch ("on" = not paused).
PAUSE_ALLOWED: dict[str, set[str]] = {"on": {"paused"}, "paused": {"on"}}
# An attempt is `sending` from its fence until AgentKit answers; every other outcome but
# `accepted` is final.
ATTEMPT_ALLOWED: dict[str, set[str]] = {
    Outcome.SENDING: {Outcome.ACCEPTED, Outcome.COMPLETED, Outcome.FAILED, Outcome.REJECTED, Outcome.CANCELLED},
    Outcome.ACCEPTED: {Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED},
}

Q = Agent.Quarantine
# An agent's circuit breaker (DESIGN.md "Quarantine"): closed ("") -> quarantined after N
# agent-fault failures in a row or by hand; quarantined -> probing when the cool-down is over
# and one task goes to it (half-open); probing -> closed when the agent answers (it reports
# idle or error), -> quarantined again (longer cool-down) when the probe fails by its fault.
QUARANTINE_ALLOWED: dict[str, set[str]] = {
    Q.NONE: {Q.QUARANTINED},
    Q.QUARANTINED: {Q.PROBING, Q.NONE},  # NONE: an operator's release
    Q.PROBING: {Q.NONE, Q.QUARANTINED},
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


class NotAnApprover(EngineError):
    """The approval step names a group of approvers and the caller is not in it."""

    code = "not_an_approver"
    http_status = 403


@dataclass(frozen=True)
class By:
    """Who causes a change: the system, an operator (a user), or an agent."""

    actor: str = Actor.SYSTEM
    user: Any = None
    agent_id: str = ""
    label: str = ""  # a service key's name ("API key ops-1"), for the record of who decided

    @classmethod
    def system(cls) -> By:
        return cls(Actor.SYSTEM)

    @classmethod
    def operator(cls, user) -> By:
        return cls(Actor.OPERATOR, user=user)

    @classmethod
    def agent(cls, agent_id: str) -> By:
        return cls(Actor.AGENT, agent_id=agent_id)

    @classmethod
    def service_key(cls, label: str) -> By:
        """A service key (automation): recorded as the system, named by `label`."""
        return cls(Actor.SYSTEM, label=label)

    @property
    def who(self) -> str:
        """A name for the record: the operator's username, the agent, the key, or "system"."""
        if self.actor == Actor.OPERATOR and self.user is not None:
            return self.user.get_username()
        if self.actor == Actor.AGENT:
            return f"agent {self.agent_id}"
        return self.label or "system"


# --------------------------------------------------------------------------- transitions


# The events of one step (a task completed and the next one queued; a session started and its first
# task queued) go to the database in one INSERT at the end of the step (`events_in_one_insert`).
_event_batch: contextvars.ContextVar[list[TaskEvent] | None] = contextvars.ContextVar("event_batch", default=None)
# The INSERTs of every step, compiled once per process (opscore_site/statements.py). ATTEMPTS is the
# dispatch claim's fence too (sessions/dispatch.py).
_EVENTS, _TASKS, _SESSIONS, ATTEMPTS = Insert(TaskEvent), Insert(Task), Insert(Session), Insert(TaskAttempt)


@contextmanager
def events_in_one_insert():
    batch: list[TaskEvent] = []
    token = _event_batch.set(batch)
    try:
        yield
    finally:
        _event_batch.reset(token)
    if batch:  # only when the step did not raise: its transaction goes on, and so must its events
        _EVENTS.save(*batch)


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
        _EVENTS.save(event)
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
    changed = _TASK_MOVE.run(where={"pk": task.pk, "old": old}, changes={"status": to, "updated_at": now, **changes})
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
    if to == SS.PAUSED:
        changes.setdefault("paused_at", now)
    elif old == SS.PAUSED:
        changes.setdefault("paused_at", None)
    changed = _SESSION_MOVE.run(where={"pk": session.pk, "old": old},
                                changes={"status": to, "updated_at": now, **changes})
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
    move = _ATTEMPT_MOVES.get(to)
    if move is None:
        sources = [old for old, allowed in ATTEMPT_ALLOWED.items() if to in allowed]
        if not sources:
            raise InvalidTransition(f"no attempt outcome moves to {to}")
        move = _ATTEMPT_MOVES.setdefault(to, Update(lambda task_id, number: TaskAttempt.objects.filter(
            task_id=task_id, number=number, outcome__in=sources)))
    return move.run(where={"task_id": task_id, "number": number}, changes={"outcome": to, **changes}) == 1


# The transitions' compare-and-set UPDATEs, compiled once per process and set of changed fields
# (opscore_site/statements.py); an attempt's, once per outcome it moves to.
_TASK_MOVE = Update(lambda pk, old: Task.objects.filter(pk=pk, status=old))
_SESSION_MOVE = Update(lambda pk, old: Session.objects.filter(pk=pk, status=old))
_ATTEMPT_MOVES: dict[str, Update] = {}


def quarantine_transition(*, agent: Agent, to: str, by: By, reason: str, failures: list | None = None,
                          **changes: Any) -> bool:
    """Move `agent`'s quarantine state to `to` (compare-and-set) with `changes`, and record a
    QuarantineEvent. Returns False, changing nothing, when the state moved underneath us."""
    old = agent.quarantine_state
    if to not in QUARANTINE_ALLOWED.get(old, set()):
        raise InvalidTransition(f"agent {agent.pk}: quarantine {old or 'none'} -> {to or 'none'} is not allowed")
    if not Agent.objects.filter(pk=agent.pk, quarantine_state=old).update(quarantine_state=to, **changes):
        return False
    for name, value in changes.items():
        setattr(agent, name, value)
    agent.quarantine_state = to
    QuarantineEvent.objects.create(agent_id=agent.pk, old_state=old, new_state=to, actor=by.actor,
                                   actor_user=by.user if by.actor == Actor.OPERATOR else None,
                                   reason=reason[:5000], failures=failures or [])
    logger.info("agent %s quarantine %s -> %s by %s: %s", agent.pk, old or "none", to or "none", by.actor, reason)
    return True


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


def task_job_ended(*, task: Task) -> None:
    """The task's job ran and left it `queued` (its agent busy, its session paused): no job is on its way now.

    Called by the claim while it holds the agent's lock, so it is ordered against the report or
    outcome that frees the agent (which holds that lock too): either that kick sees no job
    pending and enqueues one, or the job sees the agent free and dispatches.
    """
    Task.objects.filter(pk=task.pk, status=S.QUEUED).update(enqueued_at=None)
    task.enqueued_at = None


def jobs_on_their_way(*, now: datetime) -> Where:
    """`job_pending` as a filter on queued tasks."""
    return Where(status=S.QUEUED, waiting_since__isnull=True,
                 enqueued_at__gte=now - timedelta(seconds=settings.OPSCORE_LOST_JOB_SECONDS))


def job_pending(task: Task, *, now: datetime) -> bool:
    """Whether a dispatch job for the queued `task` may still be on its way: enqueued within the
    lost-job window and not yet ended without dispatching (`task_job_ended`). A task waiting for an
    agent has had its job (the job made it wait), and the sweep re-checks it on its own clock."""
    return task.waiting_since is None and task.enqueued_at is not None and task.enqueued_at >= now - timedelta(
        seconds=settings.OPSCORE_LOST_JOB_SECONDS)


def _waits_its_turn(*, agent: Agent, step: StepSpec) -> bool:
    """Whether a new first step for `agent` can only wait behind the agent's work: the agent takes
    work (not drained or quarantined: their tasks are routed by their jobs), the step cannot move
    to another agent (no capability, or pinned), and the agent has a task in flight or a
    dispatchable queued task already. Then its job would only answer busy."""
    if agent.drained_at is not None or agent.quarantine_state != Q.NONE:
        return False
    if step.agentCapability and not step.pinToSessionAgent:
        return False
    return _HAS_WORK.first(agent_id=agent.pk) is not None


# `_waits_its_turn`'s read, compiled once per process (opscore_site/statements.py).
_HAS_WORK = Statement(lambda agent_id: (
    Task.objects.filter(agent_id=agent_id, status__in=(*Task.IN_FLIGHT, S.QUEUED), waiting_since__isnull=True)
    .exclude(session__status__in=Session.NOT_DISPATCHING).values_list("pk", flat=True)[:1]))


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
              fallback_for: Task | None = None, reason: str, held: bool = False, behind: bool = False) -> Task:
    """Create the step's Task already `queued` (one INSERT, its event and its job), after `after`.

    `behind` (a new session's first step): when it can only wait for its agent's turn
    (`_waits_its_turn`), the task is queued without a job (`enqueued_at` empty); the kick that
    frees the agent enqueues its oldest queued task, and the lost-job sweep catches a task whose
    kick raced its creation. A burst of triggers so leaves one job per agent in the queue, not
    one per session.

    An approval step waits for a decision instead (no job, its decision deadline set); a
    `held` task (its definition is paused) stays `pending`; a paused session's next step is
    queued without a job (resuming enqueues it).

    A session's tasks form one chain: a task is created only when the newest one finishes
    (completed: the next step; dead: the fallback), and an operator's retry re-queues a task
    instead of creating one. So the new sequence is `after.sequence + 1`, with no MAX() query;
    the (session, sequence) unique constraint guards the rule.
    """
    now = timezone.now()
    status = S.PENDING if held else S.WAITING_APPROVAL if step.is_approval else S.QUEUED
    send = status == S.QUEUED and session.status != SS.PAUSED
    if send and behind and _waits_its_turn(agent=session.agent, step=step):
        send = False
    task = Task(
        session=session,
        agent_id=session.agent_id,
        step_id=step.taskId,
        name=step.name or step.taskId,
        sequence=after.sequence + 1 if after is not None else 1,
        fallback_for=fallback_for,
        payload=payload,
        status=status,
        enqueued_at=now if send else None,
        timeout_at=now + timedelta(seconds=step.timeoutSeconds) if status == S.WAITING_APPROVAL else None,
        created_at=now,
        updated_at=now,
        max_retries=step.maxRetries,
        timeout_seconds=step.timeoutSeconds,
        retry_backoff_seconds=step.retryBackoffSeconds,
        capability=step.agentCapability or "",
        pinned=step.pinToSessionAgent,
        queue_timeout_seconds=step.queueTimeoutSeconds,
    )
    _TASKS.save(task)
    # The history reads as before: created (pending) and queued at once.
    if status != S.PENDING:
        _event(session_id=session.pk, task_id=task.pk, old=S.PENDING, new=status, by=by, reason=reason)
    else:
        _event(session_id=session.pk, task_id=task.pk, old="", new=status, by=by,
               reason=f"{reason}; held: workflow definition '{session.workflow_id}' is paused")
    if send:
        _send_job(task=task, now=now)
    elif status == S.WAITING_APPROVAL and session.status == SS.PENDING:
        session_transition(session=session, to=SS.RUNNING, by=By.system(), reason=f"approval '{step.taskId}' waits")
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
    with transaction.atomic(savepoint=False), events_in_one_insert():
        session = Session(
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
        _SESSIONS.save(session)
        _event(session_id=session.pk, old="", new=SS.PENDING, by=by, reason="session started")
        _new_task(session=session, step=spec.first_step, payload=_payload_for(
            spec.first_step, base=initial_payload, previous_result=None), by=by, after=None, reason="first step",
            held=definition.paused_at is not None, behind=True)
    return session


# --------------------------------------------------------------------------- outcomes


def _backoff_seconds(task: Task) -> float:
    base = task.retry_backoff_seconds * (2 ** max(task.attempt - 1, 0))
    return min(base * random.uniform(0.5, 1.5), MAX_BACKOFF_SECONDS)


def attempt_failed(*, task_id=None, task: Task | None = None, number: int, error: str, permanent: bool, by: By,
                   http_status: int | None = None, agent_fault: bool = False) -> Task | None:
    """Attempt `number` of the task failed: retry with backoff, or mark it dead.

    Pass the `task` row when the caller holds its lock already, else its `task_id`. Does
    nothing when the task has moved on (a later attempt, a cancel): the fence. The agent is
    free again, so its next queued task is kicked in this transaction (its job answers busy
    while the agent is not idle; the agent's next `idle` report kicks again).

    `agent_fault` (AgentKit's 404 or 5xx for the agent, a lost forward) counts toward the
    agent's quarantine; it also makes a permanent error retryable when the step may run on
    another agent (a 404 says nothing about the task). An `error` report is the task's fault.
    """
    if task is None:
        task = Task.objects.select_for_update(no_key=True).filter(pk=task_id).first()
    if task is None or task.attempt != number or task.status not in Task.IN_FLIGHT:
        return None
    with events_in_one_insert():
        _attempt_failed(task=task, number=number, error=error, permanent=permanent, by=by, http_status=http_status,
                        agent_fault=agent_fault)
    return task


def _attempt_failed(*, task: Task, number: int, error: str, permanent: bool, by: By, http_status: int | None,
                    agent_fault: bool) -> None:
    now = timezone.now()
    attempt_transition(task_id=task.pk, number=number, to=Outcome.REJECTED if permanent else Outcome.FAILED,
                       error=error[:5000], http_status=http_status, ended_at=now, agent_fault=agent_fault)
    task_transition(task=task, to=S.FAILED, by=by, reason=error, last_error=error[:5000],
                    timeout_at=None, finished_at=now)
    if permanent and agent_fault and _movable(task):
        permanent = False  # another agent may take the retry
    _retry_or_dead(task=task, error=error, permanent=permanent, now=now)
    if agent_fault:
        _note_agent_fault(agent_id=task.agent_id, now=now)
    elif by.actor == Actor.AGENT:
        _note_agent_answered(task=task, now=now)  # it reported: reachable, whatever the task's fate
    elif task.probe:
        _probe_inconclusive(agent_id=task.agent_id, reason=f"probe task {task.pk} failed without an answer: {error}")
    _kick_queued(agent_id=task.agent_id)


def _retry_or_dead(*, task: Task, error: str, permanent: bool, now: datetime) -> None:
    retries_used = task.attempt - 1
    if not permanent and retries_used < task.max_retries:
        delay = _backoff_seconds(task)
        task_transition(task=task, to=S.RETRY_SCHEDULED, by=By.system(),
                        reason=f"retry {retries_used + 1} of {task.max_retries} in {delay:.1f}s",
                        next_attempt_at=now + timedelta(seconds=delay), finished_at=None)
    else:
        why = "permanent error" if permanent else f"retries exhausted ({task.max_retries})"
        _task_dead(task=task, reason=f"{why}: {error}")


def task_give_up(*, task: Task, reason: str) -> None:
    """Fail a queued `task` that nothing will ever run (its agent is gone), without a retry:
    it is dead at once, and its step's fallback runs or the session fails."""
    task_transition(task=task, to=S.FAILED, by=By.system(), reason=reason, last_error=reason,
                    finished_at=timezone.now())
    _task_dead(task=task, reason=reason)


def _task_dead(*, task: Task, reason: str) -> None:
    task_transition(task=task, to=S.DEAD, by=By.system(), reason=reason)
    _fallback_or_fail(task=task, reason=reason, why="dead", previous_result=None)


def _fallback_or_fail(*, task: Task, reason: str, why: str, previous_result: Any) -> None:
    """`task` ended without success (`why`: dead, rejected): its step's fallback runs, or the session fails."""
    session = Session.objects.select_for_update(no_key=True).get(pk=task.session_id)
    if session.is_terminal:
        return
    spec = _spec_of(session)
    step = spec.step(task.step_id)
    if step.fallbackTaskId:
        fallback = spec.step(step.fallbackTaskId)
        _new_task(session=session, step=fallback, by=By.system(), after=task, fallback_for=task,
                  payload=_payload_for(fallback, base=session.initial_payload if fallback is spec.first_step else None,
                                       previous_result=previous_result),
                  reason=f"fallback for {why} step '{task.step_id}'")
    else:
        session_transition(session=session, to=SS.FAILED, by=By.system(),
                           reason=f"step '{task.step_id}' is {why}", error=f"step '{task.step_id}': {reason}")


def _task_completed(*, task: Task, result: Any, by: By, session: Session) -> Task | None:
    """Complete `task`; return the next step's task when its job was enqueued, else None.
    `session` is the task's session, locked by the caller after the task (engine lock order)."""
    now = timezone.now()
    attempt_transition(task_id=task.pk, number=task.attempt, to=Outcome.COMPLETED, ended_at=now)
    task_transition(task=task, to=S.COMPLETED, by=by, reason="agent reported idle", result=result,
                    finished_at=now, timeout_at=None)
    _note_agent_answered(task=task, now=now)
    return _next_step(task=task, result=result, session=session)


def _next_step(*, task: Task, result: Any, session: Session | None = None) -> Task | None:
    """`task` completed with `result`: start the next step, or complete the session.

    `session`, when given, is the task's session locked by the caller in this transaction;
    else it is locked here. Returns the next step's task when its dispatch job was enqueued
    (the caller need not kick the agent), else None (an approval, a paused session, the end).
    """
    if session is None:
        session = Session.objects.select_for_update(no_key=True).get(pk=task.session_id)
    if session.is_terminal:
        return None
    spec = _spec_of(session)
    step = spec.step(task.step_id)
    if step.nextTaskId:
        nxt = spec.step(step.nextTaskId)
        created = _new_task(session=session, step=nxt, by=By.system(), after=task,
                            payload=_payload_for(nxt, base=None, previous_result=result),
                            reason=f"after step '{task.step_id}'")
        return created if created.status == S.QUEUED and session.status != SS.PAUSED else None
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


def on_agent_state(*, agent_id: str, state: str, details: Any, received_at: datetime,
                   timestamp: datetime | None = None, **_: Any) -> None:
    """React to a recorded state report (receiver of agents.signals.agent_state_reported).

    Runs inside the report's transaction, with no savepoint of its own (two round trips less
    per report): if the engine fails here it logs why and raises ReceiverFailed, the report's
    transaction rolls back and the report is recorded again without the engine (an agent's
    report is sent once and never retried, so it must not be lost); the scheduler's timeout
    and lost-job sweeps recover the task. A database gone away is not the engine failing: the
    report's transaction is lost with it, so the error goes on up (the request answers 503,
    opscore_site/dbdown.py) instead of a traceback saying it was kept.
    """
    try:
        with transaction.atomic(savepoint=False), events_in_one_insert():
            _apply_report(agent_id=agent_id, state=state, details=details, received_at=received_at,
                          timestamp=timestamp)
    except DATABASE_ERRORS:
        raise
    except Exception as exc:
        logger.exception("engine could not apply a %s report of agent %s; the report is recorded without it "
                         "and the sweeps will recover", state, agent_id)
        raise ReceiverFailed from exc


# The task in flight on a reporting agent, locked (the agent is locked by the report). An `idle`
# may complete the task and start the next step, which locks the session: both rows in one
# statement, in the engine's lock order. Compiled once per process (opscore_site/statements.py).
_IN_FLIGHT_FOR_IDLE = Statement(lambda agent_id: (
    Task.objects.filter(agent_id=agent_id, status__in=Task.IN_FLIGHT).select_related("session")
    .select_for_update(no_key=True, of=("self", "session")).order_by("pk")[:1]))
_IN_FLIGHT = Statement(lambda agent_id: (
    Task.objects.filter(agent_id=agent_id, status__in=Task.IN_FLIGHT).select_for_update(no_key=True)
    .order_by("pk")[:1]))


def _predates(*, state: str, task: Task, timestamp: datetime | None) -> bool:
    """An `idle` stamped by the agent before the attempt went out, for a task the agent has not
    reported `active` for: the `idle` an agent sends when it registers (AgentKit restarting), not
    the end of the task. Every run ends `active` then `idle`, both stamped after the agent got the
    task (AGENTKIT.md section 4), so a completing `idle` fails this only when its `active` was lost
    too and the agent's clock lags the server's by more than the run took: the step timeout then
    decides, where taking it would complete a task still running and send the agent the next."""
    return (state == Agent.State.IDLE and task.status == S.DISPATCHED and timestamp is not None
            and timestamp < task.reference_at)


def _apply_report(*, agent_id: str, state: str, details: Any, received_at: datetime,
                  timestamp: datetime | None = None) -> None:
    """A report counts for the task in flight only when it was received after that attempt's
    reference time and, if it names a task id, names this task; one that names none must not be
    an `idle` the agent stamped before the attempt went out (`_predates`)."""
    task = (_IN_FLIGHT_FOR_IDLE if state == Agent.State.IDLE else _IN_FLIGHT).first(agent_id=agent_id)
    by = By.agent(agent_id)
    if task is not None and task.reference_at is not None and received_at > task.reference_at:
        named = _named_task_id(details)
        if named == str(task.pk) or (named is None and not _predates(state=state, task=task, timestamp=timestamp)):
            if state == Agent.State.ACTIVE and task.status == S.DISPATCHED:
                task_transition(task=task, to=S.RUNNING, by=by, reason="agent reported active",
                                started_at=received_at)
            elif state == Agent.State.IDLE:
                result = details.get("result") if isinstance(details, dict) else None
                if _task_completed(task=task, result=result, by=by, session=task.session) is not None:
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


# The kicks' reads, compiled once per process (opscore_site/statements.py).
_OLDEST_QUEUED = Statement(lambda agent_id: (
    Task.objects.filter(agent_id=agent_id, status=S.QUEUED, agent__drained_at__isnull=True)
    .exclude(session__status__in=Session.NOT_DISPATCHING)
    .order_by("created_at").only("pk", "enqueued_at", "waiting_since")[:1]))
_LONGEST_WAITING = Statement(lambda: (
    Task.objects.filter(status=S.QUEUED, waiting_since__isnull=False)
    .exclude(session__status__in=Session.NOT_DISPATCHING).order_by("waiting_since")
    .only("pk", "enqueued_at", "agent_id", "capability", "pinned", "session__agent_id")
    .select_related("session")[:100]))


def _kick_queued(*, agent_id: str) -> None:
    """The agent is free (idle, or its task left it): enqueue its oldest queued task, or else a task
    waiting for an agent that it can take (a drained agent takes none, and a paused session's task
    waits for its resume).

    Not when that task's job is still on its way (`job_pending`): it finds the agent free and
    dispatches, and a second job would only find the task gone.
    """
    task = _OLDEST_QUEUED.first(agent_id=agent_id)
    if task is not None:
        if not job_pending(task, now=timezone.now()):
            task_enqueue(task=task)
    else:
        _kick_waiting(agent_id=agent_id)


def _kick_waiting(*, agent_id: str) -> None:
    """Enqueue the longest-waiting task `agent_id` could take; its job routes it (to this agent,
    unless a better one has appeared). One query when nothing waits, which is the usual case."""
    waiting = _LONGEST_WAITING.rows()
    if not waiting:
        return
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        return
    now = timezone.now()
    for task in waiting:
        home = task.session.agent_id == agent_id
        if (task.pinned or not task.capability) and not home:
            continue
        if _refusal(agent=agent, task=task, now=now, home=home) is None:
            task_enqueue(task=task)
            return


# --------------------------------------------------------------------------- which agents may take a task

# An agent reports `active` and `error` after its work, each followed within milliseconds by an
# `idle` (AGENTKIT.md section 4), and the SDK never sends a report twice. So an agent that still
# shows `active` or `error` LOST_IDLE_SECONDS after that report lost its `idle` (a report cut short
# by a killed web worker, refused during a database outage): it is idle in truth and would never
# report again, since an SDK agent reports only after work. The margin is for an `idle` still on
# its way (queued in front of a busy web tier): arriving after a new dispatch, it would be taken
# for that task's outcome. Whether the agent has a task in flight, or a cancelled one that may
# still hold it, is checked beside this rule (dispatch._claim, the lost-job sweep).
LOST_IDLE_STATES = (Agent.State.ACTIVE, Agent.State.ERROR)
LOST_IDLE_SECONDS = 5


def free_agents(*, now: datetime, via: str = "") -> Where:
    """The agents whose reported state lets them take a task at `now`: `idle`, or `active`/`error`
    reported at least LOST_IDLE_SECONDS ago (a lost `idle`, above). The one rule for the dispatch
    claim (`free_column`) and the lost-job sweep. `via`: the path to the agent ("agent__" from a task)."""
    return _free_since(lost_idle_since(now), via=via)


def lost_idle_since(now: datetime) -> datetime:
    """An `active` or `error` reported at or before this lost its `idle` (`free_agents`)."""
    return now - timedelta(seconds=LOST_IDLE_SECONDS)


def _free_since(lost_since: datetime, *, via: str) -> Where:
    return Where(**{f"{via}state": Agent.State.IDLE}) | Where(**{
        f"{via}state__in": LOST_IDLE_STATES, f"{via}state_received_at__lte": lost_since})


def free_column(*, lost_since: datetime, via: str = "") -> ExpressionWrapper:
    """`free_agents` as a column, for the query that locks the agent (no query of its own); takes
    `lost_idle_since(now)`, so that a compiled statement (opscore_site/statements.py) can take it."""
    return ExpressionWrapper(_free_since(lost_since, via=via), output_field=BooleanField())


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Routed:
    """The claim did not dispatch: the task moved to another agent, waits, or was given up."""

    outcome: str  # "rerouted", "waiting", "unavailable"
    detail: str


def _movable(task: Task) -> bool:
    """Whether the task may run on an agent other than the session's: it names a capability
    (the basis for choosing another agent) and is not pinned to the session's agent."""
    return bool(task.capability) and not task.pinned


def _refusal(*, agent: Agent, task: Task, now: datetime, home: bool) -> str | None:
    """Why `agent` cannot take `task` now, or None. Staleness is not a refusal (see `task_route`)."""
    who = f"session agent {agent.pk}" if home else f"agent {agent.pk}"
    if agent.deregistered_at is not None:
        return f"{who} is deregistered"
    if agent.drained_at is not None:
        return f"{who} is drained"
    if agent.quarantine_state == Q.PROBING:
        return f"{who} is being probed after quarantine"
    if agent.quarantine_state == Q.QUARANTINED and not (agent.probe_due(now=now) and agent.pk == task.agent_id):
        return f"{who} is quarantined ({agent.quarantine_reason or 'no reason given'})"
    if agent.lacks_capability(task.capability):
        return f"{who} lacks capability '{task.capability}'"
    return None


def _best_agent(*, task: Task, exclude: set[str], now: datetime, fresh_only: bool = False) -> Agent | None:
    """Another agent for `task`, chosen fairly: registered, undrained, not quarantined, with the
    capability; fresh before stale, free and idle before busy, fewest queued, then idle longest."""
    candidates = list(Agent.objects.active().filter(drained_at__isnull=True, quarantine_state=Q.NONE)
                      .with_capability(task.capability).exclude(pk__in=exclude)[:200])
    if not candidates:
        return None
    ids = [agent.pk for agent in candidates]
    busy = set(Task.objects.filter(agent_id__in=ids, status__in=Task.IN_FLIGHT).values_list("agent_id", flat=True))
    queued = dict(Task.objects.filter(agent_id__in=ids, status=S.QUEUED, waiting_since__isnull=True)
                  .values("agent_id").annotate(n=Count("pk")).values_list("agent_id", "n"))
    epoch = datetime.min.replace(tzinfo=now.tzinfo)

    def rank(agent: Agent):
        free = agent.state == Agent.State.IDLE and agent.pk not in busy
        return (agent.is_stale(now=now), not free, queued.get(agent.pk, 0), agent.state_received_at or epoch, agent.pk)

    best = min(candidates, key=rank)
    if fresh_only and best.is_stale(now=now):
        return None
    return best


def task_route(*, task: Task, agent: Agent, session: Session, now: datetime) -> Routed | None:
    """Decide where the queued `task` goes; None: to `agent` (its current one, locked by the caller).

    The session's agent when it can take the step (DESIGN.md "Where a step goes"); otherwise
    another agent with the step's capability, unless the step is pinned or names none; otherwise
    the task waits, `queued`, with the reason, until an agent can take it or its queue deadline
    fails the attempt (`task_queue_timeout`). A stale agent (no report for a while) is used only
    when no fresh one can take the step: agents report only after work, so an idle fleet goes
    stale by itself, and sending work is how we learn whether it is alive (a dead one is
    quarantined after N lost forwards). A session agent whose AgentKit registration vanished
    (deregistered) gives up a step that cannot move, as before.
    """
    home = agent.pk == session.agent_id
    refusal = _refusal(agent=agent, task=task, now=now, home=home)
    movable = _movable(task)
    if not home and movable:
        # Back to the session's agent as soon as it can take the step again (a retry, a release).
        session_agent = Agent.objects.filter(pk=session.agent_id).first()
        if (session_agent is not None and not session_agent.is_stale(now=now)
                and _refusal(agent=session_agent, task=task, now=now, home=True) is None
                and session_agent.quarantine_state == Q.NONE):
            return _reroute(task=task, to=session_agent, note=f"back on session agent {session_agent.pk}")
    if refusal is None:
        if movable and agent.is_stale(now=now):
            better = _best_agent(task=task, exclude={agent.pk}, now=now, fresh_only=True)
            if better is not None:
                return _reroute(task=task, to=better, note=f"routed to {better.pk}: {'session ' if home else ''}"
                                f"agent {agent.pk} is stale (no report for {settings.OPSCORE_AGENT_STALE_SECONDS}s+)")
        return None
    if not movable:
        if agent.deregistered_at is not None:
            task_give_up(task=task, reason=f"agent '{agent.pk}' is deregistered")
            return Routed("unavailable", f"agent '{agent.pk}' is deregistered")
        why = "pinned to its session's agent" if task.pinned else "names no capability"
        return _wait(task=task, now=now, note=f"waiting: {refusal}; the step {why}")
    exclude = {agent.pk, session.agent_id}
    better = _best_agent(task=task, exclude=exclude, now=now)
    if better is not None:
        return _reroute(task=task, to=better, note=f"routed to {better.pk}: {refusal}")
    return _wait(task=task, now=now, note=f"waiting for an agent with capability '{task.capability}' ({refusal})")


def _reroute(*, task: Task, to: Agent, note: str) -> Routed:
    """Give the queued `task` to agent `to` (compare-and-set), record why, and enqueue its job."""
    if not Task.objects.filter(pk=task.pk, status=S.QUEUED, agent_id=task.agent_id).update(
            agent_id=to.pk, routing_note=note[:500], waiting_since=None, queue_deadline_at=None):
        raise InvalidTransition(f"task {task.pk} changed underneath us")
    task.agent_id, task.routing_note, task.waiting_since, task.queue_deadline_at = to.pk, note[:500], None, None
    _event(session_id=task.session_id, task_id=task.pk, old=S.QUEUED, new=S.QUEUED, by=By.system(), reason=note,
           attempt=task.attempt or None)
    task_enqueue(task=task)
    return Routed("rerouted", note)


def _wait(*, task: Task, now: datetime, note: str) -> Routed:
    """No agent can take `task`: it stays queued with `note` until one can or its deadline passes."""
    note = note[:500]
    if task.waiting_since is None:
        timeout = task.queue_timeout_seconds or settings.OPSCORE_QUEUE_TIMEOUT_SECONDS
        deadline = now + timedelta(seconds=timeout)
        Task.objects.filter(pk=task.pk, status=S.QUEUED).update(waiting_since=now, queue_deadline_at=deadline,
                                                                 routing_note=note)
        task.waiting_since, task.queue_deadline_at, task.routing_note = now, deadline, note
        _event(session_id=task.session_id, task_id=task.pk, old=S.QUEUED, new=S.QUEUED, by=By.system(),
               reason=f"{note} (for up to {timeout}s)", attempt=task.attempt or None)
    elif task.routing_note != note:
        Task.objects.filter(pk=task.pk, status=S.QUEUED).update(routing_note=note)
        task.routing_note = note
    return Routed("waiting", note)


def task_queue_timeout(*, task: Task) -> Task:
    """The queued `task` waited past its deadline for an agent: that fails an attempt (one that
    never left the queue), into the normal retry / fallback path. The caller holds its lock."""
    now = timezone.now()
    waited = int((now - task.waiting_since).total_seconds()) if task.waiting_since else 0
    error = f"no agent could take the task within {waited}s: {task.routing_note or 'waiting for an agent'}"
    number = task.attempt + 1
    ATTEMPTS.save(TaskAttempt(task=task, number=number, reference_at=now, started_at=now))
    attempt_transition(task_id=task.pk, number=number, to=Outcome.FAILED, error=error[:5000], ended_at=now)
    task_transition(task=task, to=S.FAILED, by=By.system(), reason=error, attempt=number, last_error=error[:5000],
                    waiting_since=None, queue_deadline_at=None, finished_at=now)
    _retry_or_dead(task=task, error=error, permanent=False, now=now)
    return task


# --------------------------------------------------------------------------- quarantine


def _cooldown(strikes: int) -> timedelta:
    seconds = settings.OPSCORE_QUARANTINE_COOLDOWN_SECONDS * 2 ** max(strikes - 1, 0)
    return timedelta(seconds=min(seconds, settings.OPSCORE_QUARANTINE_BACKOFF_CAP_SECONDS))


def is_agent_fault_answer(http_status: int | None) -> bool:
    """Whether AgentKit's answer to a dispatch is the agent's fault: 404 (AgentKit does not know
    it) or a 5xx for it. A 422 or other 4xx is our request's fault, a 429 AgentKit's throttle,
    and no answer at all (connection refused, timeout) is AgentKit being down for everyone:
    none of those says anything about this agent."""
    return http_status == 404 or (http_status is not None and http_status >= 500)


def _note_agent_fault(*, agent_id: str, now: datetime) -> None:
    """An attempt on `agent_id` failed by the agent's fault: quarantine it after
    OPSCORE_QUARANTINE_THRESHOLD of them in a row, or again (longer) if it was being probed.

    The run is read from the agent's latest attempts (since its last release), so a success or
    an `error` report (the agent answered) breaks it and nothing is written on the report path.
    The agent row is locked with SKIP LOCKED: a timeout sweep holds its task's lock already, and
    a state report holding the agent would deadlock with it; a skipped check is made again at
    the agent's next failure (the run is history, not a counter).
    """
    agent = Agent.objects.select_for_update(no_key=True, skip_locked=True).filter(pk=agent_id).first()
    if agent is None:
        logger.info("agent %s busy (locked): its quarantine check waits for its next failure", agent_id)
        return
    threshold = settings.OPSCORE_QUARANTINE_THRESHOLD
    attempts = (TaskAttempt.objects.filter(agent_id=agent_id)
                .exclude(outcome__in=(Outcome.SENDING, Outcome.ACCEPTED, Outcome.CANCELLED)))
    if agent.quarantine_released_at is not None:
        attempts = attempts.filter(started_at__gt=agent.quarantine_released_at)
    if agent.quarantine_state == Q.PROBING:
        rows = list(attempts.order_by("-started_at", "-id").values("task_id", "number", "agent_fault", "error",
                                                                    "ended_at")[:1])
        strikes = agent.quarantine_strikes + 1
        cooldown = _cooldown(strikes)
        quarantine_transition(agent=agent, to=Q.QUARANTINED, by=By.system(), failures=_failure_list(rows),
                              reason=f"probe failed: {_last_error(rows)}; next probe in {cooldown.seconds}s",
                              quarantine_probe_at=now + cooldown, quarantine_strikes=strikes, quarantined_at=now)
        _reroute_queued(agent_id=agent_id)
        return
    if agent.quarantine_state != Q.NONE or threshold == 0:
        return
    rows = list(attempts.order_by("-started_at", "-id").values("task_id", "number", "agent_fault", "error",
                                                                "ended_at")[:threshold])
    if len(rows) < threshold or not all(row["agent_fault"] for row in rows):
        return
    strikes = agent.quarantine_strikes + 1
    cooldown = _cooldown(strikes)
    quarantine_transition(
        agent=agent, to=Q.QUARANTINED, by=By.system(), failures=_failure_list(rows),
        reason=f"{threshold} failures in a row by the agent's fault; last: {_last_error(rows)}",
        quarantined_at=now, quarantined_by=None, quarantine_probe_at=now + cooldown, quarantine_strikes=strikes,
        quarantine_reason=f"{threshold} failures in a row: {_last_error(rows)}"[:1000],
    )
    _reroute_queued(agent_id=agent_id)


def _failure_list(rows: list[dict]) -> list[dict]:
    return [{"task": str(row["task_id"]), "attempt": row["number"], "error": (row["error"] or "")[:300],
             "at": row["ended_at"].isoformat() if row["ended_at"] else None} for row in rows]


def _last_error(rows: list[dict]) -> str:
    return ((rows[0]["error"] if rows else "") or "unknown error")[:300]


def _reroute_queued(*, agent_id: str, limit: int = 500) -> None:
    """Enqueue the jobs of the agent's queued tasks: each claim routes its task elsewhere or lets it wait."""
    for task in (Task.objects.filter(agent_id=agent_id, status=S.QUEUED)
                 .order_by("created_at").only("pk", "enqueued_at")[:limit]):
        task_enqueue(task=task)


def _note_agent_answered(*, task: Task, now: datetime) -> None:
    """The agent reported on its task: if that task was its probe, the quarantine ends."""
    if not task.probe:
        return
    agent = Agent.objects.get(pk=task.agent_id)
    if agent.quarantine_state == Q.PROBING:
        quarantine_transition(agent=agent, to=Q.NONE, by=By.system(), reason=f"probe task {task.pk} answered",
                              quarantine_probe_at=None, quarantine_strikes=0, quarantine_released_at=now,
                              quarantine_reason="", quarantined_by=None)


def _probe_inconclusive(*, agent_id: str, reason: str) -> None:
    """The probe ended without telling us anything (cancelled, AgentKit unreachable): probe again.

    SKIP LOCKED (callers may hold task locks; see `_note_agent_fault`): a skipped agent is put back
    by the scheduler (`sweeps.sweep_stuck_probes`)."""
    agent = Agent.objects.select_for_update(no_key=True, skip_locked=True).filter(pk=agent_id).first()
    if agent is not None and agent.quarantine_state == Q.PROBING:
        quarantine_transition(agent=agent, to=Q.QUARANTINED, by=By.system(), reason=reason,
                              quarantine_probe_at=timezone.now())


def probe_abandoned(*, agent: Agent) -> bool:
    """A probing agent has no probe task in flight any more (the scheduler found it): probe again."""
    return quarantine_transition(agent=agent, to=Q.QUARANTINED, by=By.system(),
                                 reason="the probe ended without an outcome", quarantine_probe_at=timezone.now())


def probe_claim(*, agent: Agent, task: Task) -> bool:
    """The dispatch claim sends `task` to a quarantined `agent` whose cool-down is over: it is the
    probe (half-open). The caller holds the agent's lock. Returns whether this is a probe."""
    if agent.quarantine_state != Q.QUARANTINED:
        return False
    return quarantine_transition(agent=agent, to=Q.PROBING, by=By.system(),
                                 reason=f"cool-down over: probing with task {task.pk}")


def agent_quarantine(*, agent: Agent, by: By, reason: str) -> Agent:
    """An operator's quarantine: no dispatch to `agent` until released by hand (no probe).
    Its queued tasks move to other agents where their steps allow, or wait."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        if agent.quarantine_state != Q.NONE:
            raise InvalidTransition(f"agent {agent.pk} is already {agent.quarantine_state}")
        now = timezone.now()
        reason = reason.strip() or "quarantined by hand"
        quarantine_transition(agent=agent, to=Q.QUARANTINED, by=by, reason=reason, quarantined_at=now,
                              quarantine_reason=reason[:1000], quarantine_probe_at=None,
                              quarantined_by=by.user if by.actor == Actor.OPERATOR else None)
        _reroute_queued(agent_id=agent.pk)
    return agent


def agent_release(*, agent: Agent, by: By, reason: str = "") -> Agent:
    """An operator's release: the agent takes work again, its run of failures forgotten."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        if agent.quarantine_state == Q.NONE:
            raise InvalidTransition(f"agent {agent.pk} is not quarantined")
        quarantine_transition(agent=agent, to=Q.NONE, by=by, reason=reason.strip() or "released by hand",
                              quarantine_probe_at=None, quarantine_strikes=0,
                              quarantine_released_at=timezone.now(), quarantine_reason="", quarantined_by=None)
        _kick_queued(agent_id=agent.pk)
    return agent


# --------------------------------------------------------------------------- operator actions


def session_cancel(*, session: Session, by: By, reason: str = "") -> Session:
    """Cancel a session and its unfinished tasks. A late report for them changes nothing.

    A task cancelled in flight still holds its agent until the agent reports again or the
    attempt's deadline passes (`dispatch._held_by_cancelled_task`), so that late report cannot
    complete the next task sent to the agent.
    """
    with transaction.atomic():
        tasks = list(Task.objects.select_for_update(no_key=True).filter(session=session)
                     .exclude(status__in=Task.TERMINAL))
        session = Session.objects.select_for_update(no_key=True).get(pk=session.pk)
        if session.is_terminal:
            raise InvalidTransition(f"session {session.pk} is already {session.status}")
        now = timezone.now()
        freed = {task.agent_id for task in tasks if task.status in Task.IN_FLIGHT}
        probes = {task.agent_id for task in tasks if task.status in Task.IN_FLIGHT and task.probe}
        for task in tasks:
            if task.status in Task.IN_FLIGHT:
                attempt_transition(task_id=task.pk, number=task.attempt, to=Outcome.CANCELLED, ended_at=now)
            if S.CANCELLED in TASK_ALLOWED.get(task.status, set()):
                task_transition(task=task, to=S.CANCELLED, by=by, reason=reason or "session cancelled",
                                finished_at=now, timeout_at=None, next_attempt_at=None)
        session_transition(session=session, to=SS.CANCELLED, by=by, reason=reason or "cancelled")
        # The agents this session held take their next queued task (the job answers busy while
        # the cancelled attempt may still hold its agent; the agent's next report kicks again).
        for agent_id in sorted(probes):
            _probe_inconclusive(agent_id=agent_id, reason=f"probe cancelled with session {session.pk}")
        for agent_id in sorted(freed):
            _kick_queued(agent_id=agent_id)
    return session


def task_retry(*, task: Task, by: By, reason: str = "") -> Task:
    """An operator's retry of a dead or failed task: a fresh round of attempts.

    A failed session comes back to running when its failed task is retried.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update(no_key=True).get(pk=task.pk)
        session = Session.objects.select_for_update(no_key=True).get(pk=task.session_id)
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


# --------------------------------------------------------------------------- pause and resume
#
# A paused session dispatches nothing: its steps in flight finish and record their outcome, the
# next step waits `queued` (no job), retries and approval deadlines stand still (the sweeps skip
# them; resume gives them the time they had left). A paused definition holds new sessions'
# first steps `pending`. The fleet switch off holds every dispatch (the job answers "held").
# Reports and triggers are accepted throughout. Drain (an agent takes no new task) and cancel
# (the session ends) are different things: see the README.


def _actor_note(by: By) -> str:
    return f"by {by.label}" if by.actor == Actor.SYSTEM and by.label else ""


def _with_note(reason: str, by: By, default: str) -> str:
    return " ".join(part for part in (reason or default, _actor_note(by)) if part)


def session_pause(*, session: Session, by: By, reason: str = "") -> Session:
    """Pause a pending or running session (InvalidTransition otherwise). Its steps in flight finish."""
    with transaction.atomic():
        session = Session.objects.select_for_update(no_key=True).get(pk=session.pk)
        if session.status not in (SS.PENDING, SS.RUNNING):
            raise InvalidTransition(f"session {session.pk} is {session.status}; only a pending or running "
                                    "session can be paused")
        session_transition(session=session, to=SS.PAUSED, by=by, reason=_with_note(reason, by, "paused"))
    return session


def _resumed_deadline(deadline: datetime, *, stopped_at: datetime, now: datetime) -> datetime:
    """A deadline that stood still while paused: now plus the time it had left when its clock
    stopped (the pause, or its own start if that came later)."""
    return now + max(deadline - stopped_at, timedelta(0))


def session_resume(*, session: Session, by: By, reason: str = "") -> Session:
    """Resume a paused session where it stopped: its queued step is dispatched, its retry and
    approval deadlines get the time they had left, a held first step is released."""
    with transaction.atomic():
        tasks = list(Task.objects.select_for_update(no_key=True).filter(
            session=session, status__in=(S.QUEUED, S.RETRY_SCHEDULED, S.WAITING_APPROVAL, S.PENDING)))
        session = Session.objects.select_for_update(no_key=True).get(pk=session.pk)
        if session.status != SS.PAUSED:
            raise InvalidTransition(f"session {session.pk} is {session.status}; only a paused session can be resumed")
        now = timezone.now()
        paused_at = session.paused_at or now
        session_transition(session=session, to=_status_before_pause(session), by=by,
                           reason=_with_note(reason, by, "resumed"))
        definition_paused = WorkflowDefinition.objects.filter(pk=session.definition_id,
                                                              paused_at__isnull=False).exists()
        for task in tasks:
            stopped_at = max(paused_at, task.updated_at)
            if task.status == S.QUEUED:
                task_enqueue(task=task)
            elif task.status == S.RETRY_SCHEDULED and task.next_attempt_at is not None:
                Task.objects.filter(pk=task.pk, status=task.status).update(
                    next_attempt_at=_resumed_deadline(task.next_attempt_at, stopped_at=stopped_at, now=now))
            elif task.status == S.WAITING_APPROVAL and task.timeout_at is not None:
                Task.objects.filter(pk=task.pk, status=task.status).update(
                    timeout_at=_resumed_deadline(task.timeout_at, stopped_at=stopped_at, now=now))
            elif task.status == S.PENDING and not definition_paused:
                _release_held(task=task, session=session, by=by)
    return session


def _status_before_pause(session: Session) -> str:
    """Where a resume goes: the status the session was paused from (its history says), running or pending."""
    before = (TaskEvent.objects.filter(session=session, task__isnull=True, new_status=SS.PAUSED)
              .order_by("-created_at", "-id").values_list("old_status", flat=True).first())
    if before in (SS.RUNNING, SS.PENDING):
        return before
    return SS.RUNNING if session.started_at else SS.PENDING


def dispatch_hold(*, session: Session) -> str | None:
    """Why a queued task of `session` must not be dispatched now (paused), or None.

    For `dispatch._claim`, with the session row locked. A pending session of a paused
    definition is held too (a trigger that raced the pause).
    """
    if session.status == SS.PAUSED:
        return "session is paused"
    if (session.status == SS.PENDING and session.definition_id is not None  # None: the definition was deleted
            and _DEFINITION_PAUSED.first(definition_id=session.definition_id) is not None):
        return f"workflow definition '{session.workflow_id}' is paused"
    return None


# `dispatch_hold`'s read, compiled once per process (opscore_site/statements.py).
_DEFINITION_PAUSED = Statement(lambda definition_id: WorkflowDefinition.objects.filter(
    pk=definition_id, paused_at__isnull=False).values_list("pk", flat=True)[:1])


def fleet_dispatch_off() -> str | None:
    """Why nothing is dispatched (the fleet switch is off), or None. One primary-key read.

    `dispatch._claim` reads it after taking the attempt's reference time, so no attempt fenced
    after `fleet_pause` commits has a reference time later than the switch.
    """
    return fleet_off_note(FleetDispatch.objects.filter(pk=1).values_list("paused_at", flat=True).first())


def fleet_paused_at() -> Subquery:
    """The fleet switch's `paused_at`, for a claim that reads it in one statement with its other checks."""
    return Subquery(FleetDispatch.objects.filter(pk=1).values("paused_at")[:1])


def fleet_off_note(paused_at: datetime | None) -> str | None:
    """`fleet_dispatch_off` from the switch's `paused_at` as read."""
    return f"fleet dispatch is off since {paused_at.isoformat()}" if paused_at else None


def _control_event(*, scope: str, target: str, action: str, by: By, reason: str) -> None:
    ControlEvent.objects.create(scope=scope, target=target, action=action, actor=by.actor,
                                actor_user=by.user if by.actor == Actor.OPERATOR else None,
                                actor_label=by.who, reason=reason[:5000])


def _pause_switch(queryset, *, what: str, to: str, **changes: Any) -> None:
    """Flip a pause switch (definition or fleet) with compare-and-set, per PAUSE_ALLOWED."""
    old = "on" if to == "paused" else "paused"
    if to not in PAUSE_ALLOWED[old]:
        raise InvalidTransition(f"{what}: {old} -> {to} is not allowed")
    changed = queryset.filter(paused_at__isnull=(old == "on")).update(**changes)
    if changed != 1:
        state = "paused" if old == "on" else "not paused"
        raise InvalidTransition(f"{what} is already {state}")


def fleet_pause(*, by: By, reason: str = "") -> FleetDispatch:
    """Turn the fleet's dispatch off (maintenance): nothing is dispatched until `fleet_resume`.

    Steps in flight finish; reports and triggers are still accepted.
    """
    with transaction.atomic():
        FleetDispatch.objects.get_or_create(pk=1)
        _pause_switch(FleetDispatch.objects.filter(pk=1), what="fleet dispatch", to="paused",
                      paused_at=timezone.now(), paused_by=by.user if by.actor == Actor.OPERATOR else None,
                      paused_by_label=by.who, reason=reason[:5000])
        _control_event(scope=ControlEvent.Scope.FLEET, target="", action=ControlEvent.Action.PAUSED, by=by,
                       reason=reason)
    return FleetDispatch.current()


def fleet_resume(*, by: By, reason: str = "") -> int:
    """Turn the fleet's dispatch back on and kick the held work; returns how many agents were kicked."""
    with transaction.atomic():
        _pause_switch(FleetDispatch.objects.filter(pk=1), what="fleet dispatch", to="on",
                      paused_at=None, paused_by=None, paused_by_label="", reason="")
        _control_event(scope=ControlEvent.Scope.FLEET, target="", action=ControlEvent.Action.RESUMED, by=by,
                       reason=reason)
        agents = (Task.objects.filter(status=S.QUEUED).exclude(session__status__in=Session.NOT_DISPATCHING)
                  .order_by().values_list("agent_id", flat=True).distinct())
        kicked = 0
        for agent_id in sorted(agents):
            _kick_queued(agent_id=agent_id)
            kicked += 1
    return kicked


def definition_pause(*, definition: WorkflowDefinition, by: By, reason: str = "",
                     pause_sessions: bool = False) -> int:
    """Pause a definition: new triggers are accepted and held `pending` until it is resumed.

    With `pause_sessions` its pending and running sessions are paused too; returns how many.
    """
    with transaction.atomic():
        _pause_switch(WorkflowDefinition.objects.filter(pk=definition.pk), what=f"workflow '{definition.pk}'",
                      to="paused", paused_at=timezone.now(), paused_by_label=by.who,
                      pause_reason=reason[:5000])
        _control_event(scope=ControlEvent.Scope.DEFINITION, target=definition.pk,
                       action=ControlEvent.Action.PAUSED, by=by, reason=reason)
    definition.refresh_from_db(fields=["paused_at", "paused_by_label", "pause_reason"])
    if not pause_sessions:
        return 0
    return _each_session(Session.objects.filter(definition=definition, status__in=(SS.PENDING, SS.RUNNING)),
                         session_pause, by=by, reason=reason or f"workflow '{definition.pk}' paused")


def definition_resume(*, definition: WorkflowDefinition, by: By, reason: str = "",
                      resume_sessions: bool = False) -> int:
    """Resume a definition: its held sessions start. With `resume_sessions` its paused sessions
    resume too; returns how many sessions were released or resumed."""
    with transaction.atomic():
        _pause_switch(WorkflowDefinition.objects.filter(pk=definition.pk), what=f"workflow '{definition.pk}'",
                      to="on", paused_at=None, paused_by_label="", pause_reason="")
        _control_event(scope=ControlEvent.Scope.DEFINITION, target=definition.pk,
                       action=ControlEvent.Action.RESUMED, by=by, reason=reason)
    definition.refresh_from_db(fields=["paused_at", "paused_by_label", "pause_reason"])
    released = 0
    held = Task.objects.filter(session__definition=definition, session__status=SS.PENDING,
                               status__in=(S.PENDING, S.QUEUED)).values_list("pk", flat=True)
    for task_id in list(held):
        with transaction.atomic():
            task = (Task.objects.select_for_update(no_key=True)
                    .filter(pk=task_id, status__in=(S.PENDING, S.QUEUED)).first())
            if task is None:
                continue
            session = Session.objects.select_for_update(no_key=True).get(pk=task.session_id)
            if session.status != SS.PENDING:
                continue
            if task.status == S.QUEUED:
                task_enqueue(task=task)  # a trigger that raced the pause: its job was held
            else:
                _release_held(task=task, session=session, by=by)
            released += 1
    if resume_sessions:
        released += _each_session(Session.objects.filter(definition=definition, status=SS.PAUSED), session_resume,
                                  by=by, reason=reason or f"workflow '{definition.pk}' resumed")
    return released


def _each_session(queryset, change, *, by: By, reason: str) -> int:
    """Apply `change` (session_pause/session_resume) to each session; one that moved on meanwhile is skipped."""
    done = 0
    for session in list(queryset.only("pk")):
        try:
            change(session=session, by=by, reason=reason)
        except InvalidTransition:
            continue
        done += 1
    return done


def _release_held(*, task: Task, session: Session, by: By) -> None:
    """A held (`pending`) first step starts: an agent step is queued, an approval waits for its decision."""
    step = _spec_of(session).step(task.step_id)
    reason = f"released: workflow definition '{session.workflow_id}' resumed"
    if step.is_approval:
        task_transition(task=task, to=S.WAITING_APPROVAL, by=by, reason=reason,
                        timeout_at=timezone.now() + timedelta(seconds=step.timeoutSeconds))
        if session.status == SS.PENDING:
            session_transition(session=session, to=SS.RUNNING, by=By.system(), reason=f"approval '{step.taskId}' waits")
    else:
        task_transition(task=task, to=S.QUEUED, by=by, reason=reason)


# --------------------------------------------------------------------------- approvals


def approval_refusal(*, approvers: str | None, by: By) -> str | None:
    """Why `by` may not decide an approval step whose group is `approvers`, or None.

    Any operator decides when the step names no group; else members of `approvers` (and
    superusers). Service keys (automation) and the system's timeout may always decide.
    """
    if by.actor == Actor.AGENT:
        return "agents cannot decide approvals"
    if by.actor == Actor.OPERATOR and approvers:
        user = by.user
        if not user.is_superuser and not user.groups.filter(name=approvers).exists():
            return f"only members of the group '{approvers}' may decide this approval"
    return None


def approval_decide(*, task: Task, approve: bool, comment: str = "", by: By) -> Task:
    """Approve or reject a waiting approval step; the decision, comment and who become its result.

    Approved: the next step starts (or the session completes). Rejected: the step's fallback
    runs, or the session fails. A second decision raises InvalidTransition (409); a caller not
    among the step's approvers raises NotAnApprover (403).
    """
    with transaction.atomic():
        task = Task.objects.select_for_update(no_key=True).get(pk=task.pk)
        session = Session.objects.select_for_update(no_key=True).get(pk=task.session_id)
        if task.status != S.WAITING_APPROVAL:
            raise InvalidTransition(f"task {task.pk} is {task.status}: it is not an approval waiting for a decision")
        step = _spec_of(session).step(task.step_id)
        if refusal := approval_refusal(approvers=step.approvers, by=by):
            raise NotAnApprover(refusal)
        _approval_close(task=task, approve=approve, comment=comment, by=by)
    return task


def approval_time_out(*, task: Task) -> None:
    """The approval's deadline passed (`onTimeout: reject`): it is rejected by the system.
    The caller holds the task's lock (the scheduler's sweep)."""
    _approval_close(task=task, approve=False, by=By.system(),
                    comment=f"no decision within {task.timeout_seconds}s (onTimeout: reject)")


def _approval_close(*, task: Task, approve: bool, comment: str, by: By) -> None:
    now = timezone.now()
    decision = "approved" if approve else "rejected"
    result = {"decision": decision, "comment": comment[:5000], "decidedBy": by.who, "decidedAt": now.isoformat()}
    reason = f"{decision} by {by.who}" + (f": {comment}" if comment else "")
    if approve:
        task_transition(task=task, to=S.COMPLETED, by=by, reason=reason, result=result, finished_at=now,
                        timeout_at=None)
        _next_step(task=task, result=result)
    else:
        task_transition(task=task, to=S.REJECTED, by=by, reason=reason, result=result, finished_at=now,
                        timeout_at=None, last_error=reason[:5000])
        _fallback_or_fail(task=task, reason=reason, why="rejected", previous_result=result)
