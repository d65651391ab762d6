"""Pause sessions (steps in flight finish, the next waits) or a workflow definition (new triggers held)."""

from sessions.management.pausing import PauseCommand


class Command(PauseCommand):
    help = ("Pause sessions by id (their steps in flight finish; nothing new is dispatched until resumed), "
            "or with --workflow ID a definition (new triggers are accepted and held pending; --sessions "
            "pauses its pending and running sessions too). See opscore_resume; opscore_fleet for the whole fleet.")
    resume = False
