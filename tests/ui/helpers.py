"""Builders for UI tests: rows in the shapes the engine leaves them (built with factories)."""

from __future__ import annotations

from django.utils import timezone

from sessions.models import Session, Task
from tests.agents.factories import AgentFactory
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.workflows.factories import WorkflowDefinitionFactory


def failed_session(*, agent=None, definition=None, error="AgentKit does not know agent: 404") -> Task:
    """A failed session whose first step is dead (as the engine leaves it after a permanent error)."""
    agent = agent or AgentFactory()
    definition = definition or WorkflowDefinitionFactory()
    session = SessionFactory(agent=agent, definition=definition, status=Session.Status.FAILED,
                             error=f"step 'step_1': {error}", ended_at=timezone.now())
    return TaskFactory(session=session, status=Task.Status.DEAD, attempt=1, last_error=error,
                       finished_at=timezone.now())
