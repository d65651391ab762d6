"""Alert rules (what to watch, where to send) and their deliveries (one row per attempt)."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


def new_secret() -> str:
    return secrets.token_hex(32)


class AlertRule(models.Model):
    """A condition the scheduler checks, and the one channel it alerts; fires at most once per interval."""

    class Kind(models.TextChoices):
        SESSION_FAILED = "session_failed", "A session failed"
        TASK_DEAD = "task_dead", "A task is dead"
        AGENT_STALE = "agent_stale", "An agent is stale with a task in flight"
        STEP_FAILURES = "step_failures", "Failures of one step above N in M minutes"
        QUEUE_DEPTH = "queue_depth", "Queue depth above N"

    class Channel(models.TextChoices):
        WEBHOOK = "webhook", "Signed webhook (JSON)"
        SLACK = "slack", "Slack-compatible incoming webhook"
        EMAIL = "email", "Email"

    # Kinds that count events since the rule last fired; the others check a condition that holds now.
    EVENT_KINDS = frozenset({Kind.SESSION_FAILED, Kind.TASK_DEAD})

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    workflow_id = models.CharField(max_length=100, blank=True,
                                   help_text="Only sessions/steps of this workflow (empty: any).")
    step_id = models.CharField(max_length=100, blank=True, help_text="Step failures: only this step (empty: any).")
    threshold = models.PositiveIntegerField(default=0, help_text="N: fires when the count is above it.")
    window_minutes = models.PositiveIntegerField(default=10, help_text="M: the window of step failures.")
    interval_minutes = models.PositiveIntegerField(default=15, help_text="At most one alert per this many minutes.")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    target = models.CharField(max_length=2048, help_text="The webhook URL, or comma-separated email addresses.")
    secret = models.CharField(max_length=128, default=new_secret, blank=True,
                              help_text="HMAC-SHA256 key of the signed webhook.")
    enabled = models.BooleanField(default=True)

    last_fired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def recipients(self) -> list[str]:
        return [address.strip() for address in self.target.split(",") if address.strip()]


class AlertDelivery(models.Model):
    """One attempt to send one alert through its rule's channel, with its outcome."""

    class Result(models.TextChoices):
        PENDING = "pending"  # enqueued, not yet sent
        SENDING = "sending"  # claimed by a job; the request is under way (or its worker died)
        RETRY_SCHEDULED = "retry_scheduled"  # due at next_attempt_at (the scheduler enqueues it)
        SENT = "sent"
        FAILED = "failed"  # this attempt failed; a retry row follows unless it was the last or permanent

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16, choices=AlertRule.Channel.choices)
    is_test = models.BooleanField(default=False)
    attempt = models.PositiveIntegerField(default=1)
    result = models.CharField(max_length=16, choices=Result.choices, default=Result.PENDING)
    payload = models.JSONField(help_text="What the alert says (the webhook's body).")
    http_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When this attempt ended.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["rule", "-created_at"], name="alertdelivery_rule_created_idx"),
            models.Index(fields=["result", "next_attempt_at"], name="alertdelivery_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.rule} attempt {self.attempt}: {self.result}"
