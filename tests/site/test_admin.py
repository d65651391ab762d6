"""Every admin changelist and change form renders; login and django.contrib.sessions still work."""

import html

import pytest
from django.contrib import admin
from django.urls import reverse

from agents.models import ApiKey
from sessions import engine
from sessions.models import QuarantineEvent, TaskAttempt, TaskEvent, Actor
from workflows.models import WorkflowDefinition
from workflows.schema import validate_definition
from workflows.services import workflow_save
from tests.agents.factories import AgentStateFactory
from tests.sessions.factories import TaskFactory
from tests.workflows.factories import two_step_spec
from agents.services import api_key_create
from django.utils import timezone

pytestmark = pytest.mark.django_db

OUR_APPS = {"agents", "workflows", "opscore_sessions"}


@pytest.fixture
def populated(operator):
    task = TaskFactory()
    AgentStateFactory(agent=task.agent)
    TaskAttempt.objects.create(task=task, number=1, reference_at=timezone.now(), agent=task.agent)
    QuarantineEvent.objects.create(agent=task.agent, old_state="", new_state="quarantined", actor=Actor.SYSTEM,
                                   reason="3 failures in a row", failures=[{"task": str(task.pk), "attempt": 1}])
    TaskEvent.objects.create(session=task.session, task=task, old_status="queued", new_status="dispatched",
                             actor=Actor.SYSTEM)
    api_key_create(name="fleet")
    workflow_save(spec=validate_definition(two_step_spec("admin-wf")))
    engine.fleet_pause(by=engine.By.operator(operator), reason="admin pages")  # the switch row and its history
    return task


def our_models():
    return [m for m in admin.site._registry if m._meta.app_label in OUR_APPS]


def test_every_model_of_ours_is_in_the_admin():
    names = {m.__name__ for m in our_models()}
    assert names == {"Agent", "AgentState", "ApiKey", "WorkflowDefinition", "WorkflowDefinitionRevision",
                     "Session", "Task", "TaskAttempt", "TaskEvent", "QuarantineEvent", "FleetDispatch", "ControlEvent"}


def test_each_changelist_and_change_form_renders(client, operator, populated):
    client.force_login(operator)
    for model in our_models():
        opts = model._meta
        changelist = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert changelist.status_code == 200, opts.label
        obj = model.objects.first()
        assert obj is not None, opts.label
        change = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
        assert change.status_code == 200, opts.label
        assert b"Traceback" not in change.content


def test_changelist_filters_and_search_work(client, operator, populated):
    client.force_login(operator)
    url = reverse("admin:opscore_sessions_task_changelist")
    response = client.get(url, {"status__exact": "queued", "q": populated.step_id})
    assert response.status_code == 200
    assert str(populated.pk) in response.content.decode()


def test_the_login_page_and_admin_login_work(client, operator):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("admin:login"), {"username": "alice", "password": "correct-horse-battery",
                                                   "next": "/admin/"})
    assert response.status_code == 302
    # The login stored a django.contrib.sessions session, which our sessions app must not shadow.
    assert client.get("/admin/").status_code == 200
    from django.contrib.sessions.models import Session as DjangoSession

    assert DjangoSession.objects.count() == 1


def test_an_anonymous_user_is_sent_to_the_admin_login(client):
    response = client.get("/admin/opscore_sessions/session/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_adding_an_api_key_in_the_admin_shows_it_once(client, operator):
    client.force_login(operator)
    response = client.post(reverse("admin:agents_apikey_add"), {"name": "deploy", "agent_id": ""}, follow=True)
    assert response.status_code == 200
    key = ApiKey.objects.get(name="deploy")
    text = response.content.decode()
    assert f"{key.prefix}" in text and "shown this once" in text


def test_the_admin_refuses_an_invalid_definition_with_the_validator_message(client, operator):
    client.force_login(operator)
    document = two_step_spec("bad")
    document["tasks"][1]["nextTaskId"] = "missing"
    import json

    response = client.post(reverse("admin:workflows_workflowdefinition_add"), {"spec": json.dumps(document)})
    assert response.status_code == 200
    assert "does not name a step in this workflow" in response.content.decode()
    assert not WorkflowDefinition.objects.exists()


def test_the_admin_saves_a_definition_through_the_service(client, operator):
    client.force_login(operator)
    import json

    response = client.post(reverse("admin:workflows_workflowdefinition_add"), {"spec": json.dumps(two_step_spec("ok"))})
    assert response.status_code == 302
    definition = WorkflowDefinition.objects.get(pk="ok")
    assert definition.revisions.count() == 1 and definition.updated_by == operator


def test_admin_revoke_action_reports_the_count(client, operator):
    client.force_login(operator)
    key, _ = api_key_create(name="old")
    response = client.post(reverse("admin:agents_apikey_changelist"),
                           {"action": "revoke_selected", "_selected_action": [key.pk]}, follow=True)
    assert "Revoked 1 API key(s)." in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_a_definition_keeps_its_id_everywhere_with_one_message(client, operator):
    """Admin, model validation, the edit page and the API's PUT share the validator's rule and message."""
    import json

    from django.core.exceptions import ValidationError
    from rest_framework.test import APIClient

    client.force_login(operator)
    workflow_save(spec=validate_definition(two_step_spec("kept")))
    message = "the spec's id 'renamed' differs from this definition's id 'kept'; import it as a new definition instead"
    renamed = json.dumps(two_step_spec("renamed"))

    admin_page = client.post(reverse("admin:workflows_workflowdefinition_change", args=["kept"]), {"spec": renamed})
    assert admin_page.status_code == 200 and f"id: {message}" in html.unescape(admin_page.content.decode())
    with pytest.raises(ValidationError) as caught:
        WorkflowDefinition(id="kept", name="x", spec=two_step_spec("renamed")).clean()
    assert caught.value.message_dict == {"spec": [f"id: {message}"]}
    edit_page = client.post(reverse("workflows:workflow-edit", args=["kept"]), {"document": renamed})
    assert edit_page.status_code == 400 and message in html.unescape(edit_page.content.decode())
    api = APIClient()
    api.force_login(operator)
    answer = api.put("/v1/opscore/workflows/kept", two_step_spec("renamed"), format="json")
    assert answer.status_code == 400 and answer.json()["errors"] == {"id": [message]}
    assert WorkflowDefinition.objects.get().spec["id"] == "kept"
