"""Hand stuck work back to the engine: overdue attempts and queued tasks whose job was lost."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from opscore_site.commands import OpsCommand, check_count
from sessions import engine

MAX_LIMIT = 100_000


class Command(OpsCommand):
    help = (
        "Find tasks whose attempt is past its timeout (they fail and retry or go dead, as the step says) "
        "and queued tasks whose dispatch job was lost (no job run for OPSCORE_LOST_JOB_SECONDS while their "
        "agent is idle; they are re-enqueued). The scheduler loop does this every second; this command is "
        "for when it was down. --dry-run lists them."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="List what was found; change nothing.")
        parser.add_argument("--limit", type=int, default=500, help=f"At most this many of each kind (default 500, at most {MAX_LIMIT}).")

    def handle(self, *args, dry_run: bool, limit: int, **options) -> None:
        check_count("--limit", limit, at_most=MAX_LIMIT)
        now = timezone.now()
        overdue = list(engine.overdue_tasks(now=now)[:limit])
        lost = engine.sweep_lost_jobs(now=now, limit=limit, dry_run=True)
        self.stdout.write(f"{len(overdue)} overdue attempt(s), {len(lost)} queued task(s) with a lost job "
                          f"(no job for {settings.OPSCORE_LOST_JOB_SECONDS}s)")
        for task in overdue:
            self.stdout.write(f"  overdue  {task.pk}  {task.step_id}  agent {task.agent_id}  "
                              f"attempt {task.attempt}  due {task.timeout_at:%Y-%m-%d %H:%M:%S}")
        for task in lost:
            enqueued = f"{task.enqueued_at:%Y-%m-%d %H:%M:%S}" if task.enqueued_at else "never"
            self.stdout.write(f"  lost     {task.pk}  {task.step_id}  agent {task.agent_id}  enqueued {enqueued}")
        if dry_run:
            self.stdout.write("dry run: nothing changed")
            return
        timed_out = engine.sweep_timeouts(now=now, limit=limit)
        requeued = len(engine.sweep_lost_jobs(now=now, limit=limit))
        self.stdout.write(f"timed out {timed_out}, re-enqueued {requeued}")
