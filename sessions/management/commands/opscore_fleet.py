"""Show or flip the fleet-wide dispatch switch (maintenance)."""

from __future__ import annotations

from django.core.management.base import CommandError

from sessions import engine
from sessions.management.pausing import DryRunCommand, command_actor
from sessions.models import ControlEvent, FleetDispatch


class Command(DryRunCommand):
    help = ("Show the fleet's dispatch switch, or turn it off (nothing is dispatched; steps in flight finish; "
            "reports and triggers are still accepted) or on (the held work is dispatched). Per-agent drain "
            "is separate (the agents' drain action in the UI and the admin).")

    def add_arguments(self, parser) -> None:
        parser.add_argument("switch", nargs="?", choices=["status", "off", "on"], default="status",
                            help="status (default), off or on.")
        parser.add_argument("--reason", default="", help="Why (shown in the banner and kept in the history).")
        parser.add_argument("--dry-run", action="store_true", help="Show what it would do; change nothing.")
        parser.add_argument("--user", metavar="USERNAME", help="Record it as this operator's (default: the system).")

    def change(self, **opts) -> None:
        by = command_actor(opts["user"])
        try:
            if opts["switch"] == "off":
                engine.fleet_pause(by=by, reason=opts["reason"])
            elif opts["switch"] == "on":
                kicked = engine.fleet_resume(by=by, reason=opts["reason"])
                self.stdout.write(f"held work kicked for {kicked} agent(s)")
        except engine.EngineError as exc:
            raise CommandError(str(exc)) from None
        switch = FleetDispatch.current()
        if switch.is_off:
            why = f": {switch.reason}" if switch.reason else ""
            self.stdout.write(f"dispatch is OFF since {switch.paused_at:%Y-%m-%d %H:%M:%S %Z} "
                              f"by {switch.paused_by_label or 'system'}{why}")
        else:
            self.stdout.write("dispatch is on")
        for event in ControlEvent.objects.filter(scope=ControlEvent.Scope.FLEET)[:5]:
            self.stdout.write(f"  {event.created_at:%Y-%m-%d %H:%M:%S}  {event.action:<7}  {event.actor_label}"
                              f"  {event.reason}")
