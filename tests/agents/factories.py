import factory
from django.utils import timezone

from agents.models import Agent, AgentState


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    id = factory.Sequence(lambda n: f"agent-{n:04d}")
    name = factory.Sequence(lambda n: f"Agent {n}")
    version = "1.0.0"
    capabilities = factory.LazyFunction(lambda: ["test_capability"])
    state = Agent.State.IDLE
    state_timestamp = factory.LazyFunction(timezone.now)
    state_received_at = factory.LazyFunction(timezone.now)
    last_seen_at = factory.LazyFunction(timezone.now)


class AgentStateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentState

    agent = factory.SubFactory(AgentFactory)
    state = Agent.State.IDLE
    details = factory.LazyFunction(dict)
    timestamp = factory.LazyFunction(timezone.now)
