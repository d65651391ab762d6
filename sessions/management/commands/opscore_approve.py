"""List waiting approval steps, or approve or reject one with a comment."""

from __future__ import annotations

import uuid

from django.core.management.base import CommandError

from sessions import engine
from sessions.management.pausing import DryRunCommand, command_actor
from sessions.models import Task

LIST_LIMIT = 200


class Command(DryRunCommand):
    help = ("List the approval steps waiting for a decision (no TASK_ID), or approve TASK_ID (--reject to "
            "reject it) with --comment. The decision, the comment and who made it become the step's result; "
            "a rejection runs the step's fallback or fails the session. A second decision is refused.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("task_id", nargs="?", metavar="TASK_ID", help="The approval step's task id.")
        parser.add_argument("--reject", action="store_true", help="Reject instead of approving.")
        parser.add_argument("--comment", default="", help="The decision's comment (kept in the step's result).")
        parser.add_argument("--dry-run", action="store_true", help="Show what it would do; change nothing.")
        parser.add_argument("--user", metavar="USERNAME",
                            help="Decide as this operator (their group must match the step's approvers); "
                                 "default: the system, like a service key.")

    def change(self, **opts) -> None:
        if not opts["task_id"]:
            waiting = list(Task.objects.filter(status=Task.Status.WAITING_APPROVAL).select_related("session")
                           .order_by("created_at")[:LIST_LIMIT + 1])
            self.stdout.write(f"{min(len(waiting), LIST_LIMIT)}{'+' if len(waiting) > LIST_LIMIT else ''} "
                              "approval(s) waiting")
            for task in waiting[:LIST_LIMIT]:
                self.stdout.write(f"  {task.pk}  {task.session.workflow_id}/{task.step_id}  "
                                  f"approvers {task.approvers or 'any operator'}  "
                                  f"since {task.created_at:%Y-%m-%d %H:%M:%S}")
            return
        try:
            task = Task.objects.filter(pk=uuid.UUID(opts["task_id"])).first()
        except ValueError:
            task = None
        if task is None:
            raise CommandError(f"no task '{opts['task_id']}'")
        by = command_actor(opts["user"])
        try:
            task = engine.approval_decide(task=task, approve=not opts["reject"], comment=opts["comment"], by=by)
        except engine.EngineError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{task.result['decision']} {task.pk} by {task.result['decidedBy']}")
