"""Alerts end to end inside one process: the scheduler's pass fires a rule, the django-q2 job (sync) sends it
to a real HTTP receiver on 127.0.0.1 (or Django's locmem mail backend), and each attempt is a row."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from agents.webhook import verify
from alerts import evaluate
from alerts.models import AlertDelivery, AlertRule
from alerts.outbound import SIGNATURE_HEADER, TIMESTAMP_HEADER
from alerts.services import MAX_ATTEMPTS
from sessions.models import Session
from sessions.sweeps import scheduler_tick
from tests.alerts.factories import AlertRuleFactory
from tests.sessions.factories import SessionFactory

pytestmark = pytest.mark.django_db(transaction=True)  # the job is enqueued on commit

O = AlertDelivery.Result


def _failed_session(**kwargs) -> Session:
    return SessionFactory(status=Session.Status.FAILED, ended_at=timezone.now(), error="step 'x' is dead",
                          **kwargs)


def _rule(receiver, **kwargs) -> AlertRule:
    created = timezone.now() - timedelta(minutes=1)
    return AlertRuleFactory(target=receiver.url, created_at=created, **kwargs)


def test_it_fires_once_per_interval_and_the_signature_verifies(q_sync, receiver):
    rule = _rule(receiver, interval_minutes=5)
    first = _failed_session()
    now = timezone.now()

    assert evaluate.run(now=now) == 1
    _failed_session()  # fails inside the interval: no second alert yet
    assert evaluate.run(now=now + timedelta(seconds=30)) == 0
    assert evaluate.run(now=now + timedelta(minutes=4)) == 0

    assert len(receiver.received) == 1
    hit = receiver.received[0]
    delivery = verify(secret=rule.secret, timestamp=hit.headers[TIMESTAMP_HEADER],
                      signature=hit.headers[SIGNATURE_HEADER], body=hit.body, now=now.timestamp(), tolerance=300)
    assert delivery.signature == hit.headers[SIGNATURE_HEADER]
    body = hit.json()
    assert body["rule"] == {"id": rule.pk, "name": rule.name, "kind": "session_failed", "path": f"/alerts/{rule.pk}/"}
    assert body["count"] == 1 and body["test"] is False
    assert str(first.pk) in body["items"][0]
    rule.refresh_from_db()
    assert rule.last_fired_at == now
    sent = AlertDelivery.objects.get()
    assert (sent.result, sent.http_status, sent.attempt, sent.channel) == (O.SENT, 200, 1, "webhook")

    # After the interval: one alert for what happened while it was quiet.
    assert evaluate.run(now=now + timedelta(minutes=5, seconds=1)) == 1
    assert len(receiver.received) == 2
    assert receiver.received[1].json()["count"] == 1


def test_a_tampered_body_does_not_verify(q_sync, receiver):
    from agents.webhook import WebhookRefused

    rule = _rule(receiver)
    _failed_session()
    evaluate.run(now=timezone.now())
    hit = receiver.received[0]
    with pytest.raises(WebhookRefused):
        verify(secret=rule.secret, timestamp=hit.headers[TIMESTAMP_HEADER], signature=hit.headers[SIGNATURE_HEADER],
               body=hit.body.replace(b'"count":1', b'"count":0'), now=timezone.now().timestamp(), tolerance=300)


def test_it_sends_slack_its_text_format(q_sync, receiver):
    rule = _rule(receiver, channel=AlertRule.Channel.SLACK, name="failed sessions")
    _failed_session()
    evaluate.run(now=timezone.now())

    body = receiver.received[0].json()
    assert list(body) == ["text"]
    assert body["text"].startswith(f"[Ops-Core] {rule.name}: 1 session(s) failed")
    assert SIGNATURE_HEADER not in receiver.received[0].headers


def test_it_retries_a_failing_receiver_with_backoff_and_records_each_attempt(q_sync, receiver):
    receiver.answer(500, 503, 200)
    rule = _rule(receiver)
    _failed_session()

    evaluate.run(now=timezone.now())
    first = AlertDelivery.objects.get(attempt=1)
    assert (first.result, first.http_status, first.attempt) == (O.FAILED, 500, 1)
    assert "500" in first.error
    retry = AlertDelivery.objects.get(result=O.RETRY_SCHEDULED)
    assert retry.attempt == 2 and retry.next_attempt_at > timezone.now()

    evaluate.run(now=timezone.now())  # not due yet
    assert len(receiver.received) == 1
    evaluate.run(now=retry.next_attempt_at + timedelta(seconds=1))
    third = AlertDelivery.objects.get(result=O.RETRY_SCHEDULED)
    assert third.attempt == 3
    assert third.next_attempt_at - third.created_at > retry.next_attempt_at - retry.created_at  # backoff grows
    evaluate.run(now=third.next_attempt_at + timedelta(seconds=1))

    assert len(receiver.received) == 3
    rows = list(rule.deliveries.order_by("attempt").values_list("attempt", "result", "http_status"))
    assert rows == [(1, O.FAILED, 500), (2, O.FAILED, 503), (3, O.SENT, 200)]
    assert receiver.received[0].body == receiver.received[2].body  # the same alert each time


def test_it_stops_after_the_last_attempt(q_sync, receiver, monkeypatch):
    monkeypatch.setattr("alerts.services.MAX_ATTEMPTS", 2)
    receiver.answer(500)
    _rule(receiver)
    _failed_session()
    evaluate.run(now=timezone.now())
    evaluate.run(now=timezone.now() + timedelta(minutes=1))
    evaluate.run(now=timezone.now() + timedelta(minutes=2))
    assert len(receiver.received) == 2
    assert list(AlertDelivery.objects.values_list("result", flat=True)) == [O.FAILED, O.FAILED]
    assert MAX_ATTEMPTS > 2


def test_a_permanent_refusal_is_not_retried(q_sync, receiver):
    receiver.answer(404)
    _rule(receiver)
    _failed_session()
    evaluate.run(now=timezone.now())
    delivery = AlertDelivery.objects.get()
    assert (delivery.result, delivery.http_status) == (O.FAILED, 404)
    assert "receiver says no" in delivery.error


def test_an_unreachable_receiver_is_a_transient_failure(q_sync, receiver):
    rule = _rule(receiver)
    receiver.server.shutdown()
    receiver.server.server_close()
    _failed_session()
    evaluate.run(now=timezone.now())
    failed = AlertDelivery.objects.get(result=O.FAILED)
    assert failed.http_status is None and "unreachable" in failed.error
    assert rule.deliveries.filter(result=O.RETRY_SCHEDULED).exists()


def test_it_emails_through_django_mail(q_sync, settings):
    settings.DEFAULT_FROM_EMAIL = "alerts@example.com"
    rule = AlertRuleFactory(channel=AlertRule.Channel.EMAIL, target="oncall@example.com, lead@example.com",
                            created_at=timezone.now() - timedelta(minutes=1))
    session = _failed_session()
    evaluate.run(now=timezone.now())

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["oncall@example.com", "lead@example.com"]
    assert message.from_email == "alerts@example.com"
    assert message.subject == f"[Ops-Core] {rule.name}: 1 session(s) failed"
    assert str(session.pk) in message.body
    delivery = AlertDelivery.objects.get()
    assert (delivery.result, delivery.http_status) == (O.SENT, None)


def test_a_disabled_rule_never_fires(q_sync, receiver):
    _rule(receiver, enabled=False)
    _failed_session()
    assert evaluate.run(now=timezone.now()) == 0
    assert receiver.received == [] and not AlertDelivery.objects.exists()


def test_the_scheduler_pass_runs_the_alerts(q_sync, receiver):
    _rule(receiver)
    _failed_session()
    counts = scheduler_tick()
    assert counts.alerts_fired == 1 and not counts.errors
    assert len(receiver.received) == 1


def test_a_repeated_job_sends_once(q_sync, receiver):
    from alerts.tasks import deliver_alert_job

    _rule(receiver)
    _failed_session()
    evaluate.run(now=timezone.now())
    delivery = AlertDelivery.objects.get()
    assert deliver_alert_job(delivery.pk) == "skipped"
    assert len(receiver.received) == 1


def test_the_webhook_body_is_the_recorded_payload(q_sync, receiver):
    _rule(receiver)
    _failed_session()
    evaluate.run(now=timezone.now())
    assert json.loads(receiver.received[0].body) == AlertDelivery.objects.get().payload
