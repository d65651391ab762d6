"""django-q2 jobs. Thin: they take ids and call the engine (through sessions.dispatch). Safe to run twice."""

from __future__ import annotations

from sessions import dispatch


def send_task_job(task_id: str) -> str:
    """Dispatch one queued Task to its agent through AgentKit (at most once per attempt)."""
    return dispatch.task_dispatch(task_id=task_id).outcome


def noop_job(value: int = 0) -> int:
    """Does nothing; the benchmark measures raw django-q2 throughput with it."""
    return value
