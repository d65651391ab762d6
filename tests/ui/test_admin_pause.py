"""The admin's pause, fleet and approval actions call the engine, report counts and record the operator."""

from __future__ import annotations

import pytest
from django.urls import reverse

from sessions.models import ControlEvent, FleetDispatch, Session, Task, TaskEvent
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.ui.test_admin_actions import run_action
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db


def test_pause_and_resume_selected_sessions(client, operator):
    client.force_login(operator)
    running = TaskFactory(status=Task.Status.DISPATCHED).session
    done = SessionFactory(status=Session.Status.COMPLETED)
    msgs = run_action(client, "session", "pause_selected", [running.pk, done.pk])
    assert any("Paused session(s): 1." in m and "Skipped 1" in m for m in msgs), msgs
    running.refresh_from_db()
    assert running.status == Session.Status.PAUSED
    event = TaskEvent.objects.get(session=running, new_status="paused")
    assert event.actor_user == operator and event.reason == "paused in the admin"
    msgs = run_action(client, "session", "resume_selected", [running.pk])
    assert any("Resumed session(s): 1." in m for m in msgs), msgs
    running.refresh_from_db()
    assert running.status == Session.Status.RUNNING


def test_approve_and_reject_selected_approval_steps(client, operator):
    client.force_login(operator)
    spec = {"id": "adm-review", "name": "Review", "tasks": [{"taskId": "review", "type": "approval"}]}
    definition = WorkflowDefinitionFactory(id=spec["id"], spec=spec)
    first, second = (TaskFactory(session=SessionFactory(definition=definition), step_id="review",
                                 status=Task.Status.WAITING_APPROVAL) for _ in range(2))
    msgs = run_action(client, "task", "approve_selected", [first.pk])
    assert any("Approved: 1." in m for m in msgs), msgs
    msgs = run_action(client, "task", "reject_selected", [first.pk, second.pk])
    assert any("Rejected: 1." in m and "Skipped 1" in m for m in msgs), msgs
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Task.Status.COMPLETED, Task.Status.REJECTED)
    assert first.result["decidedBy"] == operator.username
    assert Session.objects.get(pk=first.session_id).status == Session.Status.COMPLETED
    assert Session.objects.get(pk=second.session_id).status == Session.Status.FAILED


def test_pause_and_resume_selected_definitions(client, operator):
    client.force_login(operator)
    definition = WorkflowDefinitionFactory()
    running = SessionFactory(definition=definition)
    url = reverse("admin:workflows_workflowdefinition_changelist")
    client.post(url, {"action": "pause_definitions_and_sessions", "_selected_action": [definition.pk]}, follow=True)
    definition.refresh_from_db()
    running.refresh_from_db()
    assert definition.paused_at is not None and running.status == Session.Status.PAUSED
    client.post(url, {"action": "resume_definitions", "_selected_action": [definition.pk]}, follow=True)
    definition.refresh_from_db()
    running.refresh_from_db()
    assert definition.paused_at is None and running.status == Session.Status.RUNNING
    assert list(ControlEvent.objects.order_by("id").values_list("target", "action", "actor_user")) == [
        (definition.pk, "paused", operator.pk), (definition.pk, "resumed", operator.pk)]


def test_the_fleet_switch_in_the_admin(client, operator):
    client.force_login(operator)
    FleetDispatch.objects.get_or_create(pk=1)
    msgs = run_action(client, "fleetdispatch", "dispatch_off", [1])
    assert any("Dispatch turned off: 1." in m for m in msgs), msgs
    switch = FleetDispatch.current()
    assert switch.is_off and switch.paused_by == operator
    msgs = run_action(client, "fleetdispatch", "dispatch_off", [1])
    assert any("Skipped 1" in m for m in msgs), msgs
    run_action(client, "fleetdispatch", "dispatch_on", [1])
    assert not FleetDispatch.current().is_off
    assert client.get(reverse("admin:opscore_sessions_controlevent_changelist")).status_code == 200
