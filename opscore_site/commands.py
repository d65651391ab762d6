"""Small helpers shared by the manage.py commands of every app."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, transaction

DAY = 86400.0


def database_problem(exc: DatabaseError) -> str:
    """One line for an unreachable or failing database (psycopg's messages run over several)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return f"the database is unavailable: {first}"


class OpsCommand(BaseCommand):
    """Ops-Core's management commands: an unreachable database is a one-line error, not a traceback."""

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except (OperationalError, InterfaceError) as exc:
            if options.get("traceback"):
                raise
            raise CommandError(database_problem(exc)) from None


def check_count(option: str, value: int, *, at_most: int) -> int:
    """A whole-number option from 1 to `at_most` (a larger one would overflow a SQL LIMIT)."""
    if not 1 <= value <= at_most:
        raise CommandError(f"{option} must be at least 1 and at most {at_most}")
    return value


def check_seconds(option: str, value: float, *, at_most: float = 365 * DAY) -> float:
    """A positive, finite number of seconds (nan would never compare, inf never end)."""
    if not (math.isfinite(value) and 0 < value <= at_most):
        raise CommandError(f"{option} must be a positive number of seconds, at most {at_most:g}")
    return value


@contextmanager
def atomic_or_dry_run(dry_run: bool) -> Iterator[None]:
    """One transaction for the whole command; rolled back at the end when `dry_run`."""
    with transaction.atomic():
        yield
        if dry_run:
            transaction.set_rollback(True)


def run_until_stopped(*, interval: float, step: Callable[[], None], on_error: Callable[[Exception], None]) -> None:
    """Call `step` every `interval` seconds until SIGINT or SIGTERM; a failing step is reported, not fatal."""
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        started = time.monotonic()
        try:
            close_old_connections()
            step()
        except Exception as exc:  # keep looping through a database blip
            on_error(exc)
        # Sleep in small slices so a signal stops the loop promptly.
        while not stopping and time.monotonic() - started < interval:
            time.sleep(min(0.2, max(interval - (time.monotonic() - started), 0.01)))
