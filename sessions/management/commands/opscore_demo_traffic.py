"""DEMO ONLY: keep the local demo busy by starting sessions for idle agents."""

from __future__ import annotations

import random

from django.conf import settings
from django.core.management.base import CommandError

from agents.models import Agent
from opscore_site.commands import OpsCommand, check_count, check_seconds, run_until_stopped
from sessions import engine
from sessions.engine import By
from sessions.models import Session, Task
from workflows.models import WorkflowDefinition


# Sessions waiting at an approval keep no agent busy; at most this many wait at once, so the demo's
# inbox fills up without the fleet ending up with nothing but approvals.
APPROVALS_WAITING_MAX = 6


def _has_approval(definition: WorkflowDefinition) -> bool:
    return any(isinstance(step, dict) and step.get("type") == "approval" for step in definition.spec.get("tasks", []))


def pick_idle_agents(*, workflow_ids: list[str], max_sessions: int) -> list[tuple[Agent, WorkflowDefinition]]:
    """Each idle agent that has no unfinished session (but one waiting for an approval), with a random
    workflow for it (one with an approval step only while fewer than APPROVALS_WAITING_MAX wait)."""
    definitions = list(WorkflowDefinition.objects.filter(pk__in=workflow_ids) if workflow_ids
                       else WorkflowDefinition.objects.all())
    if Task.objects.filter(status=Task.Status.WAITING_APPROVAL).count() >= APPROVALS_WAITING_MAX:
        definitions = [d for d in definitions if not _has_approval(d)]
    if not definitions:
        return []
    waiting = Task.objects.filter(status=Task.Status.WAITING_APPROVAL).values("session_id")
    busy = Session.objects.exclude(status__in=Session.TERMINAL).exclude(pk__in=waiting).values("agent_id")
    agents = (Agent.objects.active().filter(state=Agent.State.IDLE, drained_at__isnull=True)
              .exclude(pk__in=busy).order_by("?")[:max_sessions])
    return [(agent, random.choice(definitions)) for agent in agents]


def start_for_idle_agents(*, workflow_ids: list[str], max_sessions: int) -> list[Session]:
    """Start one session (random workflow) for each idle agent that has no unfinished session (but
    one waiting for an approval)."""
    started = []
    for agent, definition in pick_idle_agents(workflow_ids=workflow_ids, max_sessions=max_sessions):
        try:
            started.append(engine.session_start(definition=definition, agent=agent,
                                                initial_payload={"demo": True}, by=By.system()))
        except engine.EngineError:
            continue  # the agent went away meanwhile
    return started


class Command(OpsCommand):
    help = (
        "DEMO ONLY (needs DEBUG=1 or --force): every few seconds, start a session of a random workflow "
        "definition for each idle agent that has no unfinished session, so the local demo's dashboard "
        "shows agents working. Stops on SIGINT/SIGTERM. Never run it against a real fleet."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--interval", type=float, default=3.0, help="Seconds between rounds (default 3).")
        parser.add_argument("--workflow", action="append", default=[], metavar="ID",
                            help="Only these definitions (repeatable; default all).")
        parser.add_argument("--max-per-round", type=int, default=10, help="Sessions started per round (default 10).")
        parser.add_argument("--once", action="store_true", help="One round, then exit.")
        parser.add_argument("--dry-run", action="store_true",
                            help="List the agents one round would start a session for; start nothing, then exit.")
        parser.add_argument("--force", action="store_true", help="Run even when DEBUG is off.")

    def handle(self, *args, interval: float, workflow: list[str], max_per_round: int, once: bool,
               force: bool, dry_run: bool, **options) -> None:
        if not settings.DEBUG and not force:
            raise CommandError("opscore_demo_traffic is for the local demo: it needs DEBUG=1 (or --force)")
        check_seconds("--interval", interval, at_most=3600)
        check_count("--max-per-round", max_per_round, at_most=1000)
        missing = sorted(set(workflow) - set(WorkflowDefinition.objects.filter(pk__in=workflow)
                                             .values_list("pk", flat=True)))
        if missing:
            raise CommandError(f"no workflow definition with id: {', '.join(missing)}")
        if dry_run:
            picks = pick_idle_agents(workflow_ids=workflow, max_sessions=max_per_round)
            for agent, definition in picks:
                self.stdout.write(f"  would start {definition.pk} for {agent.pk}")
            self.stdout.write(f"demo traffic: dry run, nothing started: would start {len(picks)} session(s)")
            return
        if once:
            started = start_for_idle_agents(workflow_ids=workflow, max_sessions=max_per_round)
            self.stdout.write(f"demo traffic: started {len(started)} session(s)")
            return

        def step() -> None:
            for session in start_for_idle_agents(workflow_ids=workflow, max_sessions=max_per_round):
                self.stdout.write(f"demo traffic: started {session.workflow_id} for {session.agent_id}")

        self.stdout.write(f"demo traffic: starting sessions for idle agents every {interval}s")
        run_until_stopped(interval=interval, step=step, on_error=lambda exc: self.stderr.write(
            f"demo traffic: round failed: {exc.__class__.__name__}: {exc}"))
        self.stdout.write("demo traffic: stopped")
