"""Dispatch: claim a queued Task, fence the attempt, POST it to AgentKit once, record the answer.

The body of the dispatch job (`sessions.tasks.send_task_job`). May lock the agent, task and
session rows, create the TaskAttempt fence and write AgentKit's answer (`http_status`,
`error`) on it; every change of `status` or `outcome` goes through `sessions/engine.py`.
Talks HTTP only through `agents/agentkit.py`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Exists, F, Q
from django.utils import timezone

from agents import agentkit
from agents.models import Agent
from opscore_site.statements import Statement
from sessions import engine
from sessions.engine import By
from sessions.models import Session, Task, TaskAttempt

logger = logging.getLogger(__name__)

S = Task.Status
SS = Session.Status
Outcome = TaskAttempt.Outcome


@dataclass
class DispatchResult:
    outcome: str  # "dispatched", "unanswered", "skipped", "busy", "unavailable", "held", "failed", "rerouted", "waiting"
    detail: str = ""


def task_dispatch(*, task_id) -> DispatchResult:
    """The dispatch job's body: claim, fence and commit, then POST to AgentKit once."""
    claimed = _claim(task_id)
    if isinstance(claimed, DispatchResult):
        logger.info("dispatch of task %s: %s (%s)", task_id, claimed.outcome, claimed.detail)
        return claimed
    task, attempt = claimed
    message = agentkit.dispatch_message(
        task_name=task.step_id, task_parameters=task.payload, session_id=str(task.session_id),
        task_id=str(task.pk), attempt=attempt.number,
    )
    try:
        accepted = agentkit.run_task(agent_id=task.agent_id, message=message)
    except agentkit.AgentKitError as exc:
        if exc.maybe_delivered:
            _record_unanswered(attempt=attempt, exc=exc)
            return DispatchResult("unanswered", exc.message)
        _record_error(attempt=attempt, exc=exc)
        return DispatchResult("failed", exc.message)
    _record_accepted(attempt=attempt, http_status=accepted.http_status)
    return DispatchResult("dispatched")


def _claim(task_id) -> tuple[Task, TaskAttempt] | DispatchResult:
    """Lock the task and its agent, check the agent, and fence a new attempt. Commits."""
    if not isinstance(task_id, uuid.UUID):
        try:
            task_id = uuid.UUID(str(task_id))
        except ValueError:
            return DispatchResult("skipped", f"no such queued task: {task_id!r} is not a task id")
    try:
        with transaction.atomic(), engine.events_in_one_insert():
            return _claim_locked(task_id)
    except IntegrityError:
        # The one-in-flight constraint or the attempt fence: another worker won (the locks make it
        # unreachable in practice; the constraints guard the rule).
        return DispatchResult("busy", "another dispatch won the race")


# The three rows in one locking statement, in the lock order of sessions/engine.py: PostgreSQL
# locks a row's marks in the order of FOR UPDATE OF (agent, task, session), and re-checks the
# conditions on the newest versions (a task dispatched, cancelled or routed to another agent
# meanwhile is not found). The agent lock also serialises dispatches to one agent. Compiled once
# per process (opscore_site/statements.py), as are the claim's other reads.
_LOCK = Statement(lambda task_id, lost_since: (
    Task.objects.select_related("agent", "session")
    .select_for_update(no_key=True, of=("agent", "self", "session"))
    .annotate(agent_free=engine.free_column(lost_since=lost_since, via="agent__"))  # its state lets it take one
    .filter(pk=task_id, status=S.QUEUED).order_by("pk")[:1]))


def _checks(agent_id: str, since: datetime | None = None):
    """One read for the rest of the claim: a task in flight on the agent, the fleet switch, a
    cancelled task that may still hold the agent (`_cancelled_candidates`)."""
    return Agent.objects.filter(pk=agent_id).annotate(
        in_flight=Exists(Task.objects.filter(agent_id=agent_id, status__in=Task.IN_FLIGHT)),
        fleet_paused_at=engine.fleet_paused_at(),
        maybe_held=Exists(_cancelled_candidates(agent_id=agent_id, since=since)),
    ).values_list("in_flight", "fleet_paused_at", "maybe_held")


_CHECKS = Statement(lambda agent_id: _checks(agent_id))  # an agent that never reported
_CHECKS_SINCE = Statement(lambda agent_id, since: _checks(agent_id, since))


