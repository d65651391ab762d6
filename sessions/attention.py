"""What needs a person: failures grouped by cause, and the attention list. Reads only; the
actions these pages offer go through the engine (`sessions/engine.py`) or `agents.services`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet

from agents.models import Agent
from sessions.models import Session, Task

# Fingerprints are computed over the newest failures only: the page stays cheap however long the
# queue is, and a cause that matters is among its newest rows.
GROUP_SCAN_LIMIT = 5000
# A session running longer than this many times the sum of its main path's step timeouts.
OVERDUE_FACTOR = 2
OVERDUE_SCAN_LIMIT = 500

_NOISE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<id>"),
    (re.compile(r"'[^']*'"), "'…'"),
    (re.compile(r'"[^"]*"'), '"…"'),
    (re.compile(r"\d+(\.\d+)?"), "N"),
]


def error_class(error: str) -> str:
    """The cause of an error with its particulars (ids, quoted names, numbers) taken out:
    "AgentKit does not know agent 'a1'" and "... agent 'b2'" are one class."""
    text = (error or "(no error recorded)").strip().splitlines()[0][:300]
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    return text


def fingerprint_of(cause: str, agent_id: str) -> str:
    return hashlib.sha1(f"{cause}\x00{agent_id}".encode()).hexdigest()[:12]


@dataclass
class FailureGroup:
    """Dead and failed tasks an operator can still retry, with one cause on one agent."""

    fingerprint: str
    cause: str
    agent_id: str
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    steps: set[str] = field(default_factory=set)
    workflows: set[str] = field(default_factory=set)
    example: str = ""
    task_ids: list[Any] = field(default_factory=list)
    agent: Agent | None = None

    @property
    def steps_text(self) -> str:
        return ", ".join(sorted(self.steps))

    @property
    def workflows_text(self) -> str:
        return ", ".join(sorted(self.workflows))


def failure_groups(queryset: QuerySet[Task] | None = None) -> list[FailureGroup]:
    """The failures queue (`Task.objects.awaiting_decision()`, or `queryset` of it) grouped by
    fingerprint (error class + agent), biggest group first."""
    queryset = Task.objects.awaiting_decision() if queryset is None else queryset
    rows = (queryset.order_by("-updated_at", "id")
            .values_list("pk", "agent_id", "step_id", "session__workflow_id", "last_error", "updated_at")
            [:GROUP_SCAN_LIMIT])
    groups: dict[str, FailureGroup] = {}
    for pk, agent_id, step_id, workflow_id, last_error, updated_at in rows:
        cause = error_class(last_error)
        key = fingerprint_of(cause, agent_id)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FailureGroup(fingerprint=key, cause=cause, agent_id=agent_id,
                                               example=(last_error or "")[:500], last_seen=updated_at)
        group.count += 1
        group.first_seen = updated_at  # rows come newest first
        group.steps.add(step_id)
        group.workflows.add(workflow_id)
        group.task_ids.append(pk)
    agents = Agent.objects.in_bulk({group.agent_id for group in groups.values()})
    for group in groups.values():
        group.agent = agents.get(group.agent_id)
    return sorted(groups.values(), key=lambda g: (-g.count, g.cause, g.agent_id))


def failure_group(fingerprint: str) -> FailureGroup | None:
    for group in failure_groups():
        if group.fingerprint == fingerprint:
            return group
    return None


def _expected_seconds(snapshot: dict) -> int:
    """The sum of the step timeouts along a spec's main path (unknown shapes count nothing)."""
    steps = {step.get("taskId"): step for step in snapshot.get("tasks", []) if isinstance(step, dict)}
    total, current, seen = 0, (snapshot.get("tasks") or [{}])[0].get("taskId"), set()
    while current in steps and current not in seen:
        seen.add(current)
        total += int(steps[current].get("timeoutSeconds") or 300)
        current = steps[current].get("nextTaskId")
    return total


@dataclass
class Attention:
    quarantined: list[Agent]
    stale_with_work: list[tuple[Agent, Task]]
    waiting: list[Task]
    groups: list[FailureGroup]
    overdue: list[tuple[Session, int]]

    @property
    def total(self) -> int:
        return (len(self.quarantined) + len(self.stale_with_work) + len(self.waiting) + len(self.groups)
                + len(self.overdue))


def attention(*, now: datetime, limit: int = 50) -> Attention:
    """Everything the attention list shows, each kind at most `limit` rows."""
    in_flight = {task.agent_id: task for task in Task.objects.filter(status__in=Task.IN_FLIGHT)
                 .filter(agent__in=Agent.objects.stale(now=now)).select_related("session")[:limit]}
    stale = [(agent, in_flight[agent.pk]) for agent in Agent.objects.filter(pk__in=list(in_flight))]
    overdue = []
    candidates = (Session.objects.exclude(status__in=Session.TERMINAL).filter(created_at__lt=now - timedelta(minutes=1))
                  .select_related("agent").only("id", "workflow_id", "agent__id", "status", "created_at",
                                                "started_at", "spec_snapshot")
                  .order_by("created_at")[:OVERDUE_SCAN_LIMIT])
    for session in candidates:
        expected = _expected_seconds(session.spec_snapshot or {})
        if expected and (now - session.created_at).total_seconds() > OVERDUE_FACTOR * expected:
            overdue.append((session, expected))
            if len(overdue) >= limit:
                break
    return Attention(
        quarantined=list(Agent.objects.quarantined().select_related("quarantined_by").order_by("quarantined_at")[:limit]),
        stale_with_work=stale,
        waiting=list(Task.objects.filter(status=Task.Status.QUEUED, waiting_since__isnull=False)
                     .exclude(session__status__in=Session.TERMINAL).select_related("session")
                     .order_by("waiting_since")[:limit]),
        groups=failure_groups()[:limit],
        overdue=overdue,
    )
