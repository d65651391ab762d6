"""Resume paused sessions, or a paused workflow definition (its held sessions start)."""

from sessions.management.pausing import PauseCommand


class Command(PauseCommand):
    help = ("Resume paused sessions by id where they stopped (retry and approval deadlines get the time they "
            "had left), or with --workflow ID a paused definition (its held sessions start; --sessions resumes "
            "its paused sessions too).")
    resume = True
