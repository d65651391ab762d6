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


def _race(monkeypatch, specs: list[dict], *, allow_update: bool) -> list:
    """Both saves read "no such definition" before either inserts (a barrier after the read)."""
    import threading

    from django.db import connection

    from workflows import services

    real_locked = services._locked
    barrier = threading.Barrier(len(specs))
    waited = threading.local()

    def locked_then_wait(definition_id):
        row = real_locked(definition_id)
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait(timeout=10)
        return row

    monkeypatch.setattr(services, "_locked", locked_then_wait)
    results: list = []

    def save(document: dict) -> None:
        try:
            results.append(workflow_save(spec=validate_definition(document), allow_update=allow_update)[1])
        except Exception as exc:  # noqa: BLE001 - the assertions report it
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(document,)) for document in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_saves_of_the_same_new_definition_both_succeed(monkeypatch):
    results = _race(monkeypatch, [two_step_spec("wf"), two_step_spec("wf")], allow_update=False)
    assert sorted(map(str, results)) == ["created", "unchanged"], results
    assert WorkflowDefinition.objects.get(pk="wf").revision == 1
    assert WorkflowDefinitionRevision.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_save_of_other_content_conflicts_or_updates(monkeypatch):
    other = two_step_spec("wf", parameters={"a": 2})
    results = _race(monkeypatch, [two_step_spec("wf"), other], allow_update=False)
    assert sorted(type(r).__name__ for r in results) == ["DefinitionConflict", "str"], results
    assert WorkflowDefinition.objects.get(pk="wf").revision == 1

    results = _race(monkeypatch, [two_step_spec("wf2"), two_step_spec("wf2", parameters={"a": 2})],
                    allow_update=True)
    assert sorted(results) == ["created", "updated"], results
    assert WorkflowDefinition.objects.get(pk="wf2").revision == 2
