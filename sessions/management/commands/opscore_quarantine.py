"""Quarantine an agent by hand, or release it, through the engine."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from agents.models import Agent
from opscore_site.commands import OpsCommand
from sessions import engine
from sessions.engine import By


class Command(OpsCommand):
    help = (
        "Quarantine an agent (no dispatch to it until released; no automatic probe; its queued tasks move to "
        "other agents where their steps allow) with --reason, or release it with --release. Without an "
        "action, shows its quarantine state."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("agent_id", metavar="AGENT_ID")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--reason", metavar="TEXT", help="Quarantine the agent, for this reason.")
        action.add_argument("--release", action="store_true", help="Release the agent from quarantine.")
        parser.add_argument("--user", metavar="USERNAME", help="Record it as this operator's (default: the system).")
        parser.add_argument("--dry-run", action="store_true", help="Say what would change; change nothing.")

    def handle(self, *args, agent_id: str, reason: str | None, release: bool, user: str | None, dry_run: bool,
               **options) -> None:
        agent = Agent.objects.filter(pk=agent_id).first()
        if agent is None:
            raise CommandError(f"no agent '{agent_id}'")
        by = By.system()
        if user:
            found = get_user_model().objects.filter(username=user).first()
            if found is None:
                raise CommandError(f"--user: no user named '{user}'")
            by = By.operator(found)
        state = agent.quarantine_state or "not quarantined"
        if reason is None and not release:
            self.stdout.write(f"agent {agent.pk}: {state}" + (f" ({agent.quarantine_reason})"
                                                              if agent.quarantine_reason else ""))
            return
        if reason is not None and not reason.strip():
            raise CommandError("--reason may not be blank")
        if dry_run:
            verb = "release" if release else "quarantine"
            self.stdout.write(f"dry run: would {verb} agent {agent.pk} (now {state})")
            return
        try:
            if release:
                engine.agent_release(agent=agent, by=by, reason="released with opscore_quarantine")
            else:
                engine.agent_quarantine(agent=agent, by=by, reason=reason)
        except engine.EngineError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"agent {agent.pk}: {'released' if release else 'quarantined'}")
