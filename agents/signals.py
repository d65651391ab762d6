"""The one seam from `agents` to whoever cares about agent state (the session engine).

`agents` knows nothing of sessions: after it has recorded a state report it sends
`agent_state_reported`, inside the same database transaction as the report, so a
receiver's writes commit (or roll back) with the report itself.

Most reports concern nobody (no task in flight, nothing queued), so the signal is sent
only for a report that a registered *interest* matches: an SQL boolean expression over
`report.agent_id` and `report.state` (a one-row relation of the report), evaluated inside
the report's own statement (PostgreSQL: one round trip for a report that interests
nobody). A receiver that wants every report registers the interest "TRUE".

Receivers run in the report's transaction without a savepoint of their own (two round trips
less per report). A receiver that cannot react logs why and raises `ReceiverFailed`: the
transaction rolls back, and the report is recorded again on its own, so it is never lost
(the receiver's sweeps recover what it missed). Any other exception fails the report.

Keyword arguments sent:
    agent_id     str       the reporting agent
    state        str       one of Agent.State
    details      dict|None the report's details (None when absent or null)
    timestamp    datetime  the agent's clock (aware)
    received_at  datetime  the server's receive time, used to correlate with dispatches
"""

from __future__ import annotations

from collections.abc import Callable

from django.dispatch import Signal

agent_state_reported = Signal()


class ReceiverFailed(Exception):
    """Raised by a receiver of `agent_state_reported` that could not react to a report (it has logged
    why): the report's transaction is rolled back and the report recorded again without receivers."""

_interests: dict[str, Callable[[], str]] = {}
_combined: list[str] = []  # report_interest_sql's answer, until the next (un)registration


def report_interest_register(uid: str, sql: Callable[[], str]) -> None:
    """Send `agent_state_reported` for the reports where `sql()` (an SQL boolean) is true. Idempotent per uid.

    `sql` is called when the first report after a registration is recorded (the models are
    loaded by then), once: its SQL must not change while it stays registered.
    """
    _interests[uid] = sql
    _combined.clear()


def report_interest_unregister(uid: str) -> None:
    _interests.pop(uid, None)
    _combined.clear()


def report_interest_sql() -> str:
    """The registered interests as one SQL boolean ("FALSE" when there is none)."""
    if not _combined:
        _combined.append(" OR ".join(f"({build()})" for build in _interests.values()) or "FALSE")
    return _combined[0]
