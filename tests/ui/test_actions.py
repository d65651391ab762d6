"""Operator actions through the UI: each goes through the engine or a service and records who and why."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from agents.models import ApiKey
from agents.services import api_key_create, api_key_lookup
from sessions.models import Actor, Session, Task, TaskEvent
from tests.agents.factories import AgentFactory
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.ui.helpers import failed_session
from tests.workflows.factories import WorkflowDefinitionFactory, two_step_spec
from workflows.models import WorkflowDefinition

pytestmark = pytest.mark.django_db


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# ---------------------------------------------------------------- agents


def test_it_drains_an_agent_with_the_operator_and_reason(staff_client, staff_operator):
    agent = AgentFactory()
    response = staff_client.post(reverse("agents:agent-drain", args=[agent.pk]), {"reason": "disk full"},
                                 follow=True)
    assert b"is drained" in response.content
    agent.refresh_from_db()
    assert agent.drained_at is not None
    assert agent.drained_reason == "disk full"
    assert agent.drained_by == staff_operator
    assert b"disk full" in response.content


def test_draining_needs_a_reason(staff_client):
    agent = AgentFactory()
    response = staff_client.post(reverse("agents:agent-drain", args=[agent.pk]), {"reason": "  "}, follow=True)
    assert b"Not drained: Say why (it is recorded with your name)." in response.content
    agent.refresh_from_db()
    assert agent.drained_at is None


def test_it_undrains_an_agent(staff_client, staff_operator, admin_client):
    agent = AgentFactory()
    staff_client.post(reverse("agents:agent-drain", args=[agent.pk]), {"reason": "x"})
    staff_client.post(reverse("agents:agent-undrain", args=[agent.pk]), {"reason": "fixed"})
    agent.refresh_from_db()
    assert agent.drained_at is None and agent.drained_by is None and agent.drained_reason == ""
    # Who drained and undrained, and why, outlives the cleared fields: the agent's admin history.
    from django.contrib.admin.models import LogEntry

    history = [(e.user, e.change_message) for e in LogEntry.objects.filter(object_id=agent.pk).order_by("id")]
    assert history == [(staff_operator, "Drained: x"), (staff_operator, "Undrained: fixed")]
    page = admin_client.get(reverse("admin:agents_agent_history", args=[agent.pk]))
    assert page.status_code == 200 and b"Undrained: fixed" in page.content


def test_a_drained_agent_gets_no_new_dispatch_and_is_swept_after_undrain(staff_client, q_sync):
    from django.utils import timezone

    from sessions import engine, sweeps

    agent = AgentFactory()
    staff_client.post(reverse("agents:agent-drain", args=[agent.pk]), {"reason": "x"})
    session = engine.session_start(definition=WorkflowDefinitionFactory(), agent=agent, by=engine.By.system())
    task = session.tasks.get()
    assert task.status == Task.Status.QUEUED  # the dispatch job ran (sync) and refused the drained agent
    assert not task.attempts.exists()
    staff_client.post(reverse("agents:agent-undrain", args=[agent.pk]), {"reason": "ok"})
    found = sweeps.sweep_lost_jobs(now=timezone.now() + timezone.timedelta(hours=1), dry_run=True)
    assert task in found


# ---------------------------------------------------------------- sessions


def test_it_cancels_a_session_with_the_operator_and_reason(staff_client, staff_operator):
    task = TaskFactory(status=Task.Status.QUEUED)
    response = staff_client.post(reverse("sessions:session-cancel", args=[task.session_id]),
                                 {"reason": "wrong payload"}, follow=True)
    assert "Session cancelled." in messages_of(response)
    task.refresh_from_db()
    task.session.refresh_from_db()
    assert task.session.status == Session.Status.CANCELLED and task.status == Task.Status.CANCELLED
    event = TaskEvent.objects.get(session=task.session, task__isnull=True, new_status="cancelled")
    assert (event.actor, event.actor_user, event.reason) == (Actor.OPERATOR, staff_operator, "wrong payload")
    assert b"operator bob" in response.content


def test_cancel_needs_a_reason(staff_client):
    task = TaskFactory(status=Task.Status.QUEUED)
    staff_client.post(reverse("sessions:session-cancel", args=[task.session_id]), {"reason": ""})
    task.session.refresh_from_db()
    assert task.session.status == Session.Status.RUNNING


def test_cancelling_a_finished_session_says_why_not(staff_client):
    dead = failed_session()
    response = staff_client.post(reverse("sessions:session-cancel", args=[dead.session_id]), {"reason": "x"},
                                 follow=True)
    assert any("Not cancelled" in m and "already failed" in m for m in messages_of(response))


def test_it_retries_a_dead_task_through_the_engine(staff_client, staff_operator):
    dead = failed_session()
    response = staff_client.post(reverse("sessions:task-retry", args=[dead.pk]), {"reason": "agent fixed"},
                                 follow=True)
    assert any("queued again" in m for m in messages_of(response))
    dead.refresh_from_db()
    dead.session.refresh_from_db()
    assert dead.status == Task.Status.QUEUED and dead.session.status == Session.Status.RUNNING
    event = TaskEvent.objects.filter(task=dead, new_status="queued").latest("id")
    assert (event.actor_user, event.reason) == (staff_operator, "agent fixed")


def test_task_retry_goes_back_to_a_safe_next_url_only(staff_client):
    dead = failed_session()
    response = staff_client.post(reverse("sessions:task-retry", args=[dead.pk]),
                                 {"next": "https://evil.example/"})
    assert response["Location"] == reverse("sessions:session-detail", args=[dead.session_id])
    other = failed_session()
    response = staff_client.post(reverse("sessions:task-retry", args=[other.pk]), {"next": "/failures/?agent=x"})
    assert response["Location"] == "/failures/?agent=x"


def test_retrying_a_task_that_is_not_failed_says_why_not(staff_client):
    task = TaskFactory(status=Task.Status.QUEUED)
    response = staff_client.post(reverse("sessions:task-retry", args=[task.pk]), {}, follow=True)
    assert any("Not retried" in m for m in messages_of(response))
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED


def test_it_retries_a_failed_session_from_its_failed_step(staff_client):
    dead = failed_session()
    response = staff_client.post(reverse("sessions:session-retry", args=[dead.session_id]), {}, follow=True)
    assert any("Retrying from step 'step_1'" in m for m in messages_of(response))
    dead.session.refresh_from_db()
    assert dead.session.status == Session.Status.RUNNING


def test_it_starts_a_session_for_a_chosen_agent_with_a_payload(staff_client, staff_operator):
    agent = AgentFactory()
    definition = WorkflowDefinitionFactory()
    response = staff_client.post(reverse("sessions:session-start", args=[definition.pk]),
                                 {"agent": agent.pk, "initial_payload": '{"ticket": 42}'})
    session = Session.objects.get()
    assert response["Location"] == reverse("sessions:session-detail", args=[session.pk])
    assert session.agent == agent and session.created_by == staff_operator
    assert session.initial_payload == {"ticket": 42}
    assert session.tasks.get().payload == {"a": 1, "ticket": 42}


def test_a_session_cannot_be_started_for_a_deregistered_agent(staff_client):
    from django.utils import timezone

    agent = AgentFactory(deregistered_at=timezone.now())
    definition = WorkflowDefinitionFactory()
    response = staff_client.post(reverse("sessions:session-start", args=[definition.pk]), {"agent": agent.pk})
    assert response.status_code == 400
    assert response.context["form"].errors["agent"] == [f"agent '{agent.pk}' is deregistered"]
    assert not Session.objects.exists()


def test_starting_a_session_for_a_drained_agent_warns_that_it_waits(staff_client):
    from django.utils import timezone

    agent = AgentFactory(drained_at=timezone.now())
    response = staff_client.post(reverse("sessions:session-start", args=[WorkflowDefinitionFactory().pk]),
                                 {"agent": agent.pk}, follow=True)
    assert any("is drained" in m for m in messages_of(response))
    assert Session.objects.get().tasks.get().status == Task.Status.QUEUED


@pytest.mark.parametrize("agent_id,payload,message", [
    ("ghost", "", b"no agent with id"),
    (None, "[1, 2]", b"must be a JSON object, not list"),
    (None, "{oops", b"invalid JSON"),
])
def test_starting_a_session_explains_bad_input(staff_client, agent_id, payload, message):
    agent = AgentFactory()
    definition = WorkflowDefinitionFactory()
    response = staff_client.post(reverse("sessions:session-start", args=[definition.pk]),
                                 {"agent": agent_id or agent.pk, "initial_payload": payload})
    assert response.status_code == 400
    assert message in response.content
    assert not Session.objects.exists()


def test_a_deregistered_agent_cannot_get_a_session(staff_client):
    from django.utils import timezone

    agent = AgentFactory(deregistered_at=timezone.now())
    response = staff_client.post(reverse("sessions:session-start", args=[WorkflowDefinitionFactory().pk]),
                                 {"agent": agent.pk})
    assert response.status_code == 400 and b"deregistered" in response.content
    assert not Session.objects.exists()


# ---------------------------------------------------------------- failures queue


def test_bulk_retry_of_selected_tasks_confirms_the_count_first(staff_client):
    a, b, c = failed_session(), failed_session(), failed_session()
    url = reverse("sessions:failure-retry")
    confirm = staff_client.get(url, {"scope": "selected", "ids": [a.pk, b.pk]})
    assert b"Retry 2 tasks?" in confirm.content
    assert Task.objects.filter(status=Task.Status.DEAD).count() == 3  # the GET changed nothing
    response = staff_client.post(url, {"scope": "selected", "ids": [a.pk, b.pk], "reason": "batch"}, follow=True)
    assert "Retried 2 task(s)." in messages_of(response)
    assert set(Task.objects.filter(status=Task.Status.QUEUED).values_list("pk", flat=True)) == {a.pk, b.pk}
    c.refresh_from_db()
    assert c.status == Task.Status.DEAD


def test_bulk_retry_of_all_matching_uses_the_filter(staff_client):
    agent = AgentFactory()
    mine = [failed_session(agent=agent) for _ in range(3)]
    other = failed_session()
    url = reverse("sessions:failure-retry")
    confirm = staff_client.get(url, {"scope": "all", "agent": agent.pk})
    assert confirm.context["count"] == 3
    assert b"All <strong>3</strong>" in confirm.content
    response = staff_client.post(url, {"scope": "all", "agent": agent.pk})
    assert response["Location"] == reverse("sessions:failure-list") + f"?agent={agent.pk}"
    assert all(Task.objects.get(pk=t.pk).status == Task.Status.QUEUED for t in mine)
    assert Task.objects.get(pk=other.pk).status == Task.Status.DEAD


def test_bulk_retry_skips_and_reports_tasks_the_engine_refuses(staff_client):
    dead = failed_session()
    # A dead task whose session was completed meanwhile (by its fallback): the engine refuses it.
    completed = SessionFactory(status=Session.Status.COMPLETED)
    refused = TaskFactory(session=completed, status=Task.Status.DEAD, last_error="boom")
    response = staff_client.post(reverse("sessions:failure-retry"),
                                 {"scope": "selected", "ids": [dead.pk, refused.pk]}, follow=True)
    text = " ".join(messages_of(response))
    assert "Retried 1 task(s)." in text and "Skipped 1" in text and "already completed" in text
    refused.refresh_from_db()
    assert refused.status == Task.Status.DEAD


def test_a_selected_task_retried_meanwhile_is_reported_as_skipped(staff_client):
    first, second = failed_session(), failed_session()
    Task.objects.filter(pk=second.pk).update(status=Task.Status.QUEUED)  # another operator was quicker
    response = staff_client.post(reverse("sessions:failure-retry"),
                                 {"scope": "selected", "ids": [first.pk, second.pk]}, follow=True)
    text = " ".join(messages_of(response))
    assert "Retried 1 task(s)." in text and "Skipped 1" in text and "only dead or failed tasks" in text


def test_the_failures_queue_holds_only_tasks_an_operator_can_still_retry(staff_client):
    waiting = failed_session()
    cancelled = TaskFactory(session=SessionFactory(status=Session.Status.CANCELLED), status=Task.Status.DEAD)
    rescued = failed_session()
    TaskFactory(session=rescued.session, step_id="rescue", status=Task.Status.COMPLETED, fallback_for=rescued)
    listed = staff_client.get(reverse("sessions:failure-list"))
    assert [t.pk for t in listed.context["page"]] == [waiting.pk]
    assert cancelled.pk not in {t.pk for t in Task.objects.awaiting_decision()}
    assert staff_client.get(reverse("sessions:dashboard")).context["failures_total"] == 1
    response = staff_client.post(reverse("sessions:failure-retry"), {"scope": "all"}, follow=True)
    assert "Retried 1 task(s)." in messages_of(response) and "Skipped" not in " ".join(messages_of(response))


def test_bulk_retry_ignores_ids_that_are_not_ids(staff_client):
    response = staff_client.get(reverse("sessions:failure-retry"), {"scope": "selected", "ids": ["nope"]})
    assert response.status_code == 200
    assert b"&#x27;nope&#x27; is not a task id" in response.content
    assert b"Nothing to retry" in response.content


# ---------------------------------------------------------------- workflows


def test_it_creates_a_definition_from_json(staff_client, staff_operator):
    response = staff_client.post(reverse("workflows:workflow-create"),
                                 {"document": json.dumps(two_step_spec("fresh"))})
    assert response["Location"] == reverse("workflows:workflow-detail", args=["fresh"])
    definition = WorkflowDefinition.objects.get(pk="fresh")
    assert definition.updated_by == staff_operator and definition.revision == 1


def test_creating_an_existing_id_is_refused_with_a_message(staff_client):
    existing = WorkflowDefinitionFactory()
    response = staff_client.post(reverse("workflows:workflow-create"),
                                 {"document": json.dumps(two_step_spec(existing.pk) | {"name": "other"})})
    assert response.status_code == 400
    assert b"already exists; edit it instead" in response.content
    existing.refresh_from_db()
    assert existing.revision == 1


def test_editing_shows_the_validators_messages_by_path(staff_client):
    definition = WorkflowDefinitionFactory()
    bad = two_step_spec(definition.pk)
    bad["tasks"][0]["nextTaskId"] = "missing"
    response = staff_client.post(reverse("workflows:workflow-edit", args=[definition.pk]),
                                 {"document": json.dumps(bad)})
    assert response.status_code == 400
    assert response.context["form"].spec_errors == {
        "tasks.0.nextTaskId": ["nextTaskId 'missing' of step 'step_1' does not name a step in this workflow"]}
    assert b"<dt>tasks.0.nextTaskId</dt>" in response.content
    assert b"missing" in response.content  # the operator's text is kept in the textarea
    definition.refresh_from_db()
    assert definition.revision == 1


def test_editing_cannot_change_the_id(staff_client):
    definition = WorkflowDefinitionFactory()
    response = staff_client.post(reverse("workflows:workflow-edit", args=[definition.pk]),
                                 {"document": json.dumps(two_step_spec("another-id"))})
    assert response.status_code == 400 and b"differs from this definition" in response.content
    assert not WorkflowDefinition.objects.filter(pk="another-id").exists()


def test_editing_saves_a_new_revision(staff_client):
    definition = WorkflowDefinitionFactory()
    spec = two_step_spec(definition.pk)
    spec["tasks"][0]["maxRetries"] = 7
    response = staff_client.post(reverse("workflows:workflow-edit", args=[definition.pk]),
                                 {"document": json.dumps(spec)}, follow=True)
    assert any("Saved revision 2" in m for m in messages_of(response))
    definition.refresh_from_db()
    assert definition.revision == 2 and definition.spec["tasks"][0]["maxRetries"] == 7


def test_invalid_json_and_yaml_get_a_clear_message(staff_client):
    for text, needle in (("{\"id\": ", b"invalid JSON"), ("id: [unclosed", b"invalid YAML"), ("", b"paste a definition")):
        response = staff_client.post(reverse("workflows:workflow-create"), {"document": text})
        assert response.status_code == 400 and needle in response.content, text


def test_import_accepts_a_yaml_upload(staff_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from workflows.schema import validate_definition

    yaml_text = validate_definition(two_step_spec("from-yaml")).to_yaml()
    upload = SimpleUploadedFile("wf.yaml", yaml_text.encode(), content_type="application/yaml")
    response = staff_client.post(reverse("workflows:workflow-import"), {"upload": upload}, follow=True)
    assert any("Imported 'from-yaml': created" in m for m in messages_of(response))
    assert WorkflowDefinition.objects.filter(pk="from-yaml").exists()


def test_import_reports_a_broken_file(staff_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("wf.json", b'{"id": "x", "name": "x", "tasks": []}')
    response = staff_client.post(reverse("workflows:workflow-import"), {"upload": upload})
    assert response.status_code == 400 and b"at least one step" in response.content


def test_export_round_trips_in_json_and_yaml(staff_client):
    from workflows.schema import parse_document

    definition = WorkflowDefinitionFactory()
    for fmt in ("json", "yaml"):
        response = staff_client.get(reverse("workflows:workflow-export", args=[definition.pk, fmt]))
        assert response.status_code == 200
        assert response["Content-Disposition"] == f'attachment; filename="{definition.pk}.{fmt}"'
        assert parse_document(response.content, fmt=fmt).to_document() == definition.parsed.to_document()


# ---------------------------------------------------------------- API keys


def test_it_creates_an_api_key_and_shows_it_once(staff_client, staff_operator):
    response = staff_client.post(reverse("agents:apikey-create"), {"name": "ci", "agent_id": "agent-7"})
    assert response.status_code == 200
    raw = response.context["raw_key"]
    assert raw and raw.encode() in response.content
    key = api_key_lookup(raw)
    assert key.name == "ci" and key.agent_id == "agent-7" and key.created_by == staff_operator
    assert raw not in str(dict(staff_client.session))
    again = staff_client.get(reverse("agents:apikey-list"))
    assert raw.encode() not in again.content and b"ci" in again.content


def test_an_api_key_needs_a_name(staff_client):
    response = staff_client.post(reverse("agents:apikey-create"), {"name": " "})
    assert response.status_code == 400 and b"This field is required" in response.content
    assert not ApiKey.objects.exists()


def test_an_api_key_for_an_agent_id_no_url_can_carry_is_refused(staff_client):
    response = staff_client.post(reverse("agents:apikey-create"), {"name": "rack", "agent_id": "rack/7"})
    assert response.status_code == 400 and b"an agent id may not contain" in response.content
    assert response.context["raw_key"] is None and not ApiKey.objects.exists()


def test_the_admin_refuses_an_api_key_for_an_impossible_agent_id(admin_client):
    response = admin_client.post(reverse("admin:agents_apikey_add"), {"name": "rack", "agent_id": "rack/7"})
    assert response.status_code == 200 and b"an agent id may not contain" in response.content
    assert not ApiKey.objects.exists()


def test_it_revokes_an_api_key(staff_client, staff_operator):
    key, raw = api_key_create(name="old")
    response = staff_client.post(reverse("agents:apikey-revoke", args=[key.pk]), follow=True)
    assert any("is revoked" in m for m in messages_of(response))
    assert api_key_lookup(raw) is None
    key.refresh_from_db()
    assert key.revoked_by == staff_operator  # recorded with the operator's name
    assert b"by bob" in staff_client.get(reverse("agents:apikey-list") + "?show=all").content
    again = staff_client.post(reverse("agents:apikey-revoke", args=[key.pk]), follow=True)
    assert any("already revoked" in m for m in messages_of(again))


def test_revoked_keys_are_hidden_unless_asked_for(staff_client):
    key, _ = api_key_create(name="gone-key")
    staff_client.post(reverse("agents:apikey-revoke", args=[key.pk]), follow=True)  # reads the message
    assert b"gone-key" not in staff_client.get(reverse("agents:apikey-list")).content
    assert b"gone-key" in staff_client.get(reverse("agents:apikey-list") + "?show=all").content
