"""Writes to agents and API keys."""

from __future__ import annotations

import hmac
import logging
import secrets

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent, ApiKey

logger = logging.getLogger(__name__)

KEY_SCHEME = "opk_"
BOOTSTRAP_KEY_NAME = "bootstrap (OPSCORE_API_KEY)"
MIN_KEY_LENGTH = 16


def api_key_create(*, name: str, agent_id: str = "", by=None) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which is shown once and never stored."""
    name = name.strip()
    if not name:
        raise ValueError("an API key needs a name")
    kind = ApiKey.Kind.AGENT if agent_id else ApiKey.Kind.SERVICE
    for _ in range(5):
        raw = KEY_SCHEME + secrets.token_urlsafe(32)
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(
                    name=name,
                    kind=kind,
                    agent_id=agent_id,
                    prefix=raw[: ApiKey.PREFIX_LENGTH],
                    key_hash=ApiKey.hash_secret(raw),
                    created_by=by,
                )
        except IntegrityError:  # prefix collision: draw again
            continue
        return key, raw
    raise RuntimeError("could not draw a unique API key prefix")


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke `key` (idempotent)."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_bootstrap() -> ApiKey | None:
    """Make sure the fleet-wide service key from OPSCORE_API_KEY exists (and only it).

    Called on start-up paths (migrate, the first request that presents it). A changed
    OPSCORE_API_KEY revokes the previous bootstrap key.
    """
    raw = settings.OPSCORE_API_KEY
    if not raw:
        return None
    if len(raw) < MIN_KEY_LENGTH:
        raise ValueError(f"OPSCORE_API_KEY must be at least {MIN_KEY_LENGTH} characters long")
    key_hash = ApiKey.hash_secret(raw)
    with transaction.atomic():
        current = None
        for key in ApiKey.objects.select_for_update().filter(name=BOOTSTRAP_KEY_NAME, revoked_at__isnull=True):
            if hmac.compare_digest(key.key_hash, key_hash):
                current = key
            else:
                api_key_revoke(key=key)
        if current is None:
            current = ApiKey.objects.create(
                name=BOOTSTRAP_KEY_NAME,
                kind=ApiKey.Kind.SERVICE,
                prefix=raw[: ApiKey.PREFIX_LENGTH],
                key_hash=key_hash,
            )
    return current


def api_key_lookup(raw: str) -> ApiKey | None:
    """The active key whose secret is `raw`, or None. One indexed query."""
    if len(raw) < MIN_KEY_LENGTH:
        return None
    key = ApiKey.objects.filter(prefix=raw[: ApiKey.PREFIX_LENGTH], revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, ApiKey.hash_secret(raw)):
        return None
    return key


def agent_drain(*, agent: Agent, by_user=None, reason: str = "") -> Agent:
    """Stop new dispatches to `agent` (a task in flight finishes). Idempotent; keeps the first drain's time."""
    now = timezone.now()
    Agent.objects.filter(pk=agent.pk, drained_at__isnull=True).update(drained_at=now)
    Agent.objects.filter(pk=agent.pk).update(drained_reason=reason.strip()[:500], drained_by=by_user)
    agent.refresh_from_db(fields=["drained_at", "drained_reason", "drained_by"])
    logger.info("agent %s drained by %s: %s", agent.pk, by_user or "system", reason)
    return agent


def agent_undrain(*, agent: Agent, by_user=None, reason: str = "") -> Agent:
    """Allow dispatches to `agent` again. The scheduler's lost-job sweep picks its queued tasks up."""
    Agent.objects.filter(pk=agent.pk).update(drained_at=None, drained_reason="", drained_by=None)
    agent.refresh_from_db(fields=["drained_at", "drained_reason", "drained_by"])
    logger.info("agent %s undrained by %s: %s", agent.pk, by_user or "system", reason)
    return agent
