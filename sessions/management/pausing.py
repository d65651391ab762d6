"""What `opscore_pause` and `opscore_resume` share: one command shape for both directions."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from opscore_site.commands import OpsCommand, atomic_or_dry_run
from sessions import engine
from sessions.bulk import run_each
from sessions.engine import By
from sessions.models import Session
from workflows.models import WorkflowDefinition


def command_actor(username: str | None) -> By:
    """The operator named by a command's `--user`, or the system."""
    if not username:
        return By.system()
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"--user: no user named '{username}'")
    return By.operator(user)


class DryRunCommand(OpsCommand):
    """A command whose change runs in one transaction, rolled back with --dry-run (add the option)."""

    def handle(self, *args, **opts) -> None:
        with atomic_or_dry_run(opts["dry_run"]):
            self.change(**opts)
        if opts["dry_run"]:
            self.stdout.write("dry run: nothing changed")

    def change(self, **opts) -> None:
        raise NotImplementedError


class PauseCommand(DryRunCommand):
    """Pause (or resume) sessions by id, or a workflow definition (optionally with its sessions)."""

    resume = False

    def add_arguments(self, parser) -> None:
        verb = "resume" if self.resume else "pause"
        parser.add_argument("session_ids", nargs="*", metavar="SESSION_ID", help=f"Sessions to {verb}.")
        parser.add_argument("--workflow", metavar="ID",
                            help=f"{verb.capitalize()} this workflow definition instead "
                                 + ("(its held sessions start)." if self.resume
                                    else "(new triggers are accepted and held pending)."))
        parser.add_argument("--sessions", action="store_true",
                            help="With --workflow: also " + ("resume its paused sessions." if self.resume
                                                             else "pause its pending and running sessions."))
        parser.add_argument("--reason", default="", help="Why (kept in the history).")
        parser.add_argument("--dry-run", action="store_true", help="Show what it would do; change nothing.")
        parser.add_argument("--user", metavar="USERNAME", help="Record it as this operator's (default: the system).")

    def change(self, **opts) -> None:
        by = command_actor(opts["user"])
        reason = opts["reason"] or ("opscore_resume" if self.resume else "opscore_pause")
        if opts["workflow"]:
            if opts["session_ids"]:
                raise CommandError("give session ids or --workflow, not both")
            self._definition(opts["workflow"], by=by, reason=reason, sessions=opts["sessions"])
            return
        if opts["sessions"]:
            raise CommandError("--sessions goes with --workflow")
        if not opts["session_ids"]:
            raise CommandError("give one or more session ids, or --workflow ID")
        sessions = []
        for raw in opts["session_ids"]:
            try:
                session = Session.objects.filter(pk=uuid.UUID(raw)).first()
            except ValueError:
                session = None
            if session is None:
                raise CommandError(f"no session '{raw}'")
            sessions.append(session)
        change = engine.session_resume if self.resume else engine.session_pause
        done, skipped = run_each(sessions, lambda session: change(session=session, by=by, reason=reason))
        for session, why in skipped:
            self.stdout.write(f"  skipped {session.pk}: {why}")
        self.stdout.write(f"{'resumed' if self.resume else 'paused'} {done}, skipped {len(skipped)}")

    def _definition(self, workflow_id: str, *, by: By, reason: str, sessions: bool) -> None:
        definition = WorkflowDefinition.objects.filter(pk=workflow_id).first()
        if definition is None:
            raise CommandError(f"no workflow definition '{workflow_id}'")
        try:
            if self.resume:
                count = engine.definition_resume(definition=definition, by=by, reason=reason, resume_sessions=sessions)
                self.stdout.write(f"workflow '{workflow_id}' resumed; {count} session(s) released or resumed")
            else:
                count = engine.definition_pause(definition=definition, by=by, reason=reason, pause_sessions=sessions)
                self.stdout.write(f"workflow '{workflow_id}' paused; {count} session(s) paused")
        except engine.EngineError as exc:
            raise CommandError(str(exc)) from None
