"""The admin's bulk actions call the engine and report counts."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from sessions.models import Session, Task, TaskEvent
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.ui.helpers import failed_session

pytestmark = pytest.mark.django_db


def run_action(client, model: str, action: str, pks) -> list[str]:
    response = client.post(reverse(f"admin:opscore_sessions_{model}_changelist"),
                           {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True)
    assert response.status_code == 200
    return [str(m) for m in get_messages(response.wsgi_request)] or [str(m) for m in response.context["messages"]]


def test_retry_selected_tasks(client, operator):
    client.force_login(operator)
    dead = failed_session()
    queued = TaskFactory(status=Task.Status.QUEUED)
    msgs = run_action(client, "task", "retry_selected", [dead.pk, queued.pk])
    assert any("Retried task(s): 1." in m and "Skipped 1" in m for m in msgs), msgs
    dead.refresh_from_db()
    assert dead.status == Task.Status.QUEUED
    event = TaskEvent.objects.filter(task=dead, new_status="queued").latest("id")
    assert event.actor_user == operator and event.reason == "retried in the admin"


def test_cancel_selected_sessions(client, operator):
    client.force_login(operator)
    running = TaskFactory(status=Task.Status.QUEUED).session
    done = SessionFactory(status=Session.Status.COMPLETED)
    msgs = run_action(client, "session", "cancel_selected", [running.pk, done.pk])
    assert any("Cancelled session(s): 1." in m for m in msgs), msgs
    running.refresh_from_db()
    done.refresh_from_db()
    assert running.status == Session.Status.CANCELLED and done.status == Session.Status.COMPLETED


def test_retry_selected_failed_sessions(client, operator):
    client.force_login(operator)
    dead = failed_session()
    running = SessionFactory(status=Session.Status.RUNNING)
    msgs = run_action(client, "session", "retry_selected", [dead.session_id, running.pk])
    assert any("Retried session(s): 1." in m and "Skipped 1" in m for m in msgs), msgs
    dead.session.refresh_from_db()
    assert dead.session.status == Session.Status.RUNNING


# ---------------------------------------------------------------- who may act in the admin


def _read_only_superuser():
    from django.contrib.auth.models import Group, User

    from ui.permissions import READ_ONLY_GROUP

    user = User.objects.create_superuser("ros", "ros@example.com", "correct-horse-battery")
    user.groups.add(Group.objects.get_or_create(name=READ_ONLY_GROUP)[0])
    return user


def test_revoking_keys_in_the_admin_needs_the_change_permission(client):
    from django.contrib.auth.models import Permission, User

    from agents.services import api_key_create

    viewer = User.objects.create_user("vera", "vera@example.com", "correct-horse-battery", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(viewer)
    key, _ = api_key_create(name="fleet")
    response = client.post(reverse("admin:agents_apikey_changelist"),
                           {"action": "revoke_selected", "_selected_action": [str(key.pk)]})
    assert response.status_code in (200, 302)
    key.refresh_from_db()
    assert key.revoked_at is None
    assert b"revoke_selected" not in client.get(reverse("admin:agents_apikey_changelist")).content


def test_a_read_only_operator_cannot_act_in_the_admin_even_as_superuser(client):
    from agents.services import api_key_create

    client.force_login(_read_only_superuser())
    dead = failed_session()
    running = TaskFactory(status=Task.Status.QUEUED).session
    key, _ = api_key_create(name="fleet")
    for model, action, pks in [("opscore_sessions_task", "retry_selected", [dead.pk]),
                               ("opscore_sessions_session", "cancel_selected", [running.pk]),
                               ("opscore_sessions_session", "retry_selected", [dead.session_id]),
                               ("agents_apikey", "revoke_selected", [key.pk]),
                               ("opscore_sessions_session", "delete_selected", [running.pk])]:
        client.post(reverse(f"admin:{model}_changelist"), {"action": action, "post": "yes",
                                                           "_selected_action": [str(pk) for pk in pks]})
    dead.refresh_from_db()
    running.refresh_from_db()
    key.refresh_from_db()
    assert dead.status == Task.Status.DEAD and dead.session.status == Session.Status.FAILED
    assert running.status == Session.Status.RUNNING
    assert key.revoked_at is None
    # It may still look.
    assert client.get(reverse("admin:opscore_sessions_task_change", args=[dead.pk])).status_code == 200
    assert client.get(reverse("admin:workflows_workflowdefinition_add")).status_code == 403


def test_the_admin_refuses_an_agent_id_no_url_can_carry(client, operator):
    from agents.models import Agent

    client.force_login(operator)
    response = client.post(reverse("admin:agents_agent_add"),
                           {"id": "rack/7", "name": "", "version": "", "capabilities": "[]", "contact_endpoint": "",
                            "metadata": "{}", "drained_reason": ""})
    assert response.status_code == 200
    assert b"may not contain" in response.content
    assert not Agent.objects.exists()
    assert client.get(reverse("agents:agent-list")).status_code == 200


def test_revoke_selected_keys_records_the_operator(client, operator):
    from agents.models import ApiKey
    from agents.services import api_key_create

    client.force_login(operator)
    active, _ = api_key_create(name="fleet")
    gone, _ = api_key_create(name="old")
    ApiKey.objects.filter(pk=gone.pk).update(revoked_at="2020-01-01T00:00:00Z")
    response = client.post(reverse("admin:agents_apikey_changelist"),
                           {"action": "revoke_selected", "_selected_action": [str(active.pk), str(gone.pk)]},
                           follow=True)
    assert any("Revoked 1 API key(s)." in str(m) for m in response.context["messages"])
    active.refresh_from_db()
    gone.refresh_from_db()
    assert active.revoked_at is not None and active.revoked_by == operator
    assert gone.revoked_by is None and gone.revoked_at.year == 2020


def test_sessions_and_their_history_cannot_be_deleted_in_the_admin(client, operator):
    """Deleting a running session ended it outside the engine and erased who did what."""
    client.force_login(operator)
    running = TaskFactory(status=Task.Status.QUEUED)
    TaskEvent.objects.create(session=running.session, task=running, new_status="queued", actor="system")
    client.post(reverse("admin:opscore_sessions_session_changelist"),
                {"action": "delete_selected", "post": "yes", "_selected_action": [str(running.session_id)]})
    for model, pk in [("session", running.session_id), ("task", running.pk),
                      ("taskevent", TaskEvent.objects.get(task=running).pk)]:
        assert client.get(reverse(f"admin:opscore_sessions_{model}_delete", args=[pk])).status_code == 403, model
    assert Session.objects.filter(pk=running.session_id).exists()
    assert Task.objects.filter(pk=running.pk).exists() and TaskEvent.objects.filter(task=running).exists()


def test_drain_and_undrain_selected_agents_record_the_operator(client, operator):
    from agents.models import Agent
    from tests.agents.factories import AgentFactory

    client.force_login(operator)
    first, second = AgentFactory(), AgentFactory()
    response = client.post(reverse("admin:agents_agent_changelist"),
                           {"action": "drain_selected", "_selected_action": [first.pk, second.pk]}, follow=True)
    assert any("Drained 2 agent(s)" in str(m) for m in response.context["messages"])
    first.refresh_from_db()
    assert first.drained_at is not None and first.drained_by == operator
    assert first.drained_reason == "drained in the admin"
    response = client.post(reverse("admin:agents_agent_changelist"),
                           {"action": "undrain_selected", "_selected_action": [first.pk]}, follow=True)
    assert any("Undrained 1 agent(s)" in str(m) for m in response.context["messages"])
    assert list(Agent.objects.filter(drained_at__isnull=False).values_list("pk", flat=True)) == [second.pk]
