import factory

from sessions.models import Session, Task
from tests.agents.factories import AgentFactory
from tests.workflows.factories import WorkflowDefinitionFactory


class SessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Session

    definition = factory.SubFactory(WorkflowDefinitionFactory)
    workflow_id = factory.LazyAttribute(lambda o: o.definition.id)
    spec_snapshot = factory.LazyAttribute(lambda o: o.definition.spec)
    agent = factory.SubFactory(AgentFactory)
    status = Session.Status.RUNNING


class TaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Task

    session = factory.SubFactory(SessionFactory)
    agent = factory.LazyAttribute(lambda o: o.session.agent)
    step_id = "step_1"
    name = "First"
    sequence = factory.Sequence(lambda n: n + 1)
    status = Task.Status.QUEUED
