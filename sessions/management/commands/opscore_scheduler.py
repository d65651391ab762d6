"""The scheduler loop: the database is the source of truth for due and overdue work."""

from __future__ import annotations

from django.core.cache import cache
from django.core.management.base import CommandError
from django.utils import timezone

from opscore_site.commands import OpsCommand, check_seconds, run_until_stopped
from sessions import engine

HEARTBEAT_KEY = "opscore:scheduler:heartbeat"


class Command(OpsCommand):
    help = (
        "Run the Ops-Core scheduler loop: about once a second it dispatches due retries, "
        "times out overdue attempts and re-enqueues queued tasks whose job was lost. Safe to "
        "run on several hosts at once (rows are claimed with SKIP LOCKED). Stops on SIGINT/SIGTERM."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--interval", type=float, default=None,
                            help="Seconds between passes (default OPSCORE_SCHEDULER_INTERVAL_SECONDS, 1).")
        parser.add_argument("--once", action="store_true", help="Run one pass, print what it did, and exit.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Count what one pass would do (due retries, overdue attempts, lost jobs); "
                                 "change nothing, then exit.")

    def handle(self, *args, interval: float | None, once: bool, dry_run: bool, **options) -> None:
        from django.conf import settings

        interval = settings.OPSCORE_SCHEDULER_INTERVAL_SECONDS if interval is None else interval
        check_seconds("--interval", interval, at_most=3600)
        if dry_run:
            now = timezone.now()
            batch = engine.SWEEP_BATCH  # a pass handles at most this many of each kind
            counts = {
                "retries_due": engine.due_retries(now=now)[:batch].count(),
                "timed_out": engine.overdue_tasks(now=now)[:batch].count(),
                "requeued": len(engine.sweep_lost_jobs(now=now, limit=batch, dry_run=True)),
            }
            self.stdout.write("dry run, nothing changed: would be " + " ".join(f"{k}={v}" for k, v in counts.items()))
            return
        if once:
            counts = engine.scheduler_tick()
            cache.set(HEARTBEAT_KEY, timezone.now().isoformat(), timeout=None)
            self.stdout.write(" ".join(f"{k}={v}" for k, v in counts.as_dict().items()))
            if counts.errors:
                raise CommandError("; ".join(counts.errors))
            return

        def step() -> None:
            counts = engine.scheduler_tick()
            cache.set(HEARTBEAT_KEY, timezone.now().isoformat(), timeout=None)
            if any(counts.as_dict()[k] for k in ("retries_due", "timed_out", "requeued")):
                self.stdout.write("scheduler: " + " ".join(f"{k}={v}" for k, v in counts.as_dict().items()))

        self.stdout.write(f"scheduler: running every {interval}s")
        run_until_stopped(interval=interval, step=step, on_error=lambda exc: self.stderr.write(
            f"scheduler: pass failed: {exc.__class__.__name__}: {exc}"))
        self.stdout.write("scheduler: stopped")
