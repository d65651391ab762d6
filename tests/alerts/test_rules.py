"""What each kind of rule finds (evaluate.CHECKS), without sending anything."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alerts import evaluate
from alerts.models import AlertDelivery, AlertRule
from sessions.models import Session, Task, TaskAttempt
from tests.agents.factories import AgentFactory
from tests.alerts.factories import AlertRuleFactory
from tests.sessions.factories import SessionFactory, TaskFactory

pytestmark = pytest.mark.django_db
K = AlertRule.Kind


def _check(rule: AlertRule, now=None):
    return evaluate.CHECKS[rule.kind](rule, now or timezone.now())


def _rule(**kwargs) -> AlertRule:
    return AlertRuleFactory(created_at=timezone.now() - timedelta(minutes=10), **kwargs)


def test_session_failed_counts_only_its_workflow_and_only_since_it_last_fired():
    rule = _rule(kind=K.SESSION_FAILED)
    wanted = SessionFactory(status=Session.Status.FAILED, ended_at=timezone.now())
    SessionFactory(status=Session.Status.FAILED, ended_at=timezone.now())
    SessionFactory(status=Session.Status.FAILED, ended_at=timezone.now() - timedelta(hours=1))  # before the rule
    SessionFactory(status=Session.Status.COMPLETED, ended_at=timezone.now())
    assert _check(rule).count == 2
    rule.workflow_id = wanted.workflow_id
    finding = _check(rule)
    assert finding.count == 1 and str(wanted.pk) in finding.items[0]
    rule.last_fired_at = timezone.now()
    assert _check(rule) is None


def test_task_dead_by_step():
    rule = _rule(kind=K.TASK_DEAD, step_id="charge")
    TaskFactory(status=Task.Status.DEAD, step_id="charge", finished_at=timezone.now(), last_error="boom")
    TaskFactory(status=Task.Status.DEAD, step_id="other", finished_at=timezone.now())
    finding = _check(rule)
    assert finding.count == 1 and "boom" in finding.items[0]


def test_agent_stale_only_with_a_task_in_flight():
    rule = _rule(kind=K.AGENT_STALE)
    old = timezone.now() - timedelta(hours=1)
    busy = AgentFactory(last_seen_at=old)
    TaskFactory(agent=busy, session=SessionFactory(agent=busy), status=Task.Status.RUNNING)
    AgentFactory(last_seen_at=old)  # stale but idle-handed
    fresh = AgentFactory(last_seen_at=timezone.now())
    TaskFactory(agent=fresh, session=SessionFactory(agent=fresh), status=Task.Status.DISPATCHED)
    finding = _check(rule)
    assert finding.count == 1 and busy.pk in finding.items[0]


def test_step_failures_above_n_in_the_window():
    rule = _rule(kind=K.STEP_FAILURES, threshold=2, window_minutes=5)
    now = timezone.now()
    session = SessionFactory()
    for number in range(3):
        task = TaskFactory(session=session, step_id="flaky")
        TaskAttempt.objects.create(task=task, number=number + 1, outcome=TaskAttempt.Outcome.FAILED,
                                   reference_at=now, ended_at=now - timedelta(minutes=1))
    old = TaskFactory(session=session, step_id="flaky")
    TaskAttempt.objects.create(task=old, number=1, outcome=TaskAttempt.Outcome.FAILED, reference_at=now,
                               ended_at=now - timedelta(minutes=30))  # outside the window
    other = TaskFactory(session=session, step_id="steady")
    TaskAttempt.objects.create(task=other, number=1, outcome=TaskAttempt.Outcome.FAILED, reference_at=now,
                               ended_at=now)
    finding = _check(rule, now)
    assert finding.count == 3 and finding.items == [f"step flaky of {task.session.workflow_id}: 3 failed attempt(s)"]
    rule.threshold = 3
    assert _check(rule, now) is None


def test_queue_depth_above_n():
    rule = _rule(kind=K.QUEUE_DEPTH, threshold=2)
    TaskFactory.create_batch(2, status=Task.Status.QUEUED)
    assert _check(rule) is None
    TaskFactory(status=Task.Status.QUEUED)
    assert _check(rule).count == 3


def test_a_condition_that_holds_alerts_again_only_after_the_interval(django_capture_on_commit_callbacks):
    rule = _rule(kind=K.QUEUE_DEPTH, threshold=0, interval_minutes=10)
    TaskFactory(status=Task.Status.QUEUED)
    now = timezone.now()
    with django_capture_on_commit_callbacks() as jobs:
        fired = [evaluate.run(now=now + timedelta(minutes=m)) for m in (0, 1, 9, 10, 11)]
    assert fired == [1, 0, 0, 1, 0]
    assert AlertDelivery.objects.filter(rule=rule).count() == 2
    assert len(jobs) == 2  # one delivery job each


def test_a_broken_rule_does_not_stop_the_others(monkeypatch, caplog):
    broken = _rule(kind=K.QUEUE_DEPTH, name="broken")
    _rule(kind=K.QUEUE_DEPTH, name="fine")
    TaskFactory(status=Task.Status.QUEUED)
    real = evaluate.CHECKS[K.QUEUE_DEPTH]

    def check(rule, now):
        if rule.pk == broken.pk:
            raise ValueError("bad rule")
        return real(rule, now)

    monkeypatch.setitem(evaluate.CHECKS, K.QUEUE_DEPTH, check)
    assert evaluate.run(now=timezone.now()) == 1
    assert "could not be checked" in caplog.text
