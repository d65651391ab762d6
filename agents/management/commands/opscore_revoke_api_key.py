"""Revoke an API key by its id or its prefix."""

from __future__ import annotations

from django.core.management.base import CommandError

from agents.models import ApiKey
from agents.services import api_key_revoke
from opscore_site.commands import OpsCommand


class Command(OpsCommand):
    help = (
        "Revoke an API key, named by its id (a number) or its prefix (the first 12 characters "
        "of the key, shown in lists). Revoking twice is harmless."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("key", metavar="ID_OR_PREFIX")
        parser.add_argument("--dry-run", action="store_true", help="Show the key that would be revoked.")

    def handle(self, *args, key: str, dry_run: bool, **options) -> None:
        key = key.strip()
        if key.isdigit():
            matches = list(ApiKey.objects.filter(pk=int(key)))
        elif len(key) >= ApiKey.PREFIX_LENGTH:
            # An active key first: revoked ones may share the prefix.
            prefix = key[: ApiKey.PREFIX_LENGTH]
            matches = list(ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True)) or list(
                ApiKey.objects.filter(prefix=prefix).order_by("-revoked_at")[:1])
        else:
            raise CommandError(f"'{key}' is neither a key id nor a prefix of {ApiKey.PREFIX_LENGTH} characters")
        if not matches:
            raise CommandError(f"no API key with id or prefix '{key}'")
        api_key = matches[0]
        label = f"API key #{api_key.pk} '{api_key.name}' ({api_key.prefix}…)"
        if api_key.revoked_at is not None:
            self.stdout.write(f"{label} was already revoked at {api_key.revoked_at.isoformat()}")
            return
        if dry_run:
            self.stdout.write(f"dry run: would revoke {label}")
            return
        api_key_revoke(key=api_key)
        self.stdout.write(f"revoked {label}")
