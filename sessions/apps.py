from django.apps import AppConfig


def _agent_state_reported(**kwargs) -> None:
    # The engine is imported on the first report, not when the app loads: loading the agents
    # or workflows code (their API views, say) must not load sessions (tests/site/test_imports.py).
    from sessions.engine import on_agent_state

    on_agent_state(**kwargs)


class SessionsConfig(AppConfig):
    name = "sessions"
    label = "opscore_sessions"  # django.contrib.sessions already owns the "sessions" label
    verbose_name = "Sessions"

    def ready(self) -> None:
        # The engine reacts to agent state; `agents` does not import `sessions`.
        from agents.signals import agent_state_reported, report_interest_register
        from sessions.report_interest import engine_interest_sql

        agent_state_reported.connect(_agent_state_reported, dispatch_uid="sessions.engine.on_agent_state")
        # ... and only to the reports it can act on (sessions/report_interest.py).
        report_interest_register("sessions.engine.on_agent_state", engine_interest_sql)
        # The fleet's gauges for GET /metrics, read at scrape time.
        from opscore_site import metrics
        from sessions.gauges import FleetGauges

        metrics.register_collector(FleetGauges())
        # The workflow page's step graph, with figures from the sessions (workflows does not import sessions).
        from sessions.charts import workflow_step_graph
        from workflows.figures import register_step_graph

        register_step_graph(workflow_step_graph)
        # A dispatch job that ended with its connection intact counts like a request that did: the
        # worker's next job skips the health check's round trip (opscore_site/postgresql/base.py).
        # So does a job the monitor has acknowledged (post_execute, sent by django-q2's monitor
        # after each acknowledge): its next acknowledge within the second skips the `SELECT 1`
        # that the ORM broker's connection cleanup would otherwise cost every job.
        from django_q.signals import post_execute, post_execute_in_worker

        from opscore_site.postgresql.base import mark_good

        post_execute_in_worker.connect(mark_good, dispatch_uid="opscore_site.postgresql.mark_good.jobs")
        post_execute.connect(mark_good, dispatch_uid="opscore_site.postgresql.mark_good.acknowledged")
