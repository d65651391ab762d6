"""The resources under /v1/opscore/: agents, workflows, sessions, tasks, and the actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions.engine import By, session_start, task_transition
from sessions.models import Session, Task
from tests.agents.factories import AgentFactory, AgentStateFactory
from tests.api.conftest import assert_error
from tests.workflows.factories import WorkflowDefinitionFactory, two_step_spec

pytestmark = pytest.mark.django_db
V1 = "/v1/opscore"


def start(agent_id: str = "a1", workflow_id: str = "wf") -> Session:
    agent = AgentFactory(id=agent_id)
    definition = WorkflowDefinitionFactory(id=workflow_id)
    return session_start(definition=definition, agent=agent, by=By.system())


# ------------------------------------------------------------------ agents


def test_agents_list_filters_and_detail(api):
    AgentFactory(id="idle-1", state="idle", capabilities=["summarise"])
    AgentFactory(id="busy-1", state="active", name="Busy")
    AgentFactory(id="gone-1", state="idle", deregistered_at=timezone.now(),
                 last_seen_at=timezone.now() - timedelta(days=2))
    ids = lambda response: [a["agentId"] for a in response.json()["results"]]  # noqa: E731
    assert ids(api.get(f"{V1}/agents")) == ["busy-1", "gone-1", "idle-1"]
    assert ids(api.get(f"{V1}/agents?state=idle&deregistered=false")) == ["idle-1"]
    assert ids(api.get(f"{V1}/agents?capability=summarise")) == ["idle-1"]
    assert ids(api.get(f"{V1}/agents?search=bus")) == ["busy-1"]
    assert ids(api.get(f"{V1}/agents?stale=true")) == []  # deregistered long ago: gone, not stale
    assert api.get(f"{V1}/agents/gone-1").json()["stale"] is False
    detail = api.get(f"{V1}/agents/busy-1").json()
    assert detail["name"] == "Busy" and detail["state"] == "active" and detail["stale"] is False
    assert_error(api.get(f"{V1}/agents?state=sleeping"), 400, "invalid")
    assert_error(api.get(f"{V1}/agents?stale=maybe"), 400, "invalid")
    assert_error(api.get(f"{V1}/agents/nobody"), 404, "not_found")


def test_agent_history_is_paginated_newest_first(api):
    agent = AgentFactory(id="a1")
    for state in ("initializing", "idle", "active", "idle"):
        AgentStateFactory(agent=agent, state=state)
    page = api.get(f"{V1}/agents/a1/history?limit=2").json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]
    assert page["results"][0]["state"] == "idle" and page["results"][1]["state"] == "active"


def test_list_limit_is_capped(api, monkeypatch):
    from opscore_site.api import Pagination

    monkeypatch.setattr(Pagination, "max_limit", 2)
    AgentFactory.create_batch(3)
    page = api.get(f"{V1}/agents?limit=100000")
    assert page.status_code == 200 and page.json()["count"] == 3 and len(page.json()["results"]) == 2
    # A limit or offset that is no number falls back to the defaults (limit 50, offset 0), no 400.
    page = api.get(f"{V1}/agents?limit=-4&offset=xyz")
    assert page.status_code == 200 and len(page.json()["results"]) == 3


@pytest.mark.parametrize("path", ["agents", "sessions", "tasks", "workflows"])
def test_list_queries_do_not_grow_with_rows(api, path, django_assert_num_queries, settings):
    settings.OPSCORE_THROTTLE_RATE = ""
    for n in range(3):
        start(agent_id=f"agent-{n}", workflow_id=f"wf-{n}")
    api.get(f"{V1}/{path}")  # last_used_at written here
    with django_assert_num_queries(2):  # count, page (the key was verified above and is cached)
        assert len(api.get(f"{V1}/{path}").json()["results"]) == 3


def test_session_detail_queries_are_bounded(api, django_assert_num_queries, settings):
    settings.OPSCORE_THROTTLE_RATE = ""
    session = start()
    api.get(f"{V1}/sessions")
    with django_assert_num_queries(3):  # session, tasks, attempts (the key is cached)
        body = api.get(f"{V1}/sessions/{session.pk}").json()
    assert [t["stepId"] for t in body["tasks"]] == ["step_1"] and body["tasks"][0]["attempts"] == []


# ------------------------------------------------------------------ workflows


def test_workflows_create_list_detail_update(api):
    spec = two_step_spec("flow")
    created = api.post(f"{V1}/workflows", spec, format="json")
    assert created.status_code == 201 and created.json()["revision"] == 1
    assert api.post(f"{V1}/workflows", spec, format="json").status_code == 200  # same document
    assert_error(api.post(f"{V1}/workflows", two_step_spec("flow", name="Other"), format="json"), 409,
                 "definition_conflict")
    updated = api.put(f"{V1}/workflows/flow", two_step_spec("flow", name="Renamed"), format="json")
    assert updated.status_code == 200 and updated.json()["revision"] == 2
    assert api.get(f"{V1}/workflows/flow").json()["definition"]["tasks"][0]["name"] == "Renamed"
    assert [w["id"] for w in api.get(f"{V1}/workflows").json()["results"]] == ["flow"]
    no_id = {k: v for k, v in two_step_spec("x").items() if k != "id"}
    assert api.put(f"{V1}/workflows/new-one", no_id, format="json").status_code == 201


def test_workflow_validation_errors_are_per_field(api):
    spec = two_step_spec("flow")
    spec["tasks"][1]["taskId"] = "step_1"
    body = assert_error(api.post(f"{V1}/workflows", spec, format="json"), 400, "invalid")
    assert "tasks.1.taskId" in body["errors"]
    body = assert_error(api.put(f"{V1}/workflows/flow", two_step_spec("other"), format="json"), 400)
    assert "id" in body["errors"]
    assert_error(api.post(f"{V1}/workflows", [1], format="json"), 400)
    assert_error(api.patch(f"{V1}/workflows/flow", {}, format="json"), 405, "method_not_allowed")


# ------------------------------------------------------------------ sessions and tasks


def test_sessions_and_tasks_lists_filter(api):
    one = start("a1", "wf-1")
    start("a2", "wf-2")
    assert [s["sessionId"] for s in api.get(f"{V1}/sessions?agent=a1").json()["results"]] == [str(one.pk)]
    assert api.get(f"{V1}/sessions?status=pending,running").json()["count"] == 2
    assert api.get(f"{V1}/sessions?workflow=wf-2").json()["count"] == 1
    assert api.get(f"{V1}/tasks?status=queued&agent=a2").json()["count"] == 1
    assert api.get(f"{V1}/tasks?session={one.pk}").json()["count"] == 1
    assert_error(api.get(f"{V1}/tasks?status=lost"), 400)
    assert_error(api.get(f"{V1}/tasks?session=not-a-uuid"), 400)
    assert_error(api.get(f"{V1}/sessions?since=forever"), 400, "invalid")
    assert api.get(f"{V1}/sessions?since=1h&workflow=wf-1").json()["count"] == 1
    assert_error(api.get(f"{V1}/sessions/not-a-uuid"), 404)


def test_cancel_session_then_cancel_again_is_409(api):
    session = start()
    response = api.post(f"{V1}/sessions/{session.pk}/cancel", {"reason": "test"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["tasks"][0]["status"] == "cancelled"
    assert_error(api.post(f"{V1}/sessions/{session.pk}/cancel"), 409, "invalid_transition")


def _kill_first_task(session: Session) -> Task:
    task = session.tasks.get()
    for to in ("dispatched", "failed", "dead"):
        task_transition(task=task, to=to, by=By.system(), reason="test")
    Session.objects.filter(pk=session.pk).update(status="failed")
    return task


def test_retry_task_and_session(api):
    session = start()
    assert_error(api.post(f"{V1}/sessions/{session.pk}/retry"), 409, "invalid_transition")
    task = _kill_first_task(session)
    response = api.post(f"{V1}/tasks/{task.pk}/retry", {"reason": "fixed"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert Session.objects.get(pk=session.pk).status == "running"
    assert_error(api.post(f"{V1}/tasks/{task.pk}/retry"), 409, "invalid_transition")

    other = start("a2", "wf-2")
    _kill_first_task(other)
    response = api.post(f"{V1}/sessions/{other.pk}/retry")
    assert response.status_code == 200 and response.json()["status"] == "running"


def test_operator_actions_need_csrf_and_record_the_operator(operator_api, operator):
    session = start()
    assert operator_api.get(f"{V1}/sessions").status_code == 200  # reads need no token
    assert_error(operator_api.post(f"{V1}/sessions/{session.pk}/cancel"), 403, "permission_denied")
    operator_api.handler.enforce_csrf_checks = False
    assert operator_api.post(f"{V1}/sessions/{session.pk}/cancel").status_code == 200
    assert session.events.filter(new_status="cancelled", actor_user=operator).exists()


# ------------------------------------------------------------------ who may call


def test_resource_permissions(anon, bound_api, client, django_user_model):
    assert_error(anon.get(f"{V1}/agents"), 401, "not_authenticated")
    assert_error(bound_api.get(f"{V1}/agents"), 403, "permission_denied")
    user = django_user_model.objects.create_user("bob", password="pw-12345-long")
    client.force_login(user)
    response = client.get(f"{V1}/sessions")
    assert_error(response, 403)


def test_unknown_paths_are_json_404_and_probes_work(api, client):
    assert_error(api.get(f"{V1}/nothing-here"), 404, "not_found")
    assert_error(api.get(f"{V1}/agents/"), 404)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200


def test_schema_and_docs_are_served(client):
    schema = client.get(f"{V1}/schema?format=json")
    assert schema.status_code == 200
    assert "/v1/opscore/agent/{agent_id}/state" in schema.json()["paths"]
    docs = client.get(f"{V1}/docs")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content and b"cdn" not in docs.content.lower()
