"""The one seam from `agents` to whoever cares about agent state (the session engine).

`agents` knows nothing of sessions: after it has recorded a state report it sends
`agent_state_reported`, inside the same database transaction as the report, so a
receiver's writes commit (or roll back) with the report itself.

Keyword arguments sent:
    agent_id     str       the reporting agent
    state        str       one of Agent.State
    details      dict|None the report's details (None when absent or null)
    timestamp    datetime  the agent's clock (aware)
    received_at  datetime  the server's receive time, used to correlate with dispatches
    is_current   bool      whether the report became the agent's current state (newer wins)
"""

from django.dispatch import Signal

agent_state_reported = Signal()
