from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "sessions"
    label = "opscore_sessions"  # django.contrib.sessions already owns the "sessions" label
    verbose_name = "Sessions"

    def ready(self) -> None:
        # The engine reacts to agent state; `agents` does not import `sessions`.
        from agents.signals import agent_state_reported
        from sessions.engine import on_agent_state

        agent_state_reported.connect(on_agent_state, dispatch_uid="sessions.engine.on_agent_state")
