"""Which state reports the engine must see: the interest it registers with `agents.signals`.

The engine's hook (`engine.on_agent_state`) acts only when the agent has a task in flight
(dispatched or running), or, on an `idle`, when the agent has a queued task to kick or some
task waits for an agent with a capability (it may take it: capability routing). Every
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
    task = q(Task._meta.db_table)
    idle = f"report.state = '{Agent.State.IDLE.value}'"
    queued = f"{status} = '{Task.Status.QUEUED.value}'"
    # An idle agent may also take a task that waits for an agent with its capability
    # (engine._kick_waiting): few rows, on the partial task_waiting_idx index.
    return (f"(EXISTS (SELECT 1 FROM {task} WHERE {q('agent_id')} = report.agent_id"
            f" AND ({status} IN ({in_flight}) OR ({idle} AND {queued})))"
            f" OR ({idle} AND EXISTS (SELECT 1 FROM {task} WHERE {q('waiting_since')} IS NOT NULL AND {queued})))")
