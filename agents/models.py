"""Agents as Ops-Core knows them: identity from AgentKit, live state from their own reports."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.models import Q
from django.utils import timezone

from opscore_site.converters import has_forbidden_characters


def agent_id_problem(agent_id: str) -> str | None:
    """Why `agent_id` cannot name an agent, or None. AgentKit's URLs and ours carry it as one path segment."""
    if not agent_id.strip():
        return "an agent id may not be blank"
    if has_forbidden_characters(agent_id):
        return ("an agent id may not contain '/' or control characters such as NUL, CR or LF "
                "(it is one segment of AgentKit's and Ops-Core's URLs)")
    if len(agent_id) > 255:
        return "an agent id has at most 255 characters"
    return None


def validate_agent_id(value: str) -> None:
    """Field validator form of `agent_id_problem` (forms and the admin run it; blank is left to `blank`)."""
    if problem := agent_id_problem(value):
        raise ValidationError(problem, code="invalid_agent_id")


def _stale_cutoff(now=None):
    return (now or timezone.now()) - timedelta(seconds=settings.OPSCORE_AGENT_STALE_SECONDS)


class AgentQuerySet(models.QuerySet["Agent"]):
    def active(self) -> AgentQuerySet:
        """Agents that are not deregistered."""
        return self.filter(deregistered_at__isnull=True)

    def stale(self, *, now=None) -> AgentQuerySet:
        """Registered agents whose last report is older than OPSCORE_AGENT_STALE_SECONDS (or that never reported)."""
        return self.active().filter(Q(last_seen_at__lt=_stale_cutoff(now)) | Q(last_seen_at__isnull=True))

    def not_stale(self, *, now=None) -> AgentQuerySet:
        """The complement of `stale()`: agents that reported within the window, and deregistered ones
        (a deregistered agent is never stale). The API's `stale=false` and the page's "fresh"."""
        return self.filter(Q(deregistered_at__isnull=False) | Q(last_seen_at__gte=_stale_cutoff(now)))

    def quarantined(self) -> AgentQuerySet:
        """Agents in quarantine (cooling down or being probed)."""
        return self.exclude(quarantine_state="")

    def with_capability(self, capability: str) -> AgentQuerySet:
        """Agents listing `capability` (JSON containment; SQLite has none, so a match of its JSON text there)."""
        if connection.features.supports_json_field_contains:
            return self.filter(capabilities__contains=[capability])
        return self.filter(capabilities__icontains=json.dumps(capability))


class Agent(models.Model):
    """An agent registered with AgentKit; its current state is denormalised from its reports."""

    class State(models.TextChoices):
        INITIALIZING = "initializing"
        IDLE = "idle"
        ACTIVE = "active"
        ERROR = "error"
        FINISHED = "finished"

    id = models.CharField(primary_key=True, max_length=255, validators=[validate_agent_id],
                          help_text="Agent id as given by AgentKit.")
    name = models.CharField(max_length=255, blank=True)
    version = models.CharField(max_length=64, blank=True)
    capabilities = models.JSONField(default=list, blank=True)
    contact_endpoint = models.CharField(max_length=2048, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    registered_at = models.DateTimeField(
        null=True, blank=True, help_text="When AgentKit's registration webhook last arrived."
    )
    last_seen_at = models.DateTimeField(
        null=True, blank=True, help_text="Server receive time of the latest report."
    )

    # Current state: the newest report by the agent's own timestamp (newer wins).
    state = models.CharField(max_length=16, choices=State.choices, null=True, blank=True)
    state_timestamp = models.DateTimeField(null=True, blank=True, help_text="Agent's clock.")
    state_received_at = models.DateTimeField(null=True, blank=True, help_text="Server's clock.")
    state_details = models.JSONField(null=True, blank=True)

    deregistered_at = models.DateTimeField(null=True, blank=True)
    drained_at = models.DateTimeField(
        null=True, blank=True, help_text="While set, no new task is dispatched to this agent."
    )
    drained_reason = models.CharField(max_length=500, blank=True)
    drained_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The operator who drained the agent.",
    )

    class Quarantine(models.TextChoices):
        """The circuit breaker: `sessions/engine.py` (QUARANTINE_ALLOWED) is its only writer."""

        NONE = "", "not quarantined"
        QUARANTINED = "quarantined"  # no dispatch; one probe once `quarantine_probe_at` has passed
        PROBING = "probing"  # the probe's attempt is in flight (half-open)

    # Database defaults too: the state report's upsert (agents/services.py) inserts rows in raw SQL.
    quarantine_state = models.CharField(max_length=16, choices=Quarantine.choices, default="", db_default="",
                                        blank=True)
    quarantined_at = models.DateTimeField(null=True, blank=True)
    quarantine_reason = models.CharField(max_length=1000, blank=True, default="", db_default="")
    quarantined_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The operator who quarantined the agent (empty: the engine did, after repeated failures).",
    )
    quarantine_probe_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When the cool-down ends and one probe may go (empty: quarantined by hand, released by hand).",
    )
    quarantine_strikes = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Quarantines since the agent last worked: each doubles the cool-down.",
    )
    quarantine_released_at = models.DateTimeField(
        null=True, blank=True, help_text="Failures before this time no longer count toward quarantine.",
    )

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        # No index on a column every report changes (state, last_seen_at, state_*): then each
        # report's update is HOT (heap-only, no index writes, pruned in place). The state
        # counts and the stale filter scan this table instead: one row per agent, small.
        indexes = [
            models.Index(fields=["deregistered_at"], name="agent_deregistered_idx"),
        ]

    def __str__(self) -> str:
        return self.name or self.id

    @property
    def is_deregistered(self) -> bool:
        return self.deregistered_at is not None

    @property
    def is_drained(self) -> bool:
        return self.drained_at is not None

    @property
    def is_quarantined(self) -> bool:
        return self.quarantine_state != ""

    def probe_due(self, *, now=None) -> bool:
        """Quarantined, cooled down, and waiting for its one probe."""
        return (self.quarantine_state == self.Quarantine.QUARANTINED and self.quarantine_probe_at is not None
                and self.quarantine_probe_at <= (now or timezone.now()))

    def lacks_capability(self, capability: str) -> bool:
        """The agent lists capabilities and `capability` is not one (unknown capabilities lack nothing)."""
        return bool(capability) and bool(self.capabilities) and capability not in self.capabilities

    def is_stale(self, *, now=None) -> bool:
        """The rule of `Agent.objects.stale()` for one row: a deregistered agent is never stale."""
        if self.deregistered_at is not None:
            return False
        return self.last_seen_at is None or self.last_seen_at < _stale_cutoff(now)


