"""The pause, fleet and approvals endpoints under /v1/opscore/: each calls the engine, says who, and
answers bad input with a clear 4xx."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from sessions.engine import By, session_start
from sessions.models import ControlEvent, Session, Task, TaskEvent
from tests.agents.factories import AgentFactory
from tests.api.conftest import assert_error
from tests.sessions.conftest import agentkit_stub  # noqa: F401 (a fixture)
from tests.sessions.test_approvals import review_spec
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db
V1 = "/v1/opscore"


def start(spec=None, workflow_id="wf") -> Session:
    definition = WorkflowDefinitionFactory(**({"id": spec["id"], "spec": spec} if spec else {"id": workflow_id}))
    return session_start(definition=definition, agent=AgentFactory(), by=By.system())


def test_pause_and_resume_a_session(api):
    session = start()
    response = api.post(f"{V1}/sessions/{session.pk}/pause", {"reason": "look first"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "paused" and response.json()["pausedAt"]
    event = TaskEvent.objects.get(session=session, new_status="paused")
    assert event.reason == "look first by API key 'fleet' (" + event.reason.split("(", 1)[1]
    assert_error(api.post(f"{V1}/sessions/{session.pk}/pause"), 409, "invalid_transition")
    response = api.post(f"{V1}/sessions/{session.pk}/resume", format="json")
    assert response.status_code == 200 and response.json()["status"] == "pending"
    assert response.json()["pausedAt"] is None
    assert_error(api.post(f"{V1}/sessions/{session.pk}/resume"), 409, "invalid_transition")


def test_session_pause_refuses_bad_input(api):
    session = start()
    assert_error(api.post(f"{V1}/sessions/{session.pk}/pause", {"reason": "x" * 2001}, format="json"), 400, "invalid")
    assert_error(api.post(f"{V1}/sessions/00000000-0000-0000-0000-000000000000/pause"), 404)


def test_pause_and_resume_a_workflow_definition(api):
    session = start(workflow_id="wf-p")
    response = api.post(f"{V1}/workflows/wf-p/pause", {"reason": "bad prompt", "sessions": True}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["paused"] is True and body["sessions"] == 1 and body["reason"] == "bad prompt"
    assert body["pausedBy"].startswith("API key 'fleet'")
    assert Session.objects.get(pk=session.pk).status == "paused"
    # New triggers are accepted (202) and held pending.
    AgentFactory(id="a9")
    trigger = api.post(f"{V1}/agent/a9/workflow", {"workflowDefinitionId": "wf-p"}, format="json")
    assert trigger.status_code == 202
    held = Task.objects.get(session_id=trigger.json()["sessionId"])
    assert held.status == "pending"
    assert_error(api.post(f"{V1}/workflows/wf-p/pause"), 409, "invalid_transition")

    response = api.post(f"{V1}/workflows/wf-p/resume", {"sessions": True}, format="json")
    assert response.status_code == 200 and response.json()["paused"] is False
    assert response.json()["sessions"] == 2  # one released, one resumed
    held.refresh_from_db()
    assert held.status == "queued"
    assert_error(api.post(f"{V1}/workflows/wf-p/resume"), 409, "invalid_transition")
    assert_error(api.post(f"{V1}/workflows/nope/pause"), 404)
    assert_error(api.post(f"{V1}/workflows/wf-p/pause", {"sessions": "maybe"}, format="json"), 400, "invalid")


def test_the_fleet_switch(api, operator_api, operator):
    assert api.get(f"{V1}/fleet").json() == {"dispatch": "on", "pausedAt": None, "pausedBy": "", "reason": ""}
    operator_api.handler.enforce_csrf_checks = False
    response = operator_api.post(f"{V1}/fleet/pause", {"reason": "upgrade"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["dispatch"] == "off" and body["pausedBy"] == "alice" and body["reason"] == "upgrade"
    assert body["pausedAt"]
    assert_error(api.post(f"{V1}/fleet/pause"), 409, "invalid_transition")
    # Triggers are still accepted while it is off.
    AgentFactory(id="a1")
    WorkflowDefinitionFactory(id="wf-f")
    assert api.post(f"{V1}/agent/a1/workflow", {"workflowDefinitionId": "wf-f"}, format="json").status_code == 202
    assert api.post(f"{V1}/fleet/resume").json()["dispatch"] == "on"
    assert list(ControlEvent.objects.values_list("action", flat=True).order_by("id")) == ["paused", "resumed"]


def test_approvals_inbox_and_decision(api, operator_api, q_sync, agentkit_stub):
    from tests.sessions.test_engine import report

    session = start(review_spec("rev-api", approvers="leads"))
    report(session.agent_id, "idle", {"result": {"summary": "ok"}})
    inbox = api.get(f"{V1}/approvals").json()
    assert inbox["count"] == 1
    item = inbox["results"][0]
    assert (item["stepId"], item["approvers"], item["previousResult"], item["status"]) == (
        "review", "leads", {"summary": "ok"}, "waiting_approval")
    url = f"{V1}/approvals/{item['taskId']}/decide"

    assert_error(api.post(url, {"decision": "maybe"}, format="json"), 400, "invalid")
    bob = User.objects.create_user("bob", is_staff=True)
    operator_api.force_login(bob)
    operator_api.handler.enforce_csrf_checks = False
    assert_error(operator_api.post(url, {"decision": "approve"}, format="json"), 403, "not_an_approver")
    bob.groups.add(Group.objects.create(name="leads"))
    response = operator_api.post(url, {"decision": "approve", "comment": "fine"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "completed"
    assert response.json()["result"]["decidedBy"] == "bob" and response.json()["result"]["comment"] == "fine"
    assert_error(api.post(url, {"decision": "reject"}, format="json"), 409, "invalid_transition")
    assert api.get(f"{V1}/approvals").json()["count"] == 0
    assert_error(api.post(f"{V1}/approvals/not-a-uuid/decide", {"decision": "approve"}, format="json"), 404)


def test_a_service_key_rejects_and_an_agent_key_may_not(api, bound_api, q_sync, agentkit_stub):
    from tests.sessions.test_engine import report

    session = start(review_spec("rev-key"))
    report(session.agent_id, "idle")
    task = Task.objects.get(session=session, status="waiting_approval")
    url = f"{V1}/approvals/{task.pk}/decide"
    assert_error(bound_api.post(url, {"decision": "approve"}, format="json"), 403, "permission_denied")
    response = api.post(url, {"decision": "reject", "comment": "policy"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "rejected"
    assert response.json()["result"]["decidedBy"].startswith("API key 'fleet'")
    assert Task.objects.get(session=session, sequence=3).step_id == "rework"


def test_the_new_endpoints_refuse_anonymous_and_agent_keys(anon, bound_api):
    session = start()
    for path in (f"sessions/{session.pk}/pause", "workflows/wf/pause", "fleet/pause"):
        assert_error(anon.post(f"{V1}/{path}"), 401, "not_authenticated")
        assert_error(bound_api.post(f"{V1}/{path}"), 403, "permission_denied")
    assert_error(anon.get(f"{V1}/approvals"), 401)
    assert_error(bound_api.get(f"{V1}/fleet"), 403)


def test_the_schema_documents_the_new_endpoints(client):
    paths = client.get(f"{V1}/schema?format=json").json()["paths"]
    for path in ("/v1/opscore/sessions/{session_id}/pause", "/v1/opscore/sessions/{session_id}/resume",
                 "/v1/opscore/workflows/{workflow_id}/pause", "/v1/opscore/workflows/{workflow_id}/resume",
                 "/v1/opscore/fleet", "/v1/opscore/fleet/pause", "/v1/opscore/fleet/resume",
                 "/v1/opscore/approvals", "/v1/opscore/approvals/{task_id}/decide"):
        assert path in paths, path
    assert "waiting_approval" in str(client.get(f"{V1}/schema?format=json").json()["components"])
