"""The scheduler's alert pass: check each enabled rule that may fire, fire those whose condition holds,
and enqueue the delivery retries that are due. Called once per scheduler pass (sessions/sweeps.py).

A rule fires at most once per `interval_minutes`: a rule still inside its interval is not even checked.
Event rules (a session failed, a task died) count what happened since the rule last fired (or was
created), so nothing is lost while it is quiet; condition rules check what holds now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import InterfaceError, OperationalError
from django.db.models import Count
from django.utils import timezone

from agents.models import Agent
from alerts.models import AlertRule
from alerts.services import MAX_ITEMS, Finding, alert_fire, deliveries_enqueue_due
from sessions.models import Session, Task, TaskAttempt

logger = logging.getLogger(__name__)

K = AlertRule.Kind


def _since(rule: AlertRule) -> datetime:
    return rule.last_fired_at or rule.created_at


def _session_failed(rule: AlertRule, now: datetime) -> Finding | None:
    sessions = Session.objects.filter(status=Session.Status.FAILED, ended_at__gt=_since(rule), ended_at__lte=now)
    if rule.workflow_id:
        sessions = sessions.filter(workflow_id=rule.workflow_id)
    count = sessions.count()
    if count <= rule.threshold:
        return None
    items = [f"session {s.pk} of {s.workflow_id} for {s.agent_id}: {s.error[:200]}"
             for s in sessions.order_by("-ended_at")[:MAX_ITEMS]]
    return Finding(count=count, summary=f"{count} session(s) failed", items=items)


def _task_dead(rule: AlertRule, now: datetime) -> Finding | None:
    tasks = Task.objects.filter(status=Task.Status.DEAD, finished_at__gt=_since(rule), finished_at__lte=now)
    if rule.workflow_id:
        tasks = tasks.filter(session__workflow_id=rule.workflow_id)
    if rule.step_id:
        tasks = tasks.filter(step_id=rule.step_id)
    count = tasks.count()
    if count <= rule.threshold:
        return None
    items = [f"task {t.pk} (step {t.step_id} of session {t.session_id}, agent {t.agent_id}): {t.last_error[:200]}"
             for t in tasks.order_by("-finished_at")[:MAX_ITEMS]]
    return Finding(count=count, summary=f"{count} task(s) dead", items=items)


def _agent_stale(rule: AlertRule, now: datetime) -> Finding | None:
    agents = Agent.objects.stale(now=now).filter(tasks__status__in=tuple(Task.IN_FLIGHT)).distinct()
    count = agents.count()
    if count <= rule.threshold:
        return None
    items = [f"agent {a.pk}: last report {a.last_seen_at.isoformat() if a.last_seen_at else 'never'}"
             for a in agents.order_by("last_seen_at")[:MAX_ITEMS]]
    return Finding(count=count, summary=f"{count} stale agent(s) with a task in flight", items=items)


def _step_failures(rule: AlertRule, now: datetime) -> Finding | None:
    window = timedelta(minutes=max(rule.window_minutes, 1))
    attempts = TaskAttempt.objects.filter(
        outcome__in=(TaskAttempt.Outcome.FAILED, TaskAttempt.Outcome.REJECTED),
        ended_at__gt=now - window, ended_at__lte=now)
    if rule.workflow_id:
        attempts = attempts.filter(task__session__workflow_id=rule.workflow_id)
    if rule.step_id:
        attempts = attempts.filter(task__step_id=rule.step_id)
    steps = (attempts.order_by().values("task__session__workflow_id", "task__step_id").annotate(n=Count("pk"))
             .filter(n__gt=rule.threshold).order_by("-n"))
    rows = list(steps[:MAX_ITEMS])
    if not rows:
        return None
    items = [f"step {row['task__step_id']} of {row['task__session__workflow_id']}: {row['n']} failed attempt(s)"
             for row in rows]
    return Finding(count=rows[0]["n"],
                   summary=f"step {rows[0]['task__step_id']} failed {rows[0]['n']} times in "
                           f"{rule.window_minutes} min (threshold {rule.threshold})", items=items)


def _queue_depth(rule: AlertRule, now: datetime) -> Finding | None:
    depth = Task.objects.filter(status=Task.Status.QUEUED).count()
    if depth <= rule.threshold:
        return None
    return Finding(count=depth, summary=f"{depth} task(s) queued (threshold {rule.threshold})")


CHECKS: dict[str, Callable[[AlertRule, datetime], Finding | None]] = {
    K.SESSION_FAILED: _session_failed,
    K.TASK_DEAD: _task_dead,
    K.AGENT_STALE: _agent_stale,
    K.STEP_FAILURES: _step_failures,
    K.QUEUE_DEPTH: _queue_depth,
}


def may_fire(rule: AlertRule, now: datetime) -> bool:
    """Whether `rule` is outside the interval since it last fired."""
    return rule.last_fired_at is None or now >= rule.last_fired_at + timedelta(minutes=rule.interval_minutes)


def run(*, now: datetime | None = None) -> int:
    """One alert pass: the number of rules that fired. A rule whose check fails is logged and skipped."""
    now = now or timezone.now()
    fired = 0
    for rule in AlertRule.objects.filter(enabled=True):
        if not may_fire(rule, now):
            continue
        check = CHECKS.get(rule.kind)
        if check is None:
            logger.error("alert rule %s has an unknown kind %r", rule.pk, rule.kind)
            continue
        try:
            finding = check(rule, now)
            if finding is not None and alert_fire(rule=rule, finding=finding, now=now) is not None:
                fired += 1
        except (OperationalError, InterfaceError):
            raise  # the database itself: the scheduler reports it once
        except Exception:  # one broken rule must not stop the others
            logger.exception("alert rule %s could not be checked", rule.pk)
    deliveries_enqueue_due(now=now)
    return fired
