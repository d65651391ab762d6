"""Alert writes: fire a rule (a delivery row and its job), send one attempt, schedule retries, send a test."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from alerts import outbound
from alerts.models import AlertDelivery, AlertRule

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 10.0  # attempt n+1 is due 10 s * 2^(n-1) after attempt n failed: 10, 20, 40, 80 s
MAX_ITEMS = 10  # lines of detail an alert carries


@dataclass(frozen=True)
class Finding:
    """What a rule found: a count above its threshold, and a few lines naming what it is about."""

    count: int
    summary: str
    items: list[str] = field(default_factory=list)


def alert_payload(*, rule: AlertRule, finding: Finding, now: datetime, is_test: bool = False) -> dict:
    """The alert as the signed webhook's JSON body (the Slack text and the email are made from it)."""
    title = f"[Ops-Core] {'TEST: ' if is_test else ''}{rule.name}: {finding.summary}"
    return {
        "title": title,
        "text": "\n".join([title, *finding.items[:MAX_ITEMS]]),
        "rule": {"id": rule.pk, "name": rule.name, "kind": rule.kind, "path": f"/alerts/{rule.pk}/"},
        "count": finding.count,
        "items": finding.items[:MAX_ITEMS],
        "fired_at": now.isoformat(),
        "test": is_test,
    }


def _enqueue(delivery: AlertDelivery) -> None:
    # On commit only, or the worker may load a row it cannot see yet.
    transaction.on_commit(lambda: async_task("alerts.tasks.deliver_alert_job", delivery.pk,
                                             task_name=f"alert-delivery-{delivery.pk}"))


def alert_fire(*, rule: AlertRule, finding: Finding, now: datetime) -> AlertDelivery | None:
    """Record that `rule` fired at `now` and enqueue its delivery; None if it already fired this interval
    (another scheduler won the race: the compare-and-set on last_fired_at is the guard against storms)."""
    with transaction.atomic():
        claimed = AlertRule.objects.filter(pk=rule.pk, last_fired_at=rule.last_fired_at).update(last_fired_at=now)
        if not claimed:
            return None
        rule.last_fired_at = now
        delivery = AlertDelivery.objects.create(rule=rule, channel=rule.channel, created_at=now,
                                                payload=alert_payload(rule=rule, finding=finding, now=now))
        _enqueue(delivery)
    return delivery


def alert_rule_save(*, rule: AlertRule, by=None) -> AlertRule:
    """Save a rule from the form (its checks are AlertRuleForm's); the creator is recorded once."""
    rule.updated_at = timezone.now()
    if rule.pk is None and by is not None and by.is_authenticated:
        rule.created_by = by
    rule.save()
    return rule


def alert_send_test(*, rule: AlertRule) -> AlertDelivery:
    """A test alert through the rule's channel, now; it does not count as the rule firing."""
    now = timezone.now()
    finding = Finding(count=0, summary="test alert", items=["Sent from the rule's page to check the channel."])
    with transaction.atomic():
        delivery = AlertDelivery.objects.create(rule=rule, channel=rule.channel, is_test=True, created_at=now,
                                                payload=alert_payload(rule=rule, finding=finding, now=now,
                                                                      is_test=True))
        _enqueue(delivery)
    return delivery


def _send(rule: AlertRule, channel: str, payload: dict) -> int | None:
    """One attempt through `channel`: the HTTP status (None for email), or AlertSendError."""
    if channel == AlertRule.Channel.EMAIL:
        outbound.email(subject=payload["title"], text=payload["text"], recipients=rule.recipients)
        return None
    if channel == AlertRule.Channel.SLACK:
        return outbound.post(url=rule.target, body=json.dumps({"text": payload["text"]}).encode())
    body = json.dumps(payload, separators=(",", ":")).encode()
    return outbound.post(url=rule.target, body=body, headers=outbound.signature_headers(secret=rule.secret,
                                                                                        body=body))


def delivery_send(*, delivery_id: int) -> str:
    """Send one delivery attempt and record its outcome; a transient failure schedules the next attempt.

    Safe to run twice (django-q2 delivers at least once): only a `pending` row is claimed.
    """
    if not AlertDelivery.objects.filter(pk=delivery_id, result=AlertDelivery.Result.PENDING).update(
            result=AlertDelivery.Result.SENDING):
        return "skipped"
    delivery = AlertDelivery.objects.select_related("rule").get(pk=delivery_id)
    try:
        status = _send(delivery.rule, delivery.channel, delivery.payload)
    except outbound.AlertSendError as exc:
        return _delivery_failed(delivery, exc)
    AlertDelivery.objects.filter(pk=delivery.pk).update(result=AlertDelivery.Result.SENT, http_status=status,
                                                        sent_at=timezone.now())
    return AlertDelivery.Result.SENT


def _delivery_failed(delivery: AlertDelivery, exc: outbound.AlertSendError) -> str:
    now = timezone.now()
    last = exc.permanent or delivery.attempt >= MAX_ATTEMPTS
    with transaction.atomic():
        AlertDelivery.objects.filter(pk=delivery.pk).update(
            result=AlertDelivery.Result.FAILED, http_status=exc.http_status, error=exc.message[:2000],
            sent_at=now)
        if not last:
            AlertDelivery.objects.create(
                rule=delivery.rule, channel=delivery.channel, is_test=delivery.is_test,
                attempt=delivery.attempt + 1, result=AlertDelivery.Result.RETRY_SCHEDULED,
                payload=delivery.payload, created_at=now,
                next_attempt_at=now + timedelta(seconds=RETRY_BASE_SECONDS * 2 ** (delivery.attempt - 1)))
    logger.warning("alert delivery %s (rule %s, attempt %s) failed%s: %s", delivery.pk, delivery.rule_id,
                   delivery.attempt, "" if last else "; retry scheduled", exc.message)
    return AlertDelivery.Result.FAILED


def deliveries_enqueue_due(*, now: datetime, limit: int = 100) -> int:
    """Enqueue the retries that are due (called by the scheduler's pass); the count enqueued."""
    due = list(AlertDelivery.objects.filter(result=AlertDelivery.Result.RETRY_SCHEDULED,
                                            next_attempt_at__lte=now).values_list("pk", flat=True)[:limit])
    enqueued = 0
    for pk in due:
        with transaction.atomic():
            # Compare-and-set: several schedulers may see the same due row.
            if AlertDelivery.objects.filter(pk=pk, result=AlertDelivery.Result.RETRY_SCHEDULED).update(
                    result=AlertDelivery.Result.PENDING):
                _enqueue(AlertDelivery(pk=pk))
                enqueued += 1
    return enqueued
