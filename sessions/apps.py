from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "sessions"
    label = "opscore_sessions"  # django.contrib.sessions already owns the "sessions" label
    verbose_name = "Sessions"

    def ready(self) -> None:
        # The engine reacts to agent state; `agents` does not import `sessions`.
        from agents.signals import agent_state_reported, report_interest_register
        from sessions.engine import on_agent_state
        from sessions.report_interest import engine_interest_sql

        agent_state_reported.connect(on_agent_state, dispatch_uid="sessions.engine.on_agent_state")
        # ... and only to the reports it can act on (sessions/report_interest.py).
        report_interest_register("sessions.engine.on_agent_state", engine_interest_sql)