def _claim_locked(task_id: uuid.UUID) -> tuple[Task, TaskAttempt] | DispatchResult:
    """`_claim` inside its transaction: the locks in engine order, the checks, the fence."""
    task = _LOCK.first(task_id=task_id, lost_since=engine.lost_idle_since(timezone.now()))
    if task is None:
        return DispatchResult("skipped", "no such queued task")
    agent, session = task.agent, task.session
    agent.free = task.agent_free
    if session.is_terminal:
        # A step queued while its session was being cancelled: it must not wait forever.
        engine.task_transition(task=task, to=S.CANCELLED, by=By.system(), reason=f"session is {session.status}",
                               finished_at=timezone.now())
        return DispatchResult("skipped", f"session is {session.status}")
    if (hold := engine.dispatch_hold(session=session)) is not None:
        return _left_queued(task, "held", hold)  # paused: resuming enqueues the task again
    now = timezone.now()
    routed = engine.task_route(task=task, agent=agent, session=session, now=now)
    if routed is not None:
        return DispatchResult(routed.outcome, routed.detail)
    if not agent.free:  # idle, or its idle was lost (engine.free_agents)
        return _left_queued(task, "busy", f"agent is {agent.state or 'unknown'}")
    # One read for the rest (after `now`, as fleet_dispatch_off requires): a task in flight on
    # the agent, the fleet switch, a cancelled task that may still hold the agent.
    if agent.state_received_at is None:
        in_flight, fleet_paused_at, maybe_held = _CHECKS.first(agent_id=agent.pk)
    else:
        in_flight, fleet_paused_at, maybe_held = _CHECKS_SINCE.first(agent_id=agent.pk, since=agent.state_received_at)
    if in_flight:
        return _left_queued(task, "busy", "agent has a task in flight")
    if (off := engine.fleet_off_note(fleet_paused_at)) is not None:
        return _left_queued(task, "held", off)
    held = _held_by_cancelled_task(agent=agent, now=now) if maybe_held else None
    if held is not None:
        return _left_queued(task, "busy", f"agent may still be working on cancelled task {held.pk}")
    number = task.attempt + 1
    probe = engine.probe_claim(agent=agent, task=task)
    attempt = TaskAttempt(task=task, number=number, reference_at=now, agent=agent)
    engine.ATTEMPTS.save(attempt)
    engine.task_transition(
        task=task, to=S.DISPATCHED, by=By.system(),
        reason=f"attempt {number} sent to AgentKit" + (" (probe after quarantine)" if probe else ""),
        attempt=number, reference_at=now, dispatched_at=now, started_at=None,
        timeout_at=now + timedelta(seconds=task.timeout_seconds), next_attempt_at=None,
        waiting_since=None, queue_deadline_at=None, probe=probe,
    )
    if session.status == SS.PENDING:
        engine.session_transition(session=session, to=SS.RUNNING, by=By.system(), reason="first task dispatched")
    return task, attempt


def _left_queued(task: Task, outcome: str, detail: str) -> DispatchResult:
    """The job ends with the task still queued: whatever frees the agent (its report, the end of its
    task, a resume, the cancelled attempt's deadline through the lost-job sweep) enqueues it again."""
    engine.task_job_ended(task=task)
    return DispatchResult(outcome, detail)


def _cancelled_candidates(*, agent_id: str, since: datetime | None):
    """Tasks of the agent cancelled in flight, sent after its last report (received at `since`,
    None if it never reported), that AgentKit did not refuse."""
    # The four `attempts__` conditions must stay in this one filter(): each filter() call on a
    # multi-valued relation joins its own attempts row, so split up they could be met by
    # different attempts (an earlier refused one, a later cancelled one) instead of the latest.
    candidates = Task.objects.filter(
        Q(attempts__http_status__isnull=True) | Q(attempts__http_status__lt=300),
        agent_id=agent_id, status=S.CANCELLED, attempts__number=F("attempt"),
        attempts__outcome=Outcome.CANCELLED,
    )
    if since is not None:
        candidates = candidates.filter(reference_at__gte=since)
    return candidates


def _held_by_cancelled_task(*, agent: Agent, now: datetime) -> Task | None:
    """A task cancelled in flight that its agent may still be working on, or None.

    An agent reports only after its work (AGENTKIT.md section 4), so cancelling a task
    does not free the agent: its late `active`/`idle` would be taken for the outcome of
    the next task sent to it. The cancelled attempt holds the agent until the agent
    reports a state received after the attempt went out, or the attempt's deadline
    passes (a lost forward), unless AgentKit refused the POST (it never reached the agent).
    """
    candidates = _cancelled_candidates(agent_id=agent.pk, since=agent.state_received_at)
    for task in candidates.only("pk", "reference_at", "timeout_seconds"):
        if task.reference_at + timedelta(seconds=task.timeout_seconds) > now:
            return task
    return None


# AgentKit's answer closes the attempt only if nothing closed it during the POST: an agent
# quick enough to report before the answer, the timeout sweep or an operator's cancel. An
# attempt closed first keeps its outcome and only gains what AgentKit said.


def _record_accepted(*, attempt: TaskAttempt, http_status: int) -> None:
    """AgentKit took the task (2xx): `sending` -> `accepted`, with AgentKit's status."""
    if not engine.attempt_transition(task_id=attempt.task_id, number=attempt.number, to=Outcome.ACCEPTED,
                                     http_status=http_status):
        TaskAttempt.objects.filter(pk=attempt.pk, http_status__isnull=True).update(http_status=http_status)


def _record_unanswered(*, attempt: TaskAttempt, exc: agentkit.AgentKitError) -> None:
    """The POST went out and no answer came back: AgentKit may have taken the task, so a second
    POST could run it twice. The attempt stays `sending` with the error noted, the task stays
    dispatched, and the agent's reports or the step timeout (the timeout sweep) decide it."""
    logger.warning("AgentKit did not answer the dispatch of task %s attempt %s (%s): the agent's reports "
                   "or the step timeout decide it", attempt.task_id, attempt.number, exc.message)
    TaskAttempt.objects.filter(pk=attempt.pk, outcome=Outcome.SENDING, error="").update(error=exc.message[:5000])


def _record_error(*, attempt: TaskAttempt, exc: agentkit.AgentKitError) -> None:
    """AgentKit refused or could not be reached: the attempt fails (retry, or dead if permanent).

    A cancelled attempt keeps the error: a refusal means the agent never got the task, so
    it does not hold the agent (`_held_by_cancelled_task`).
    """
    with transaction.atomic():
        # The lock order of sessions/engine.py: the agent first (its quarantine check), then the task.
        Agent.objects.select_for_update(no_key=True).filter(pk=attempt.agent_id).first()
        failed = engine.attempt_failed(task_id=attempt.task_id, number=attempt.number, error=exc.message,
                                       permanent=exc.permanent, http_status=exc.http_status, by=By.system(),
                                       agent_fault=engine.is_agent_fault_answer(exc.http_status))
        if failed is None:
            TaskAttempt.objects.filter(pk=attempt.pk, outcome=Outcome.CANCELLED).update(
                http_status=exc.http_status, error=exc.message[:5000])
