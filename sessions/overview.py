"""The fleet at a glance: the counts the dashboard and `opscore_status` both show."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count

from agents.models import Agent
from sessions.models import Session, Task


def fleet_counts(*, now: datetime) -> dict[str, Any]:
    """Agents by state (registered ones; a never-reported state is None), stale, drained and
    deregistered agents, sessions created in the last 24 h by status, and the failures queue by status."""
    active = Agent.objects.active()
    return {
        "agents_by_state": dict(active.values_list("state").annotate(n=Count("pk")).order_by()),
        "agents_stale": Agent.objects.stale(now=now).count(),
        "agents_drained": active.filter(drained_at__isnull=False).count(),
        "agents_deregistered": Agent.objects.filter(deregistered_at__isnull=False).count(),
        "sessions_24h_by_status": dict(Session.objects.filter(created_at__gte=now - timedelta(hours=24))
                                       .values_list("status").annotate(n=Count("pk")).order_by()),
        "failures_by_status": dict(Task.objects.awaiting_decision().values_list("status")
                                   .annotate(n=Count("pk")).order_by()),
    }
