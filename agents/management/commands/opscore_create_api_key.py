"""Create an API key for the agent API and print it once."""

from __future__ import annotations

from django.core.management.base import CommandError

from agents.models import ApiKey
from agents.services import api_key_create
from opscore_site.commands import OpsCommand, atomic_or_dry_run


class Command(OpsCommand):
    help = (
        "Create a Bearer API key for the agent API and print the raw key once (only its hash is "
        "stored). Without --agent it is a service key valid for any agent id; with --agent ID it "
        "may only act for that agent."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="What the key is for (shown in lists).")
        parser.add_argument("--agent", default="", metavar="ID", help="Bind the key to this agent id.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Check the name and agent id and say what would be created; create nothing.")

    def handle(self, *args, name: str, agent: str, dry_run: bool, **options) -> None:
        agent = agent.strip()
        if len(agent) > ApiKey._meta.get_field("agent_id").max_length:
            raise CommandError("--agent is longer than an agent id can be")
        if len(name.strip()) > ApiKey._meta.get_field("name").max_length:
            raise CommandError("--name is longer than 200 characters")
        try:
            with atomic_or_dry_run(dry_run):
                key, raw = api_key_create(name=name, agent_id=agent)
        except ValueError as exc:
            raise CommandError(f"--name: {exc}") from None
        scope = f"agent {key.agent_id}" if key.agent_id else "service (any agent)"
        if dry_run:
            self.stdout.write(f"dry run, nothing created: would create API key '{key.name}' ({scope})")
            return
        self.stdout.write(f"created API key #{key.pk} '{key.name}' ({scope}), prefix {key.prefix}")
        self.stdout.write(raw)
        self.stderr.write("This is the only time the key is shown: it is not stored. Keep it now.")
