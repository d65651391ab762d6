"""Retry dead or failed tasks in bulk, through the engine."""

from __future__ import annotations

import sys

from django.core.management.base import CommandError

from opscore_site.commands import OpsCommand
from opscore_site.durations import parse_moment
from sessions import engine
from sessions.bulk import run_each
from sessions.management.pausing import command_actor
from sessions.models import Task

REASON = "opscore_retry"
LIST_LIMIT = 200


class Command(OpsCommand):
    help = (
        "Retry dead and/or failed tasks (a fresh round of attempts each), filtered by workflow, agent, "
        "error text and the time of their last change. Prints how many match first; --dry-run lists "
        "them; acting needs --yes (or an interactive confirmation on a terminal)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--workflow", action="append", default=[], metavar="ID",
                            help="Workflow definition id (repeatable).")
        parser.add_argument("--agent", action="append", default=[], metavar="ID", help="Agent id (repeatable).")
        parser.add_argument("--error-contains", metavar="TEXT", help="Case-insensitive text in the last error.")
        parser.add_argument("--since", metavar="WHEN",
                            help="Changed at or after WHEN: a duration ago (30d, 12h, 90m, 45s) or an ISO time.")
        parser.add_argument("--until", metavar="WHEN", help="Changed before WHEN (same forms as --since).")
        parser.add_argument("--status", choices=["dead", "failed"], action="append", default=[],
                            help="dead or failed (repeatable; default both).")
        parser.add_argument("--user", metavar="USERNAME",
                            help="Record the retries as this operator's (default: the system).")
        parser.add_argument("--dry-run", action="store_true", help="List the matching tasks; change nothing.")
        parser.add_argument("--yes", action="store_true", help="Do it without asking.")

    def handle(self, *args, **opts) -> None:
        tasks = Task.objects.awaiting_decision().filter(status__in=opts["status"] or sorted(Task.NEEDS_DECISION))
        if opts["workflow"]:
            tasks = tasks.filter(session__workflow_id__in=opts["workflow"])
        if opts["agent"]:
            tasks = tasks.filter(agent_id__in=opts["agent"])
        if opts["error_contains"]:
            tasks = tasks.filter(last_error__icontains=opts["error_contains"])
        for name, lookup in (("since", "updated_at__gte"), ("until", "updated_at__lt")):
            if opts[name]:
                try:
                    tasks = tasks.filter(**{lookup: parse_moment(opts[name])})
                except ValueError as exc:
                    raise CommandError(f"--{name}: {exc}") from None
        by = command_actor(opts["user"])

        tasks = list(tasks.select_related("session").order_by("updated_at"))
        self.stdout.write(f"{len(tasks)} task(s) match")
        if not tasks:
            return
        if opts["dry_run"]:
            for task in tasks[:LIST_LIMIT]:
                self.stdout.write(f"  {task.pk}  {task.status:<6}  {task.session.workflow_id}/{task.step_id}  "
                                  f"agent {task.agent_id}  {task.updated_at:%Y-%m-%d %H:%M:%S}  "
                                  f"{task.last_error[:80]}")
            if len(tasks) > LIST_LIMIT:
                self.stdout.write(f"  … and {len(tasks) - LIST_LIMIT} more")
            self.stdout.write("dry run: nothing retried")
            return
        if not opts["yes"]:
            if not sys.stdin.isatty():
                raise CommandError("not retrying without confirmation: pass --yes (or --dry-run to list them)")
            try:
                answer = input(f"Retry {len(tasks)} task(s)? [y/N] ")
            except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt is a no
                answer = ""
            if answer.strip().lower() not in {"y", "yes"}:
                raise CommandError("cancelled: nothing retried")

        retried, skipped = run_each(tasks, lambda task: engine.task_retry(task=task, by=by, reason=REASON))
        for task, reason in skipped:  # raced with another retry, a cancel, a fallback
            self.stdout.write(f"  skipped {task.pk}: {reason}")
        self.stdout.write(f"retried {retried}, skipped {len(skipped)}")
