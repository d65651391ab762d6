"""Bad input on the operator pages: a clear message or a 404, never a 500 or lost data."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from sessions.models import Session, Task, TaskEvent
from tests.agents.factories import AgentFactory
from tests.sessions.factories import TaskFactory
from tests.ui.helpers import failed_session
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db


def test_ids_with_nul_in_the_path_are_404(staff_client):
    """PostgreSQL refuses NUL in a query: such an id must not reach the database (it was a 500)."""
    AgentFactory(id="a1")
    WorkflowDefinitionFactory(id="wf")
    for url in ["/agents/a%00/", "/workflows/w%00f/", "/workflows/%00/edit/", "/workflows/%00/export.json",
                "/workflows/%00/start/"]:
        assert staff_client.get(url).status_code == 404, url
    for url in ["/agents/a%00/drain/", "/agents/a%00/undrain/"]:
        assert staff_client.post(url, {"reason": "x"}).status_code == 404, url


def test_a_bad_filter_value_is_shown_and_the_other_filters_still_apply(staff_client):
    AgentFactory(id="alpha-1", state="idle")
    AgentFactory(id="beta-1", state="idle")
    response = staff_client.get(reverse("agents:agent-list") + "?state=bogus&q=alpha")
    assert response.status_code == 200
    assert [a.pk for a in response.context["page"]] == ["alpha-1"]  # the search still applies
    assert b"filter-errors" in response.content and b"bogus" in response.content

    old, new = failed_session(), failed_session()
    Session.objects.filter(pk=old.session_id).update(created_at=timezone.now() - timedelta(days=3))
    response = staff_client.get(reverse("sessions:session-list") + "?since=1h&after=garbage")
    assert [s.pk for s in response.context["page"]] == [new.session_id]
    assert b"Started after" in response.content and b"Enter a valid date/time" in response.content


def test_a_nul_in_a_search_is_a_message_not_a_500(staff_client):
    WorkflowDefinitionFactory(id="nightly")
    for name in ["workflows:workflow-list", "agents:agent-list", "sessions:session-list", "sessions:failure-list"]:
        response = staff_client.get(reverse(name) + "?q=night%00")
        assert response.status_code == 200, name
        assert b"Null characters are not allowed" in response.content, name


def test_retry_all_matching_with_a_bad_filter_retries_nothing(staff_client):
    """Ignoring the bad value would widen 'all matching' to every failure of the fleet."""
    wanted = failed_session(definition=WorkflowDefinitionFactory(id="wanted"))
    other = failed_session(definition=WorkflowDefinitionFactory(id="other"))
    query = "?scope=all&workflow=wanted&status=bogus"
    confirm = staff_client.get(reverse("sessions:failure-retry") + query)
    assert confirm.status_code == 200
    assert confirm.context["count"] == 0 and b"confirm-retry" not in confirm.content
    assert b"status" in confirm.content and b"bogus" in confirm.content
    response = staff_client.post(reverse("sessions:failure-retry"),
                                 {"scope": "all", "workflow": "wanted", "status": "bogus"}, follow=True)
    assert any("Nothing retried" in str(m) for m in response.context["messages"])
    for task in (wanted, other):
        task.refresh_from_db()
        assert task.status == Task.Status.DEAD


def test_the_failures_queue_hands_only_the_filters_in_force_to_bulk_retry(staff_client):
    failed_session(definition=WorkflowDefinitionFactory(id="wanted"))
    page = staff_client.get(reverse("sessions:failure-list") + "?workflow=wanted&status=bogus&scope=all&ids=x")
    content = page.content.decode()
    assert '<input type="hidden" name="workflow" value="wanted">' in content
    for name in ("status", "scope", "ids"):
        assert f'<input type="hidden" name="{name}"' not in content, name


@pytest.mark.parametrize("payload,message", [
    ('{"note": "a\\u0000b"}', "NUL"),
    ('{"ratio": NaN}', "NaN is not a valid JSON number"),
    ('{"ratio": -Infinity}', "-Infinity is not a valid JSON number"),
    ('{"n": ' + "9" * 5000 + "}", "integer string conversion"),
    ('{"deep": ' + "[" * 5000 + "]" * 5000 + "}", "nested more than"),
    ('{"deep": ' + "[" * 50 + "]" * 50 + ", oops}", "line 1 column"),
])
def test_an_initial_payload_postgresql_cannot_store_is_explained(staff_client, payload, message):
    """json.loads accepts these; PostgreSQL (or Python) then failed: a 500 and the operator's input lost."""
    agent = AgentFactory()
    definition = WorkflowDefinitionFactory()
    response = staff_client.post(reverse("sessions:session-start", args=[definition.pk]),
                                 {"agent": agent.pk, "initial_payload": payload})
    assert response.status_code == 400
    errors = response.context["form"].errors["initial_payload"]
    assert any(message in e for e in errors), errors
    assert not Session.objects.exists()


