"""Delete history past retention in batches: agent state reports, finished sessions, django-q2 successes;
and the API throttle's counters that count nothing any more."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone
from django_q.models import Success

from agents.models import AgentState
from opscore_site.commands import OpsCommand, check_count
from opscore_site.durations import parse_duration
from opscore_site.throttle import throttle_prune
from sessions.models import Session

BAR_WIDTH = 30
MAX_BATCH_SIZE = 100_000


class Command(OpsCommand):
    help = (
        "Delete, in batches, agent state reports received, sessions that ended (completed, failed or "
        "cancelled, with their tasks, attempts and events) and django-q2 success rows stopped longer "
        "ago than --older-than (default OPSCORE_RETENTION_DAYS days). Pending and running sessions are "
        "never touched. API throttle counters at rest (they count nothing any more) go too. "
        "--dry-run prints the counts only."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--older-than", metavar="DURATION",
                            help="30d, 12h, 90m or 45s (default: OPSCORE_RETENTION_DAYS days).")
        parser.add_argument("--batch-size", type=int, default=1000, help=f"Rows per delete (default 1000, at most {MAX_BATCH_SIZE}).")
        parser.add_argument("--dry-run", action="store_true", help="Print what would be deleted; delete nothing.")

    def handle(self, *args, older_than: str | None, batch_size: int, dry_run: bool, **options) -> None:
        if older_than is None:
            older_than = f"{settings.OPSCORE_RETENTION_DAYS}d"
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from None
        check_count("--batch-size", batch_size, at_most=MAX_BATCH_SIZE)
        cutoff = timezone.now() - age
        targets = [
            ("agent state reports", AgentState.objects.filter(received_at__lt=cutoff)),
            ("finished sessions", Session.objects.filter(status__in=Session.TERMINAL, ended_at__lt=cutoff)),
            ("django-q2 successes", Success.objects.filter(stopped__lt=cutoff)),
        ]
        self.stdout.write(f"pruning what is older than {older_than} (before {cutoff:%Y-%m-%d %H:%M:%S} UTC)")
        for label, queryset in targets:
            total = queryset.count()
            if dry_run:
                self.stdout.write(f"{label}: {total} would be deleted")
                continue
            deleted = self._delete_in_batches(queryset, total=total, batch_size=batch_size, label=label)
            self.stdout.write(f"{label}: {deleted} deleted")
        at_rest = throttle_prune(now=time.time(), dry_run=dry_run)
        self.stdout.write(f"throttle counters at rest: {at_rest} {'would be deleted' if dry_run else 'deleted'}")
        if dry_run:
            self.stdout.write("dry run: nothing deleted")

    def _delete_in_batches(self, queryset, *, total: int, batch_size: int, label: str) -> int:
        deleted = 0
        while True:
            # Re-evaluated each round: rows are selected by pk so each DELETE stays short.
            ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            with transaction.atomic():
                # The filter again: a session retried since the select is no longer finished.
                _, by_model = queryset.filter(pk__in=ids).delete()
                count = by_model.get(queryset.model._meta.label, 0)  # not the rows that cascaded with them
            deleted += count
            self._progress(label, deleted, max(total, deleted))
        return deleted

    def _progress(self, label: str, done: int, total: int) -> None:
        filled = BAR_WIDTH * done // total
        self.stderr.write(f"  {label:<22} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}")
