"""The scheduler's passes: due retries, attempts past their deadline, tasks that waited too long
for an agent, lost dispatch jobs (and waiting tasks to route again, probes that ended without an outcome).

May read any Task and lock the rows it acts on (SKIP LOCKED); every change of `status`
or `outcome` goes through `sessions/engine.py`. Called by `opscore_scheduler` (every
second) and `opscore_requeue_stuck` (one pass, for when the scheduler was down).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from agents.models import Agent
from opscore_site import metrics
from sessions import engine
from sessions.engine import By
from sessions.models import Session, Task

logger = logging.getLogger(__name__)

S = Task.Status

SWEEP_BATCH = 100


@dataclass
class SweepCounts:
    retries_due: int = 0
    timed_out: int = 0
    queue_timeouts: int = 0
    requeued: int = 0
    approvals_timed_out: int = 0
    alerts_fired: int = 0  # alert rules that fired (alerts/evaluate.py); not a task count
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"retries_due": self.retries_due, "timed_out": self.timed_out, "queue_timeouts": self.queue_timeouts,
                "requeued": self.requeued, "approvals_timed_out": self.approvals_timed_out}


def _sweep(queryset, action, *, limit: int) -> list[Task]:
    """Claim up to `limit` rows (SKIP LOCKED, so several schedulers share the work; SQLite
    ignores locking) and act on each in its own savepoint: one bad row is logged and
    skipped instead of blocking the sweep on every pass."""
    done = []
    with transaction.atomic():
        for task in list(queryset.select_for_update(no_key=True, skip_locked=True, of=("self",))[:limit]):
            try:
                with transaction.atomic():
                    action(task)
            except Exception:
                logger.exception("scheduler could not handle task %s", task.pk)
                continue
            done.append(task)
    return done


def _requeue_due(task: Task) -> None:
    engine.task_transition(task=task, to=S.QUEUED, by=By.system(), reason="retry due", next_attempt_at=None)


def _time_out(task: Task) -> None:
    # No report at all since the dispatch is a lost forward (or a dead agent): the agent's fault.
    # An agent that reported `active` is working, only slowly: the task's.
    lost = task.status == S.DISPATCHED
    if engine.attempt_failed(task=task, number=task.attempt, permanent=False, by=By.system(), agent_fault=lost,
                             error=f"no outcome within {task.timeout_seconds}s (attempt {task.attempt}"
                                   f"{'; no report at all: a lost forward?' if lost else ''})"):
        metrics.task_timed_out()


def due_retries(*, now: datetime):
    """Tasks whose retry is due (what `sweep_due_retries` acts on); a paused session's wait."""
    return (Task.objects.filter(status=S.RETRY_SCHEDULED, next_attempt_at__lte=now)
            .exclude(session__status=Session.Status.PAUSED).order_by("next_attempt_at"))


def sweep_due_retries(*, now: datetime, limit: int = SWEEP_BATCH) -> int:
    return len(_sweep(due_retries(now=now), _requeue_due, limit=limit))


def overdue_tasks(*, now: datetime):
    """Tasks in flight past their deadline (what `sweep_timeouts` acts on)."""
    return Task.objects.filter(status__in=Task.IN_FLIGHT, timeout_at__lte=now).order_by("timeout_at")


def sweep_timeouts(*, now: datetime, limit: int = SWEEP_BATCH) -> int:
    return len(_sweep(overdue_tasks(now=now), _time_out, limit=limit))


def waiting_too_long(*, now: datetime):
    """Queued tasks no agent could take before their deadline (what `sweep_queue_timeouts` acts on)."""
    # A paused session's wait stands still (its resume gives the deadline the time it had left).
    return (Task.objects.filter(status=S.QUEUED, waiting_since__isnull=False, queue_deadline_at__lte=now)
            .exclude(session__status=Session.Status.PAUSED).order_by("queue_deadline_at"))


