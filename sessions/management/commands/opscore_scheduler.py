"""The scheduler loop: the database is the source of truth for due and overdue work."""

from __future__ import annotations

from django.core.cache import cache
from django.core.management.base import CommandError
from django.utils import timezone

from opscore_site.commands import OpsCommand, check_seconds, run_until_stopped
from sessions import sweeps

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
            found = sweeps.scheduler_preview(now=timezone.now())  # a pass handles at most SWEEP_BATCH of each
            self.stdout.write("dry run, nothing changed: would be "
                              + " ".join(f"{k}={len(v)}" for k, v in found.items()))
            return
        if once:
            counts = self._pass()
            self.stdout.write(" ".join(f"{k}={v}" for k, v in counts.as_dict().items()))
            if counts.errors:
                raise CommandError("; ".join(counts.errors))
            return

        def step() -> None:
            counts = self._pass()
            if counts.errors:
                self.stderr.write("scheduler: pass failed: " + "; ".join(counts.errors))
            elif any(counts.as_dict().values()):
                self.stdout.write("scheduler: " + " ".join(f"{k}={v}" for k, v in counts.as_dict().items()))

        self.stdout.write(f"scheduler: running every {interval}s")
        run_until_stopped(interval=interval, step=step, on_error=lambda exc: self.stderr.write(
            f"scheduler: pass failed: {exc.__class__.__name__}: {exc}"))
        self.stdout.write("scheduler: stopped")

    @staticmethod
    def _pass() -> sweeps.SweepCounts:
        """One pass; the heartbeat says the scheduler works, so a pass with a failed sweep writes none."""
        counts = sweeps.scheduler_tick()
        if not counts.errors:
            cache.set(HEARTBEAT_KEY, timezone.now().isoformat(), timeout=None)
        return counts
