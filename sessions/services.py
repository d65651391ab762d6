"""Starting sessions on request: the trigger's idempotency and definition rules.

Status changes stay in `sessions/engine.py`; this module only decides which
definition and which session a trigger request means, then calls `session_start`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent
from opscore_site.errors import ApplicationError
from opscore_site.statements import Statement
from sessions.engine import By, session_start
from sessions.models import Session
from workflows.models import WorkflowDefinition
from workflows.schema import WorkflowSpec
from workflows.services import workflow_save


class IdempotencyConflict(ApplicationError):
    """The Idempotency-Key was already used, within its TTL, for a different request."""

    code = "idempotency_conflict"
    http_status = 409


def request_fingerprint(document: Any) -> str:
    """sha256 of the canonical JSON of a request (key order and spacing do not matter)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _session_for_key(*, key: str, fingerprint: str, now: datetime) -> Session | None:
    """The live session started with `key`, None if there is none, or IdempotencyConflict.

    A key older than OPSCORE_IDEMPOTENCY_TTL_HOURS is released for reuse.
    """
    existing = Session.objects.filter(idempotency_key=key).first()
    if existing is None:
        return None
    if existing.created_at < now - timedelta(hours=settings.OPSCORE_IDEMPOTENCY_TTL_HOURS):
        Session.objects.filter(pk=existing.pk, idempotency_key=key).update(idempotency_key=None)
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"Idempotency-Key '{key}' was already used for a different request "
            f"(session {existing.pk}); use a new key"
        )
    return existing


# The trigger's primary-key reads, compiled once per process (opscore_site/statements.py).
_AGENT = Statement(lambda agent_id: Agent.objects.filter(pk=agent_id)[:1])
_DEFINITION = Statement(lambda definition_id: WorkflowDefinition.objects.filter(pk=definition_id)[:1])


def session_trigger(
    *,
    agent_id: str,
    by: By,
    definition_id: str | None = None,
    inline_spec: WorkflowSpec | None = None,
    initial_payload: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> tuple[Session, bool]:
    """Start a session of a stored or inline definition for `agent_id`; (session, replayed).

    Raises Agent.DoesNotExist / WorkflowDefinition.DoesNotExist (unknown ids),
    DefinitionConflict (inline spec differs from the stored one), IdempotencyConflict,
    and the engine's AgentUnavailable. Nothing is saved unless the session starts.
    """
    now = timezone.now()
    if idempotency_key:
        existing = _session_for_key(key=idempotency_key, fingerprint=fingerprint, now=now)
        if existing is not None:
            return existing, True
    agent = _AGENT.first(agent_id=agent_id)
    if agent is None:
        raise Agent.DoesNotExist(f"agent '{agent_id}' not found")
    try:
        with transaction.atomic():
            if inline_spec is not None:
                definition, _ = workflow_save(spec=inline_spec, by=by.user, allow_update=False)
            else:
                definition = _DEFINITION.first(definition_id=definition_id) if definition_id else None
                if definition is None:
                    raise WorkflowDefinition.DoesNotExist(f"workflow definition '{definition_id}' not found")
            session = session_start(
                definition=definition, agent=agent, initial_payload=initial_payload, by=by,
                idempotency_key=idempotency_key or None, request_fingerprint=fingerprint,
            )
    except IntegrityError:
        # Two identical requests raced for the same key: the loser answers with the winner's session.
        if not idempotency_key:
            raise
        existing = _session_for_key(key=idempotency_key, fingerprint=fingerprint, now=now)
        if existing is None:
            raise
        return existing, True
    return session, False
