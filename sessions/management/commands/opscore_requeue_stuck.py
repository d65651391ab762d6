"""Hand stuck work back to the engine: one scheduler pass, listed first, for when the scheduler was down."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError
from django.utils import timezone

from opscore_site.commands import OpsCommand, check_count
from sessions import sweeps

MAX_LIMIT = 100_000


class Command(OpsCommand):
    help = (
        "One scheduler pass, listed first: retries whose time has come (re-queued), tasks whose attempt is "
        "past its timeout (they fail and retry or go dead, as the step says) and queued tasks whose dispatch "
        "job was lost (none on its way, or one not run for OPSCORE_LOST_JOB_SECONDS, while their job would "
        "now decide something: the agent is free, deregistered, or the session ended; they are re-enqueued, "
        "at most one per free agent, and none while the job queue's oldest waiting job is older than "
        "OPSCORE_LOST_JOB_SECONDS). The scheduler loop does this every second; this command is for when it "
        "was down. --dry-run lists them."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="List what was found; change nothing.")
        parser.add_argument("--limit", type=int, default=500, help=f"At most this many of each kind (default 500, at most {MAX_LIMIT}).")

    def handle(self, *args, dry_run: bool, limit: int, **options) -> None:
        check_count("--limit", limit, at_most=MAX_LIMIT)
        now = timezone.now()
        found = sweeps.scheduler_preview(now=now, limit=limit)
        self.stdout.write(f"{len(found['retries_due'])} due retry(s), {len(found['timed_out'])} overdue attempt(s), "
                          f"{len(found['requeued'])} queued task(s) with a lost job "
                          f"(no job for {settings.OPSCORE_LOST_JOB_SECONDS}s)"
                          + (f", {len(found['queue_timeouts'])} waited past their queue deadline"
                             if found["queue_timeouts"] else ""))
        for task in found["retries_due"]:
            self.stdout.write(f"  retry    {task.pk}  {task.step_id}  agent {task.agent_id}  "
                              f"attempt {task.attempt}  due {task.next_attempt_at:%Y-%m-%d %H:%M:%S}")
        for task in found["timed_out"]:
            self.stdout.write(f"  overdue  {task.pk}  {task.step_id}  agent {task.agent_id}  "
                              f"attempt {task.attempt}  due {task.timeout_at:%Y-%m-%d %H:%M:%S}")
        for task in found["queue_timeouts"]:
            self.stdout.write(f"  waited   {task.pk}  {task.step_id}  {task.routing_note}")
        for task in found["requeued"]:
            enqueued = f"{task.enqueued_at:%Y-%m-%d %H:%M:%S}" if task.enqueued_at else "never"
            self.stdout.write(f"  lost     {task.pk}  {task.step_id}  agent {task.agent_id}  enqueued {enqueued}")
        if dry_run:
            self.stdout.write("dry run: nothing changed")
            return
        counts = sweeps.scheduler_tick(now=now, limit=limit)
        self.stdout.write(f"retried {counts.retries_due}, timed out {counts.timed_out}, re-enqueued {counts.requeued}")
        if counts.errors:
            raise CommandError("; ".join(counts.errors))
