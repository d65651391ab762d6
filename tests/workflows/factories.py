import factory

from workflows.models import WorkflowDefinition


def two_step_spec(workflow_id: str = "two-step", **step_overrides) -> dict:
    """A valid two-step spec in the upstream shape."""
    return {
        "id": workflow_id,
        "name": "Two steps",
        "description": "",
        "version": "1.0",
        "tasks": [
            {"taskId": "step_1", "name": "First", "parameters": {"a": 1}, "nextTaskId": "step_2", **step_overrides},
            {"taskId": "step_2", "name": "Second", "parameters": {"b": 2}, "nextTaskId": None},
        ],
    }


class WorkflowDefinitionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkflowDefinition

    id = factory.Sequence(lambda n: f"workflow-{n}")
    name = factory.LazyAttribute(lambda o: f"Workflow {o.id}")
    version = "1.0"
    spec = factory.LazyAttribute(lambda o: two_step_spec(o.id))
