import pytest

from workflows.models import WorkflowDefinition, WorkflowDefinitionRevision
from workflows.schema import validate_definition
from workflows.services import DefinitionConflict, workflow_save
from tests.workflows.factories import two_step_spec


def test_it_creates_then_reports_unchanged_then_updates(db):
    spec = validate_definition(two_step_spec("wf"))
    definition, outcome = workflow_save(spec=spec)
    assert outcome == "created" and definition.revision == 1

    _, outcome = workflow_save(spec=validate_definition(two_step_spec("wf")))
    assert outcome == "unchanged"

    changed = two_step_spec("wf")
    changed["name"] = "Renamed"
    definition, outcome = workflow_save(spec=validate_definition(changed))
    assert outcome == "updated"
    definition.refresh_from_db()
    assert definition.name == "Renamed" and definition.revision == 2
    assert list(WorkflowDefinitionRevision.objects.filter(definition=definition).values_list("revision", flat=True)) == [2, 1]


def test_it_refuses_other_content_under_an_existing_id_when_asked(db):
    workflow_save(spec=validate_definition(two_step_spec("wf")))
    changed = two_step_spec("wf")
    changed["tasks"][0]["parameters"] = {"a": 2}
    with pytest.raises(DefinitionConflict):
        workflow_save(spec=validate_definition(changed), allow_update=False)
    assert WorkflowDefinition.objects.get(pk="wf").spec["tasks"][0]["parameters"] == {"a": 1}