def sweep_queue_timeouts(*, now: datetime, limit: int = SWEEP_BATCH) -> int:
    return len(_sweep(waiting_too_long(now=now), lambda task: engine.task_queue_timeout(task=task), limit=limit))


WAITING_RECHECK_SECONDS = 10


def sweep_waiting(*, now: datetime, limit: int = SWEEP_BATCH, dry_run: bool = False) -> list[Task]:
    """Waiting tasks whose job has not run for WAITING_RECHECK_SECONDS: their job routes them again.

    An idle report or a release kicks waiting work at once; this catches what no report announces
    (an undrain, a cool-down that ended, an agent that registered the capability).
    """
    cutoff = now - timedelta(seconds=WAITING_RECHECK_SECONDS)
    queryset = (Task.objects.filter(status=S.QUEUED, waiting_since__isnull=False)
                .exclude(session__status__in=Session.NOT_DISPATCHING)
                .filter(Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True)).order_by("waiting_since"))
    if dry_run:
        return list(queryset[:limit])
    return _sweep(queryset, lambda task: engine.task_enqueue(task=task), limit=limit)


def sweep_stuck_probes(*, limit: int = SWEEP_BATCH) -> int:
    """Probing agents whose probe is no longer in flight (it ended where the agent's row was locked):
    back to quarantined, cool-down over, so the next task probes again."""
    in_flight = Task.objects.filter(status__in=Task.IN_FLIGHT, probe=True).values("agent_id")
    done = 0
    with transaction.atomic():
        for agent in (Agent.objects.select_for_update(no_key=True, skip_locked=True)
                      .filter(quarantine_state=Agent.Quarantine.PROBING).exclude(pk__in=in_flight)[:limit]):
            done += engine.probe_abandoned(agent=agent)
    return done


def overdue_approvals(*, now: datetime):
    """Approvals past their deadline (what `sweep_approval_timeouts` acts on); a paused session's wait."""
    return (Task.objects.filter(status=S.WAITING_APPROVAL, timeout_at__lte=now)
            .exclude(session__status=Session.Status.PAUSED).order_by("timeout_at"))


def sweep_approval_timeouts(*, now: datetime, limit: int = SWEEP_BATCH) -> int:
    return len(_sweep(overdue_approvals(now=now), lambda task: engine.approval_time_out(task=task), limit=limit))


def job_queue_wait(*, now: datetime) -> float:
    """Seconds the oldest job still waiting in this cluster's queue has waited (0 when none waits).

    A waiting job's `lock` is its enqueue time (django-q2's ORM broker), or the end of a lease
    that ran out (the job is delivered again); a leased job's lock lies in the future."""
    from django.db.models import Min
    from django_q.conf import Conf
    from django_q.models import OrmQ

    oldest = OrmQ.objects.using(Conf.ORM).filter(key=Conf.CLUSTER_NAME, lock__lt=now).aggregate(at=Min("lock"))["at"]
    return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0