def test_a_definition_postgresql_cannot_store_gets_the_validators_message(staff_client):
    """Through the page (create), the admin and an uploaded YAML file: was a 500."""
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.workflows.factories import two_step_spec
    from workflows.models import WorkflowDefinition

    document = two_step_spec("nul-name")
    document["name"] = "a\x00b"
    response = staff_client.post(reverse("workflows:workflow-create"), {"document": json.dumps(document)})
    assert response.status_code == 400
    assert response.context["form"].spec_errors == {"name": ["text may not contain NUL (\\u0000) characters"]}

    upload = SimpleUploadedFile("bad.yaml", b"id: bin\nname: n\ntasks:\n- taskId: a\n  parameters: {b: !!binary gA==}\n")
    response = staff_client.post(reverse("workflows:workflow-import"), {"upload": upload})
    assert response.status_code == 400
    assert "tasks.0.parameters.b" in response.context["form"].spec_errors
    assert not WorkflowDefinition.objects.exists()


def test_the_admin_form_refuses_what_postgresql_cannot_store(admin_client):
    from workflows.models import WorkflowDefinition

    spec = '{"id": "adm", "name": "n", "tasks": [{"taskId": "a", "parameters": {"r": NaN, "s": "\\u0000"}}]}'
    response = admin_client.post(reverse("admin:workflows_workflowdefinition_add"), {"spec": spec})
    assert response.status_code == 200
    assert b"numbers must be finite" in response.content and b"NUL" in response.content
    assert not WorkflowDefinition.objects.exists()


def test_an_action_whose_reason_cannot_be_recorded_is_refused_not_done_without_it(staff_client):
    """A reason over 500 characters (or with NUL) was dropped and the retry done anyway; cancel said 'needs a reason'."""
    too_long = "x" * 501
    dead = failed_session()
    running = TaskFactory(status=Task.Status.QUEUED).session
    agent = AgentFactory()
    cases = [
        (reverse("sessions:task-retry", args=[dead.pk]), "Not retried: Ensure this value has at most 500"),
        (reverse("sessions:session-retry", args=[dead.session_id]), "Not retried: Ensure this value has at most 500"),
        (reverse("sessions:session-cancel", args=[running.pk]), "Not cancelled: Ensure this value has at most 500"),
        (reverse("agents:agent-drain", args=[agent.pk]), "Not drained: Ensure this value has at most 500"),
    ]
    for url, message in cases:
        response = staff_client.post(url, {"reason": too_long}, follow=True)
        assert any(message in str(m) for m in response.context["messages"]), url
    response = staff_client.post(reverse("sessions:failure-retry"), {"scope": "all", "reason": "a\x00b"}, follow=True)
    assert any("Nothing retried: Null characters are not allowed." in str(m) for m in response.context["messages"])
    dead.refresh_from_db()
    running.refresh_from_db()
    agent.refresh_from_db()
    assert dead.status == Task.Status.DEAD and running.status == Session.Status.RUNNING and agent.drained_at is None
    assert not TaskEvent.objects.filter(task=dead, new_status=Task.Status.QUEUED).exists()


def test_undrain_with_a_reason_that_cannot_be_recorded_changes_nothing(staff_client, staff_operator):
    from agents.services import agent_drain

    agent = agent_drain(agent=AgentFactory(), by_user=staff_operator, reason="disk")
    response = staff_client.post(reverse("agents:agent-undrain", args=[agent.pk]), {"reason": "y" * 501}, follow=True)
    assert any("Not undrained" in str(m) for m in response.context["messages"])
    agent.refresh_from_db()
    assert agent.drained_at is not None


def test_a_form_too_large_to_read_says_why(staff_client, settings):
    """Django's own page said only 'Bad Request (400)'."""
    definition = WorkflowDefinitionFactory()
    response = staff_client.post(reverse("workflows:workflow-edit", args=[definition.pk]),
                                 {"document": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})
    assert response.status_code == 400
    assert b"The form is larger than 1,048,576 bytes (OPSCORE_MAX_BODY_BYTES); nothing was saved." in response.content
    response = staff_client.post(reverse("sessions:failure-retry"), {"scope": "selected", "ids": ["x"] * 1500})
    assert response.status_code == 400 and b"more than 1,000 fields; nothing was done" in response.content
    api = staff_client.generic("POST", "/v1/opscore/workflows", b"{" + b" " * 2_000_000 + b"}",
                               content_type="application/json")
    assert api["Content-Type"] == "application/json"  # the API keeps its own error shape


def test_refusals_and_unknown_pages_say_why(read_only_client):
    response = read_only_client.post(reverse("agents:apikey-create"), {"name": "k"})
    assert response.status_code == 403
    assert b"read-only operators cannot change anything" in response.content
    response = read_only_client.get(reverse("agents:agent-detail", args=["ghost"]))
    assert response.status_code == 404 and b"No Agent matches the given query" in response.content