class AgentState(models.Model):
    """One state report, as received. Append-only: the history behind the agent timeline."""

    # No index of its own: (agent, -received_at) below serves every lookup by agent.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="state_history", db_index=False)
    state = models.CharField(max_length=16, choices=Agent.State.choices)
    details = models.JSONField(null=True, blank=True)
    timestamp = models.DateTimeField(help_text="The agent's timestamp.")
    received_at = models.DateTimeField(default=timezone.now, help_text="The server's receive time.")

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["agent", "-received_at"], name="agentstate_agent_recv_idx"),
            models.Index(fields=["received_at"], name="agentstate_received_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.state} @ {self.timestamp.isoformat()}"


class ApiKey(models.Model):
    """A Bearer key for the agent API, stored as a SHA-256 hash behind a lookup prefix.

    A service key may act for any agent id; an agent-bound key only for `agent_id`
    (a plain id, so a key can be made before the agent first reports).
    """

    class Kind(models.TextChoices):
        SERVICE = "service"
        AGENT = "agent"

    PREFIX_LENGTH = 12

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.SERVICE)
    agent_id = models.CharField(max_length=255, blank=True, validators=[validate_agent_id],
                                help_text="Only for agent-bound keys.")
    prefix = models.CharField(max_length=PREFIX_LENGTH, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True,
                                      help_text="After this moment the key is refused (401); empty: it never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The operator who revoked the key (empty: a command or the OPSCORE_API_KEY rotation).",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Lookups go by prefix among active keys; a revoked key may share it.
            models.UniqueConstraint(
                fields=["prefix"], condition=Q(revoked_at__isnull=True), name="apikey_active_prefix_unique"
            ),
            models.CheckConstraint(
                name="apikey_agent_bound_has_agent",
                condition=(Q(kind="service", agent_id="") | (Q(kind="agent") & ~Q(agent_id=""))),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def clean(self) -> None:
        if self._state.adding and self.expires_at is not None and self.expires_at <= timezone.now():
            raise ValidationError({"expires_at": "the expiry must be in the future"})

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @staticmethod
    def hash_secret(raw_key: str) -> str:
        # Keys are 256-bit random strings, so a fast hash is as safe as a slow one here
        # and keeps the hottest endpoint cheap.
        return hashlib.sha256(raw_key.encode()).hexdigest()


class WebhookReceipt(models.Model):
    """One accepted AgentKit webhook delivery: its signature may not be accepted again.

    Rows older than twice the tolerance window can no longer match a fresh delivery and
    are deleted as new deliveries arrive.
    """

    signature = models.CharField(max_length=64, unique=True, help_text="Lowercase hex HMAC-SHA256.")
    timestamp = models.DateTimeField(help_text="The delivery's signed timestamp.")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.signature[:12]}… @ {self.received_at.isoformat()}"
