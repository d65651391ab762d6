"""Which state reports the engine must see: the interest it registers with `agents.signals`.

The engine's hook (`engine.on_agent_state`) acts only when the agent has a task in flight
(dispatched or running), or, on an `idle`, when the agent has a queued task to kick. Every
other report (the common case) is recorded without entering the engine, in one statement.
A superset is harmless: the hook itself decides what the report means.
"""

from __future__ import annotations

from django.db import connection

from agents.models import Agent
from sessions.models import Task


def engine_interest_sql() -> str:
    """SQL boolean over report.agent_id and report.state; served by the (agent, status) index."""
    q = connection.ops.quote_name
    in_flight = ", ".join(f"'{status}'" for status in sorted(Task.IN_FLIGHT))
    status = q("status")
    return (f"EXISTS (SELECT 1 FROM {q(Task._meta.db_table)} WHERE {q('agent_id')} = report.agent_id"
            f" AND ({status} IN ({in_flight})"
            f" OR (report.state = '{Agent.State.IDLE.value}' AND {status} = '{Task.Status.QUEUED.value}')))")