def sweep_lost_jobs(*, now: datetime, limit: int = SWEEP_BATCH, dry_run: bool = False) -> list[Task]:
    """Queued tasks with no job on its way (none enqueued, one that ended leaving them queued, or
    one not run for OPSCORE_LOST_JOB_SECONDS) although a job would now decide something.

    Covers a worker killed mid-job, a job that found the agent busy and was never kicked
    again (an agent whose `idle` after an `error` was lost: `engine.free_agents`), an agent
    that deregistered (the job fails the task) and a session ended while the task was queued
    (the job cancels it). Re-enqueueing is safe: the job does nothing
    unless the task is queued. A paused session's tasks wait for its resume, and while the
    fleet's dispatch is off only the jobs that would end a task are re-enqueued.

    Two limits keep the sweep from feeding a queue that is only behind (seen at 146 agents and
    5,000 sessions: 100 jobs added every pass, up to 27 jobs for one task, 16,500 jobs queued):
    - nothing while the queue's oldest waiting job has waited longer than the lost-job window
      (`job_queue_wait`): a job not run by then is waiting in the queue, not lost, and every job
      added would only wait behind it;
    - at most one task per agent per pass among those whose job would dispatch: a second job
      for the same agent could only answer busy (the first task's end kicks the next).
    """
    window = settings.OPSCORE_LOST_JOB_SECONDS
    if job_queue_wait(now=now) > window:
        return []
    cutoff = now - timedelta(seconds=window)
    # The claim's rule (engine.free_agents): idle, or an `idle` lost after `active`/`error`.
    ready_agents = Agent.objects.filter(engine.free_agents(now=now), deregistered_at__isnull=True,
                                        drained_at__isnull=True)
    gone_agents = Agent.objects.filter(deregistered_at__isnull=False)  # their job fails the task
    busy_agents = Task.objects.filter(status__in=Task.IN_FLIGHT).values("agent_id")
    # An agent with a job on its way (engine.job_pending) is not stuck: that job dispatches.
    expecting_agents = Task.objects.filter(engine.jobs_on_their_way(now=now)).values("agent_id")
    would_decide = Q(agent__in=gone_agents) | Q(session__status__in=Session.TERMINAL)
    if engine.fleet_dispatch_off() is None:
        would_decide |= Q(agent__in=ready_agents) & ~Q(session__status=Session.Status.PAUSED)
    queryset = (Task.objects.filter(status=S.QUEUED)
                .filter(would_decide)
                .filter(Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True))
                .exclude(agent_id__in=busy_agents).exclude(agent_id__in=expecting_agents).order_by("created_at"))
    # The oldest task of each agent whose job would dispatch; every task whose job only ends it
    # (its agent gone, its session ended). The rows' conditions are checked again under the lock.
    picked, agents_taken = [], set()
    for pk, agent_id, gone, session_status in queryset.values_list(
            "pk", "agent_id", "agent__deregistered_at", "session__status")[:limit * 10]:
        if gone is None and session_status not in Session.TERMINAL:
            if agent_id in agents_taken:
                continue
            agents_taken.add(agent_id)
        picked.append(pk)
        if len(picked) == limit:
            break
    queryset = queryset.filter(pk__in=picked)
    if dry_run:
        return list(queryset)
    return _sweep(queryset, lambda task: engine.task_enqueue(task=task), limit=limit)


def scheduler_preview(*, now: datetime, limit: int = SWEEP_BATCH) -> dict[str, list[Task]]:
    """What one pass of the scheduler would act on, changing nothing (for dry runs and listings)."""
    return {
        "retries_due": list(due_retries(now=now)[:limit]),
        "timed_out": list(overdue_tasks(now=now)[:limit]),
        "queue_timeouts": list(waiting_too_long(now=now)[:limit]),
        "requeued": sweep_lost_jobs(now=now, limit=limit, dry_run=True) + sweep_waiting(now=now, limit=limit,
                                                                                        dry_run=True),
        "approvals_timed_out": list(overdue_approvals(now=now)[:limit]),
    }


def scheduler_tick(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> SweepCounts:
    """One pass of the scheduler loop, at most `limit` tasks of each kind. Each sweep commits on its own."""
    now = now or timezone.now()
    counts = SweepCounts()
    sweeps = (
        ("retries_due", lambda: sweep_due_retries(now=now, limit=limit)),
        ("timed_out", lambda: sweep_timeouts(now=now, limit=limit)),
        ("queue_timeouts", lambda: sweep_queue_timeouts(now=now, limit=limit)),
        ("requeued", lambda: len(sweep_lost_jobs(now=now, limit=limit)) + len(sweep_waiting(now=now, limit=limit))
         + sweep_stuck_probes(limit=limit)),
        ("alerts_fired", lambda: import_string("alerts.evaluate.run")(now=now)),  # alerts/evaluate.py
        ("approvals_timed_out", lambda: sweep_approval_timeouts(now=now, limit=limit)),
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
