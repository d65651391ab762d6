"""The fleet at a glance: the counts the dashboard and `opscore_status` both show."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q

from agents.models import Agent
from sessions.models import Session, Task


def fleet_counts(*, now: datetime) -> dict[str, Any]:
    """Agents by state (registered ones; a never-reported state is None), stale, drained, deregistered
    and quarantined agents, sessions created in the last 24 h by status, the failures queue by status,
    and tasks waiting for an agent that can take them."""
    active = Agent.objects.active()
    flags = Agent.objects.aggregate(
        drained=Count("pk", filter=Q(deregistered_at__isnull=True, drained_at__isnull=False)),
        deregistered=Count("pk", filter=Q(deregistered_at__isnull=False)),
        quarantined=Count("pk", filter=~Q(quarantine_state="")),
    )
    return {
        "agents_by_state": dict(active.values_list("state").annotate(n=Count("pk")).order_by()),
        "agents_stale": Agent.objects.stale(now=now).count(),
        "agents_drained": flags["drained"],
        "agents_deregistered": flags["deregistered"],
        "agents_quarantined": flags["quarantined"],
        "tasks_waiting": Task.objects.filter(status=Task.Status.QUEUED, waiting_since__isnull=False).count(),
        "sessions_24h_by_status": dict(Session.objects.filter(created_at__gte=now - timedelta(hours=24))
                                       .values_list("status").annotate(n=Count("pk")).order_by()),
        "failures_by_status": dict(Task.objects.awaiting_decision().values_list("status")
                                   .annotate(n=Count("pk")).order_by()),
    }
