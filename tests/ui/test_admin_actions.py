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
