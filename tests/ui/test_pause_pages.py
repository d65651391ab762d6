"""The pause and approval pages: buttons call the engine and record the operator; the bulk pause shows
its count first; the maintenance banner is on every page; the approvals inbox shows what is approved."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from sessions import engine
from sessions.engine import By
from sessions.models import Session, Task, TaskEvent
from tests.sessions.factories import SessionFactory, TaskFactory
from tests.ui.test_actions import messages_of
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db
SS = Session.Status


def approval_task(*, approvers=None, previous=None) -> Task:
    step = {"taskId": "review", "type": "approval", "name": "Approve the summary", "nextTaskId": "publish"}
    if approvers:
        step["approvers"] = approvers
    spec = {"id": f"page-review-{approvers or 'any'}", "name": "Review",
            "tasks": [{"taskId": "draft", "nextTaskId": "review"}, step, {"taskId": "publish"}]}
    definition = WorkflowDefinitionFactory(id=spec["id"], spec=spec)
    session = SessionFactory(definition=definition)
    TaskFactory(session=session, step_id="draft", status=Task.Status.COMPLETED, sequence=1)
    return TaskFactory(session=session, step_id="review", name="Approve the summary", sequence=2,
                       status=Task.Status.WAITING_APPROVAL, payload={"previous_result": previous})


def test_pause_and_resume_from_the_session_page(staff_client, staff_operator):
    session = TaskFactory(status=Task.Status.DISPATCHED).session
    page = staff_client.get(reverse("sessions:session-detail", args=[session.pk]))
    assert b'data-testid="pause-session"' in page.content and b'data-testid="resume-session"' not in page.content
    response = staff_client.post(reverse("sessions:session-pause", args=[session.pk]), {"reason": "check"},
                                 follow=True)
    assert any("Session paused" in m for m in messages_of(response))
    assert b'data-testid="resume-session"' in response.content and b'data-testid="paused-since"' in response.content
    session.refresh_from_db()
    assert session.status == SS.PAUSED
    event = TaskEvent.objects.get(session=session, new_status=SS.PAUSED)
    assert (event.actor_user, event.reason) == (staff_operator, "check")
    response = staff_client.post(reverse("sessions:session-resume", args=[session.pk]), {"reason": ""}, follow=True)
    assert any("Session resumed" in m for m in messages_of(response))
    response = staff_client.post(reverse("sessions:session-resume", args=[session.pk]), {}, follow=True)
    assert any("Nothing changed: session" in m and "only a paused session" in m for m in messages_of(response))
    response = staff_client.post(reverse("sessions:session-pause", args=[session.pk]), {"reason": "x" * 501},
                                 follow=True)
    assert any("Nothing changed" in m for m in messages_of(response))
    session.refresh_from_db()
    assert session.status == SS.RUNNING


def test_bulk_pause_by_filter_previews_the_count_then_pauses(staff_client):
    wanted = [SessionFactory(workflow_id="bulk-wf") for _ in range(3)]
    SessionFactory(workflow_id="bulk-wf", status=SS.COMPLETED)
    other = SessionFactory(workflow_id="other")
    url = reverse("sessions:session-bulk", args=["pause"])
    page = staff_client.get(url, {"workflow": "bulk-wf"})
    assert page.status_code == 200 and page.context["count"] == 3
    assert b"Pause 3 sessions" in page.content
    response = staff_client.post(url, {"workflow": "bulk-wf", "reason": "incident"}, follow=True)
    assert any("Paused 3 session(s)." in m for m in messages_of(response))
    assert {s.status for s in Session.objects.filter(pk__in=[s.pk for s in wanted])} == {SS.PAUSED}
    assert Session.objects.get(pk=other.pk).status == SS.RUNNING
    assert staff_client.get(reverse("sessions:session-bulk", args=["resume"]), {"workflow": "bulk-wf"}
                            ).context["count"] == 3
    staff_client.post(reverse("sessions:session-bulk", args=["resume"]), {"workflow": "bulk-wf"})
    assert not Session.objects.filter(status=SS.PAUSED).exists()


def test_bulk_pause_with_a_bad_filter_changes_nothing(staff_client):
    SessionFactory()
    url = reverse("sessions:session-bulk", args=["pause"])
    page = staff_client.get(url, {"since": "forever"})
    assert page.context["count"] == 0 and page.context["problems"]
    response = staff_client.post(url, {"since": "forever"}, follow=True)
    assert any("Nothing changed: filter 'since'" in m for m in messages_of(response))
    assert not Session.objects.filter(status=SS.PAUSED).exists()
    assert staff_client.get(reverse("sessions:session-bulk", args=["explode"])).status_code == 404


def test_the_maintenance_banner_is_on_every_page_while_dispatch_is_off(staff_client, staff_operator):
    dashboard = reverse("sessions:dashboard")
    assert b"maintenance-banner" not in staff_client.get(dashboard).content
    response = staff_client.post(reverse("sessions:fleet-pause"), {"reason": "db upgrade"}, follow=True)
    assert any("Dispatch is off" in m for m in messages_of(response))
    for url in (dashboard, reverse("sessions:session-list"), reverse("agents:agent-list"),
                reverse("sessions:approval-list"), reverse("workflows:workflow-list")):
        content = staff_client.get(url).content.decode()
        assert 'data-testid="maintenance-banner"' in content, url
        assert "by bob: db upgrade" in content, url
    assert staff_client.post(reverse("sessions:fleet-pause"), {"reason": ""}, follow=True).status_code == 200
    staff_client.post(reverse("sessions:fleet-resume"), {"reason": "done"})
    assert b"maintenance-banner" not in staff_client.get(dashboard).content


def test_pause_and_resume_a_workflow_from_its_page(staff_client):
    definition = WorkflowDefinitionFactory()
    running = SessionFactory(definition=definition)
    staff_client.post(reverse("sessions:workflow-pause", args=[definition.pk]), {"reason": "bad", "sessions": "on"})
    page = staff_client.get(reverse("workflows:workflow-detail", args=[definition.pk]))
    assert b'data-testid="workflow-paused"' in page.content and b"by bob: bad" in page.content
    running.refresh_from_db()
    assert running.status == SS.PAUSED
    staff_client.post(reverse("sessions:workflow-resume", args=[definition.pk]), {"sessions": "on"})
    definition.refresh_from_db()
    running.refresh_from_db()
    assert definition.paused_at is None and running.status == SS.RUNNING


def test_the_inbox_shows_the_previous_result_and_decides(staff_client, staff_operator):
    task = approval_task(previous={"summary": "three lines"})
    nav = staff_client.get(reverse("sessions:dashboard")).content.decode()
    assert 'data-testid="approvals-waiting"' in nav and '<span class="count">1</span>' in nav
    page = staff_client.get(reverse("sessions:approval-list"))
    content = page.content.decode()
    assert "Approve the summary" in content and "three lines" in content and 'data-testid="approve"' in content
    response = staff_client.post(reverse("sessions:approval-decide", args=[task.pk]),
                                 {"decision": "approve", "comment": "good"}, follow=True)
    assert any("Approved 'Approve the summary'" in m for m in messages_of(response))
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED and task.result["decidedBy"] == "bob"
    assert Task.objects.get(session=task.session, step_id="publish").status == Task.Status.QUEUED
    response = staff_client.post(reverse("sessions:approval-decide", args=[task.pk]), {"decision": "reject"},
                                 follow=True)
    assert any("Nothing decided" in m and "not an approval waiting" in m for m in messages_of(response))
    assert b'data-testid="no-approvals"' in response.content


def test_a_decision_needs_a_valid_choice_and_the_right_group(staff_client, staff_operator):
    task = approval_task(approvers="leads")
    page = staff_client.get(reverse("sessions:approval-list")).content.decode()
    assert "only members of the group" in page.lower() and 'data-testid="approve"' not in page
    url = reverse("sessions:approval-decide", args=[task.pk])
    response = staff_client.post(url, {"decision": "maybe"}, follow=True)
    assert any("Nothing decided: decision" in m for m in messages_of(response))
    response = staff_client.post(url, {"decision": "approve"}, follow=True)
    assert any("group 'leads'" in m for m in messages_of(response))
    staff_operator.groups.add(Group.objects.create(name="leads"))
    staff_client.post(url, {"decision": "reject", "comment": "no"})
    task.refresh_from_db()
    assert task.status == Task.Status.REJECTED


def test_read_only_operators_see_the_inbox_and_cannot_decide_or_pause(read_only_client):
    task = approval_task()
    session = task.session
    page = read_only_client.get(reverse("sessions:approval-list"))
    assert page.status_code == 200 and b'data-testid="approve"' not in page.content
    for url, data in ((reverse("sessions:approval-decide", args=[task.pk]), {"decision": "approve"}),
                      (reverse("sessions:session-pause", args=[session.pk]), {}),
                      (reverse("sessions:fleet-pause"), {"reason": "x"}),
                      (reverse("sessions:session-bulk", args=["pause"]), {})):
        assert read_only_client.post(url, data).status_code == 403, url
    task.refresh_from_db()
    assert task.status == Task.Status.WAITING_APPROVAL


def test_a_paused_session_pending_from_a_paused_workflow_shows_in_the_list(staff_client):
    definition = WorkflowDefinitionFactory()
    engine.definition_pause(definition=definition, by=By.system())
    from tests.agents.factories import AgentFactory

    session = engine.session_start(definition=definition, agent=AgentFactory(), by=By.system())
    page = staff_client.get(reverse("sessions:session-detail", args=[session.pk])).content.decode()
    assert "held: workflow definition" in page
