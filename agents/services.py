"""Writes to agents and API keys."""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents import signals
from agents.models import Agent, AgentState, ApiKey, WebhookReceipt
from opscore_site import metrics, throttle
from opscore_site.errors import ApplicationError
from opscore_site.statements import prepared_cursor

logger = logging.getLogger(__name__)

KEY_SCHEME = "opk_"
BOOTSTRAP_KEY_NAME = "bootstrap (OPSCORE_API_KEY)"
MIN_KEY_LENGTH = 16


class ApiKeyExpired(ApplicationError):
    """The key is right but past its `expires_at`: 401, saying so (a new key is needed)."""

    code = "key_expired"
    http_status = 401

    def __init__(self, key: ApiKey) -> None:
        super().__init__(f"API key '{key.name}' ({key.prefix}…) expired at {key.expires_at.isoformat()}; "
                         "create a new key")
        self.key = key


def api_key_create(*, name: str, agent_id: str = "", by=None, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which is shown once and never stored.

    Raises ValidationError (by field: `name`, `agent_id`, `expires_at`) for input the model's
    fields refuse, or an expiry that is not in the future; an empty `agent_id` makes a service key.
    """
    name, agent_id = name.strip(), agent_id.strip()
    if not name:
        raise ValidationError({"name": "an API key needs a name"})
    candidate = ApiKey(name=name, agent_id=agent_id, expires_at=expires_at)
    candidate.clean_fields(exclude=[f.name for f in ApiKey._meta.fields if f.name not in ("name", "agent_id")])
    candidate.clean()
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
                    expires_at=expires_at,
                )
        except IntegrityError:  # prefix collision: draw again
            continue
        return key, raw
    raise RuntimeError("could not draw a unique API key prefix")


def api_key_revoke(*, key: ApiKey, by=None) -> ApiKey:
    """Revoke `key`, recording the operator `by` (idempotent: the first revocation's time and operator stay)."""
    if key.revoked_at is None:
        now = timezone.now()
        # Conditional, so two operators revoking at once record one of them, not a mix.
        if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now, revoked_by=by):
            logger.info("API key %s revoked by %s", key, by or "system")
        key.refresh_from_db(fields=["revoked_at", "revoked_by"])
    # This process refuses the key at once (again at commit, in case a request cached it in
    # between); other processes within OPSCORE_API_KEY_CACHE_SECONDS.
    api_key_cache_clear()
    transaction.on_commit(api_key_cache_clear)
    return key


def api_key_bootstrap() -> ApiKey | None:
    """Make sure the fleet-wide service key from OPSCORE_API_KEY exists (and only it).

    Called on start-up paths (migrate, the first request that presents it). A changed
    OPSCORE_API_KEY revokes the previous bootstrap key; a revoked one is never reinstalled
    (ValueError): revoking it must stick until the fleet's key is rotated.
    """
    raw = settings.OPSCORE_API_KEY
    if not raw:
        return None
    if len(raw) < MIN_KEY_LENGTH:
        raise ValueError(f"OPSCORE_API_KEY must be at least {MIN_KEY_LENGTH} characters long")
    key_hash = ApiKey.hash_secret(raw)
    if ApiKey.objects.filter(prefix=raw[: ApiKey.PREFIX_LENGTH], key_hash=key_hash,
                             revoked_at__isnull=False).exists():
        raise ValueError("OPSCORE_API_KEY was revoked: rotate it")
    for _ in range(3):
        try:
            with transaction.atomic():
                current = None
                for key in ApiKey.objects.select_for_update().filter(name=BOOTSTRAP_KEY_NAME,
                                                                     revoked_at__isnull=True):
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
        except IntegrityError:
            # Several processes met the new key at once (its first requests arrive
            # together): one insert won; look again and use its row.
            continue
    existing = api_key_lookup(raw)
    if existing is None:
        raise ValueError("OPSCORE_API_KEY shares its first 12 characters with another active key")
    return existing


def api_key_lookup(raw: str) -> ApiKey | None:
    """The active key whose secret is `raw`, or None. One indexed query."""
    if len(raw) < MIN_KEY_LENGTH:
        return None
    key = ApiKey.objects.filter(prefix=raw[: ApiKey.PREFIX_LENGTH], revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, ApiKey.hash_secret(raw)):
        return None
    return key


def _operator_record(*, agent: Agent, by_user, message: str) -> None:
    """Who drained or undrained and why, kept in the admin's history of the agent (LogEntry)."""
    if by_user is None or not by_user.pk:
        return  # the system: the log line is the record
    from django.contrib.admin.models import CHANGE, LogEntry

    LogEntry.objects.log_actions(user_id=by_user.pk, queryset=[agent], action_flag=CHANGE,
                                 change_message=message, single_object=True)


def agent_drain(*, agent: Agent, by_user=None, reason: str = "") -> Agent:
    """Stop new dispatches to `agent` (a task in flight finishes). Idempotent; keeps the first drain's time."""
    now = timezone.now()
    Agent.objects.filter(pk=agent.pk, drained_at__isnull=True).update(drained_at=now)
    Agent.objects.filter(pk=agent.pk).update(drained_reason=reason.strip()[:500], drained_by=by_user)
    agent.refresh_from_db(fields=["drained_at", "drained_reason", "drained_by"])
    logger.info("agent %s drained by %s: %s", agent.pk, by_user or "system", reason)
    _operator_record(agent=agent, by_user=by_user, message=f"Drained: {reason.strip()[:500]}")
    return agent


def agent_undrain(*, agent: Agent, by_user=None, reason: str = "") -> Agent:
    """Allow dispatches to `agent` again. The scheduler's lost-job sweep picks its queued tasks up."""
    Agent.objects.filter(pk=agent.pk).update(drained_at=None, drained_reason="", drained_by=None)
    agent.refresh_from_db(fields=["drained_at", "drained_reason", "drained_by"])
    logger.info("agent %s undrained by %s: %s", agent.pk, by_user or "system", reason)
    _operator_record(agent=agent, by_user=by_user, message=f"Undrained: {reason.strip()[:500] or 'no reason given'}")
    return agent
LAST_USED_RESOLUTION = timedelta(seconds=60)

# Verified keys by the SHA-256 of their raw value: (key, valid until). Per process; only
# keys that verified are kept, so its size is bounded by the number of real keys.
_key_cache: dict[str, tuple[ApiKey, datetime]] = {}
_KEY_CACHE_MAX = 10_000


def api_key_cache_clear() -> None:
    """Forget every verified key of this process (revocation calls it; other processes wait out the TTL)."""
    _key_cache.clear()


def api_key_authenticate(*, raw: str, now: datetime) -> ApiKey | None:
    """The active key for `raw` (installing OPSCORE_API_KEY on its first use), or None.

    A verified key is remembered for OPSCORE_API_KEY_CACHE_SECONDS, so the hot path makes
    no query: a key revoked in this process is refused at once, one revoked elsewhere
    within that many seconds. `last_used_at` is written at most once a minute. A key past
    its `expires_at` raises ApiKeyExpired (checked on every request, cached or not).
    """
    digest = ApiKey.hash_secret(raw)
    cached = _key_cache.get(digest)
    if cached is not None and cached[1] > now:
        key = cached[0]
    else:
        key = api_key_lookup(raw)
        if key is None and settings.OPSCORE_API_KEY and hmac.compare_digest(
                raw.encode(), settings.OPSCORE_API_KEY.encode()):
            try:
                key = api_key_bootstrap()
            except ValueError as exc:  # misconfigured or revoked key: refuse it (401) and say why in the log
                logger.error("OPSCORE_API_KEY is refused: %s", exc)
                key = None
        if key is None:
            _key_cache.pop(digest, None)
            return None
        ttl = settings.OPSCORE_API_KEY_CACHE_SECONDS
        if ttl > 0:
            if len(_key_cache) >= _KEY_CACHE_MAX:
                _key_cache.clear()
            _key_cache[digest] = (key, now + timedelta(seconds=ttl))
    if key.is_expired(now):
        raise ApiKeyExpired(key)
    if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
        # Conditional, so concurrent requests write the row once a minute at most.
        ApiKey.objects.filter(pk=key.pk).exclude(last_used_at__gte=now - LAST_USED_RESOLUTION).update(
            last_used_at=now
        )
        key.last_used_at = now
    return key


# --------------------------------------------------------------------------- agent state


@dataclass(frozen=True)
class StateRecorded:
    history_id: int
    engine_notified: bool  # a registered interest matched: `agent_state_reported` was sent


# Newer wins by the agent's clock; a tie (second-resolution clocks: `active` and `idle`
# in the same second) goes to the report that arrived later; an exact duplicate changes nothing.
_NEWER = (
    "({t}.state_timestamp IS NULL OR excluded.state_timestamp > {t}.state_timestamp"
    " OR (excluded.state_timestamp = {t}.state_timestamp AND excluded.state <> {t}.state"
    " AND excluded.state_received_at > {t}.state_received_at))"
)
_AGENT_COLUMNS = ("(id, name, version, capabilities, contact_endpoint, metadata, created_at, last_seen_at,"
                  " state, state_timestamp, state_received_at, state_details, drained_reason)")
_ON_CONFLICT = """
ON CONFLICT (id) DO UPDATE SET
  last_seen_at = CASE WHEN {t}.last_seen_at IS NULL OR excluded.last_seen_at > {t}.last_seen_at
                      THEN excluded.last_seen_at ELSE {t}.last_seen_at END,
  state = CASE WHEN {newer} THEN excluded.state ELSE {t}.state END,
  state_timestamp = CASE WHEN {newer} THEN excluded.state_timestamp ELSE {t}.state_timestamp END,
  state_received_at = CASE WHEN {newer} THEN excluded.state_received_at ELSE {t}.state_received_at END,
  state_details = CASE WHEN {newer} THEN excluded.state_details ELSE {t}.state_details END
"""
# Portable (SQLite, the demo): the upsert alone; the history row and the interest follow.
_UPSERT = ("INSERT INTO {t} " + _AGENT_COLUMNS + """
VALUES (%(agent_id)s, '', '', %(capabilities)s, '', %(metadata)s, %(received_at)s, %(received_at)s, %(state)s,
        %(timestamp)s, %(received_at)s, %(details)s, '')""" + _ON_CONFLICT)
_INTEREST = "SELECT ({interest}) FROM (SELECT %(agent_id)s AS agent_id, %(state)s AS state) AS report"
# PostgreSQL: upsert, history insert and the interest in one statement, prepared once per
# connection (every parameter typed). When an interest matches and `force` is false it writes
# nothing: the caller then records the report again, forced, in a transaction with the
# receivers (so an engine reaction commits with it).
_REPORT_CTE = ("""
WITH report AS (SELECT %(agent_id)s::varchar AS agent_id, %(state)s::varchar AS state),
interest AS (SELECT ({interest}) AS matched FROM report),
upsert AS (
  INSERT INTO {t} """ + _AGENT_COLUMNS + """
  SELECT report.agent_id, '', '', %(capabilities)s::jsonb, '', %(metadata)s::jsonb, %(received_at)s::timestamptz,
         %(received_at)s::timestamptz, report.state, %(timestamp)s::timestamptz, %(received_at)s::timestamptz,
         %(details)s::jsonb, ''
  FROM report WHERE %(force)s::boolean OR NOT (SELECT matched FROM interest)""" + _ON_CONFLICT + """),
history AS (
  INSERT INTO {h} (agent_id, state, details, timestamp, received_at)
  SELECT report.agent_id, report.state, %(details)s::jsonb, %(timestamp)s::timestamptz, %(received_at)s::timestamptz
  FROM report WHERE %(force)s::boolean OR NOT (SELECT matched FROM interest)
  RETURNING id
)
SELECT (SELECT matched FROM interest), (SELECT id FROM history)
""")


@functools.lru_cache(maxsize=16)
def _report_cte(interest: str) -> str:
    agent_table = connection.ops.quote_name(Agent._meta.db_table)
    return _REPORT_CTE.format(interest=interest, h=connection.ops.quote_name(AgentState._meta.db_table),
                              t=agent_table, newer=_NEWER.format(t=agent_table))


def _prep(field_name: str, value: Any) -> Any:
    return Agent._meta.get_field(field_name).get_db_prep_save(value, connection)


def agent_state_record(
    *, agent_id: str, state: str, details: dict[str, Any] | None, timestamp: datetime, received_at: datetime
) -> StateRecorded:
    """Record one state report: a history row plus the agent's current state, newer wins.

    PostgreSQL, the common case (no registered interest matches, i.e. no task in flight
    and nothing queued for an idle): one statement in autocommit, the agent upsert
    (INSERT ... ON CONFLICT), the history insert and the interest check together, so a
    return means committed. A report that interests a receiver is recorded again, in one
    transaction with `agent_state_reported`, so the engine reacts before the commit; an
    agent whose last report here interested one (`_ENGAGED`) skips the first statement.
    A receiver that raises `signals.ReceiverFailed` rolls that transaction back, and the
    report is recorded again on its own (never lost).
    SQLite (the demo) does the same in a transaction of three statements.
    """
    params = {
        "agent_id": agent_id, "capabilities": _prep("capabilities", []), "metadata": _prep("metadata", {}),
        "received_at": _prep("state_received_at", received_at), "state": state,
        "timestamp": _prep("state_timestamp", timestamp), "details": _prep("state_details", details),
    }
    interest = signals.report_interest_sql()
    if connection.vendor == "postgresql":
        sql = _report_cte(interest)
        # opscore_site.postgresql prepares it; Django's stock backend sends it as text.
        with prepared_cursor(connection) as cursor:
            if agent_id not in _ENGAGED:
                cursor.execute(sql, {**params, "force": False})
                matched, history_id = cursor.fetchone()
                if not matched:
                    metrics.state_report(state)
                    return StateRecorded(history_id=history_id, engine_notified=False)
            try:
                with transaction.atomic():
                    cursor.execute(sql, {**params, "force": True})
                    matched, history_id = cursor.fetchone()
                    _engaged(agent_id, matched)
                    if matched:
                        _notify(agent_id=agent_id, state=state, details=details, timestamp=timestamp,
                                received_at=received_at)
            except signals.ReceiverFailed:
                cursor.execute(sql, {**params, "force": True})  # autocommit: the report alone
                _, history_id = cursor.fetchone()
            metrics.state_report(state)  # counted once it has committed
        return StateRecorded(history_id=history_id, engine_notified=bool(matched))
    report = {"agent_id": agent_id, "state": state, "details": details, "timestamp": timestamp,
              "received_at": received_at}
    try:
        matched, history = _record_portable(params, report, with_receivers=True)
    except signals.ReceiverFailed:
        matched, history = _record_portable(params, report, with_receivers=False)
    metrics.state_report(state)
    return StateRecorded(history_id=history.pk, engine_notified=bool(matched))


# Agents whose last report recorded by this process interested a receiver (a task in flight, work
# queued): their next report most likely does too, so it goes straight to its transaction instead
# of first asking in a statement of its own. One that turns out to interest nobody costs that
# transaction's BEGIN and COMMIT instead, and leaves the set. Only a guess: correct either way.
_ENGAGED: set[str] = set()
_ENGAGED_MAX = 10_000


def _engaged(agent_id: str, matched: bool) -> None:
    if not matched:
        _ENGAGED.discard(agent_id)
        return
    if len(_ENGAGED) >= _ENGAGED_MAX:
        _ENGAGED.clear()
    _ENGAGED.add(agent_id)


def report_hints_clear() -> None:
    """Forget which agents' reports interested a receiver (tests: the guesses outlive rolled-back rows)."""
    _ENGAGED.clear()


def _record_portable(params: dict[str, Any], report: dict[str, Any], *,
                     with_receivers: bool) -> tuple[bool, AgentState]:
    """SQLite (the demo): upsert, interest and history insert in one transaction, the receivers in it
    too. `params` are the statements' (prepared for the database), `report` the report as received."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            agent_table = connection.ops.quote_name(Agent._meta.db_table)
            cursor.execute(_UPSERT.format(t=agent_table, newer=_NEWER.format(t=agent_table)), params)
            cursor.execute(_INTEREST.format(interest=signals.report_interest_sql()), params)
            (matched,) = cursor.fetchone()
        history = AgentState.objects.create(**report)
        if matched and with_receivers:
            _notify(**report)
    return matched, history


def _notify(**report: Any) -> None:
    signals.agent_state_reported.send(sender=Agent, **report)


STATE_READ_FIELDS = ("id", "state", "state_details", "state_timestamp")


class StateRead(NamedTuple):
    agent: Agent | None  # None: no such agent
    counted: bool  # the throttle's upsert counted the request (always True without one)


@functools.cache
def _state_read_sql(*, counting: bool) -> tuple[str, list[Any]]:
    fields = [f for f in Agent._meta.concrete_fields if f.name in STATE_READ_FIELDS]  # the order from_db wants
    quote = connection.ops.quote_name
    columns = ", ".join(f"a.{quote(f.column)}" for f in fields)
    table, pk = quote(Agent._meta.db_table), quote(Agent._meta.pk.column)
    head = f"WITH hit AS ({throttle.COUNT_SQL_TYPED}) SELECT EXISTS (SELECT 1 FROM hit)" if counting else "SELECT true"
    return f"{head}, {columns} FROM (SELECT 1) AS one LEFT JOIN {table} AS a ON a.{pk} = %(agent_id)s::text", fields


def agent_state_read(*, agent_id: str, count: throttle.Hit | None = None) -> StateRead:
    """The agent's current state (only STATE_READ_FIELDS loaded), and the API throttle's count of
    the request when `count` is given (`opscore_site.throttle.Hit`).

    `GET .../state` calls it on every read: on PostgreSQL one prepared statement, the throttle's
    upsert as its CTE and the primary-key read (opscore_site.postgresql), so no ORM query is
    compiled and the throttle costs no round trip of its own. Elsewhere: the upsert, then the ORM.
    """
    prepared = getattr(connection, "prepared_cursor", None)
    if prepared is None:
        counted = count.run() if count is not None else True
        return StateRead(Agent.objects.filter(pk=agent_id).only(*STATE_READ_FIELDS).first(), counted)
    sql, fields = _state_read_sql(counting=count is not None)
    with prepared() as cursor:
        cursor.execute(sql, {"agent_id": agent_id, **(count.params() if count is not None else {})})
        counted, *row = cursor.fetchone()
    if row[0] is None:
        return StateRead(None, counted)
    values = [f.from_db_value(v, None, connection) if hasattr(f, "from_db_value") else v for f, v in zip(fields, row)]
    return StateRead(Agent.from_db(connection.alias, [f.attname for f in fields], values), counted)


# --------------------------------------------------------------------------- registration


def agent_register(
    *,
    agent_id: str,
    name: str = "",
    version: str = "",
    capabilities: list[str] | None = None,
    contact_endpoint: str = "",
    metadata: dict[str, Any] | None = None,
    at: datetime,
) -> tuple[Agent, bool]:
    """Upsert an agent's details from AgentKit's webhook; (agent, created). Idempotent.

    Never touches the reported state; a REGISTER after a DEREGISTER brings the agent back.
    """
    return Agent.objects.update_or_create(
        id=agent_id,
        defaults={
            "name": name,
            "version": version,
            "capabilities": capabilities or [],
            "contact_endpoint": contact_endpoint,
            "metadata": metadata or {},
            "registered_at": at,
            "deregistered_at": None,
        },
        create_defaults={
            "name": name, "version": version, "capabilities": capabilities or [],
            "contact_endpoint": contact_endpoint, "metadata": metadata or {}, "registered_at": at,
            "created_at": at,
        },
    )


def agent_deregister(*, agent_id: str, at: datetime) -> bool:
    """Soft-delete an agent (history and sessions are kept). False if it is unknown."""
    if not Agent.objects.filter(pk=agent_id).exists():
        return False
    Agent.objects.filter(pk=agent_id, deregistered_at__isnull=True).update(deregistered_at=at)
    return True


def webhook_receipt_record(*, signature: str, timestamp: datetime, received_at: datetime, keep: timedelta) -> bool:
    """Record an accepted webhook delivery; False if its signature was already recorded.

    Also deletes receipts older than `keep`: past the tolerance window they can match nothing.
    """
    WebhookReceipt.objects.filter(received_at__lt=received_at - keep).delete()
    try:
        with transaction.atomic():
            WebhookReceipt.objects.create(signature=signature, timestamp=timestamp, received_at=received_at)
    except IntegrityError:
        return False
    return True
