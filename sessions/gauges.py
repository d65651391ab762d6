"""Scrape-time gauges of the fleet for `GET /metrics` (registered with opscore_site.metrics by
SessionsConfig.ready): agents by state and stale, unfinished sessions, queue depth, and the
scheduler's last pass. A few indexed queries per scrape, never per request."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from agents.models import Agent
from sessions.models import Session, Task


class FleetGauges:
    """The gauges read from our tables at scrape time: three indexed queries and one cache read.

    Agents: one GROUP BY over the (small) fleet table. Sessions: only the unfinished statuses,
    on the (status, created_at) index; finished ones are `opscore_sessions_finished_total`.
    Queue depth: queued tasks, on the (status, ...) indexes.
    """

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        cutoff = now - timedelta(seconds=settings.OPSCORE_AGENT_STALE_SECONDS)
        agents = GaugeMetricFamily("opscore_agents", "Registered agents by current state (`unknown`: no report "
                                   "yet).", labels=["state"])
        counts = {state: 0 for state in Agent.State.values}
        stale = 0
        rows = (Agent.objects.active().values("state")
                .annotate(n=Count("pk"), stale=Count("pk", filter=Q(last_seen_at__lt=cutoff) | Q(
                    last_seen_at__isnull=True))))
        for row in rows:
            key = row["state"] or "unknown"
            counts[key] = counts.get(key, 0) + row["n"]
            stale += row["stale"]
        for state, n in counts.items():
            agents.add_metric([state], n)
        yield agents
        yield GaugeMetricFamily("opscore_agents_stale", "Registered agents with no report for "
                                "OPSCORE_AGENT_STALE_SECONDS.", value=stale)

        sessions = GaugeMetricFamily("opscore_sessions", "Unfinished sessions by status.", labels=["status"])
        live = (Session.Status.PENDING, Session.Status.RUNNING)
        by_status = dict(Session.objects.filter(status__in=live).order_by().values_list("status")
                         .annotate(n=Count("pk")))
        for status in live:
            sessions.add_metric([status], by_status.get(status, 0))
        yield sessions
        yield GaugeMetricFamily("opscore_queue_depth", "Tasks queued for dispatch.",
                                value=Task.objects.filter(status=Task.Status.QUEUED).count())

        # Here, not at import: the command module loads the engine (tests/site/test_imports.py).
        from sessions.management.commands.opscore_scheduler import HEARTBEAT_KEY

        heartbeat = cache.get(HEARTBEAT_KEY)
        last_pass = GaugeMetricFamily("opscore_scheduler_last_pass_timestamp_seconds",
                                      "Unix time of the scheduler's last pass in which no sweep failed "
                                      "(0: none recorded).")
        last_pass.add_metric([], _timestamp(heartbeat))
        yield last_pass


def _timestamp(value: object) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0
