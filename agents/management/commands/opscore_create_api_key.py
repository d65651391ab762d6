"""Create an API key for the agent API and print it once."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from django.utils import timezone

from agents.services import api_key_create
from opscore_site.durations import parse_duration
from opscore_site.commands import OpsCommand, atomic_or_dry_run


class Command(OpsCommand):
    help = (
        "Create a Bearer API key for the agent API and print the raw key once (only its hash is "
        "stored). Without --agent it is a service key valid for any agent id; with --agent ID it "
        "may only act for that agent."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="What the key is for (shown in lists).")
        parser.add_argument("--agent", metavar="ID",
                            help="Bind the key to this agent id (leave the option out for a service key).")
        parser.add_argument("--expires", metavar="DURATION",
                            help="Refuse the key after this long (30d, 12h, 90m, 45s); by default it never expires.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Check the name and agent id and say what would be created; create nothing.")

    def handle(self, *args, name: str, agent: str | None, expires: str | None, dry_run: bool, **options) -> None:
        if agent is not None and not agent.strip():
            # An unset $AGENT_ID must not quietly become a key for every agent.
            raise CommandError("--agent is blank; leave the option out to create a service key")
        expires_at = None
        if expires is not None:
            try:
                expires_at = timezone.now() + parse_duration(expires)
            except ValueError as exc:
                raise CommandError(f"--expires: {exc}") from None
        try:
            with atomic_or_dry_run(dry_run):
                key, raw = api_key_create(name=name, agent_id=agent or "", expires_at=expires_at)
        except ValidationError as exc:
            flags = {"name": "--name", "agent_id": "--agent", "expires_at": "--expires"}
            raise CommandError("; ".join(f"{flags.get(field, field)}: {' '.join(messages)}"
                                         for field, messages in exc.message_dict.items())) from None
        scope = f"agent {key.agent_id}" if key.agent_id else "service (any agent)"
        if key.expires_at is not None:
            scope += f", expires {key.expires_at.isoformat(timespec='seconds')}"
        if dry_run:
            self.stdout.write(f"dry run, nothing created: would create API key '{key.name}' ({scope})")
            return
        self.stdout.write(f"created API key #{key.pk} '{key.name}' ({scope}), prefix {key.prefix}")
        self.stdout.write(raw)
        self.stderr.write("This is the only time the key is shown: it is not stored. Keep it now.")
