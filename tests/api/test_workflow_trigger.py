"""POST /v1/opscore/agent/{agentId}/workflow."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from sessions.models import Session, Task
from tests.agents.factories import AgentFactory
from tests.api.conftest import assert_error
from tests.workflows.factories import WorkflowDefinitionFactory, two_step_spec
from workflows.models import WorkflowDefinition

pytestmark = pytest.mark.django_db


def url(agent_id: str = "a1") -> str:
    return f"/v1/opscore/agent/{agent_id}/workflow"


@pytest.fixture
def agent(db):
    return AgentFactory(id="a1")


def test_trigger_by_id_creates_session_and_queues_first_task(api, agent):
    WorkflowDefinitionFactory(id="wf")
    response = api.post(url(), {"workflowDefinitionId": "wf", "initialPayload": {"x": 1}}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["workflowId"] == "wf" and body["message"]
    session = Session.objects.get(pk=body["sessionId"])
    assert session.agent_id == "a1" and session.initial_payload == {"x": 1}
    task = Task.objects.get(session=session)
    assert task.status == "queued" and task.payload == {"a": 1, "x": 1}
    assert OrmQ.objects.count() == 1  # the dispatch job exists


def test_initial_payload_may_be_null(api, agent):
    WorkflowDefinitionFactory(id="wf")
    response = api.post(url(), {"workflowDefinitionId": "wf", "initialPayload": None}, format="json")
    assert response.status_code == 202
    assert Session.objects.get().initial_payload is None


def test_inline_definition_is_saved_once_and_conflicts_on_other_content(api, agent):
    spec = two_step_spec("inline")
    assert api.post(url(), {"workflowDefinition": spec}, format="json").status_code == 202
    assert WorkflowDefinition.objects.get(pk="inline").revision == 1
    assert api.post(url(), {"workflowDefinition": spec}, format="json").status_code == 202  # same content
    changed = two_step_spec("inline", parameters={"a": 99})
    assert_error(api.post(url(), {"workflowDefinition": changed}, format="json"), 409, "definition_conflict")
    assert Session.objects.count() == 2 and WorkflowDefinition.objects.get(pk="inline").revision == 1


def test_invalid_inline_definition_is_400_per_field(api, agent):
    spec = two_step_spec("bad", nextTaskId="nowhere")
    body = assert_error(api.post(url(), {"workflowDefinition": spec}, format="json"), 400, "invalid")
    assert "workflowDefinition.tasks.0.nextTaskId" in body["errors"], body
    assert not WorkflowDefinition.objects.exists()


@pytest.mark.parametrize("payload", [
    {},
    {"workflowDefinitionId": "wf", "workflowDefinition": two_step_spec("wf")},
    {"workflowDefinitionId": "wf", "initialPayload": [1]},
])
def test_exactly_one_definition_and_an_object_payload(api, agent, payload):
    WorkflowDefinitionFactory(id="wf")
    assert_error(api.post(url(), payload, format="json"), 400, "invalid")


def test_unknown_definition_and_unknown_agent_are_404(api, agent):
    body = assert_error(api.post(url(), {"workflowDefinitionId": "nope"}, format="json"), 404, "not_found")
    assert "nope" in body["detail"]
    WorkflowDefinitionFactory(id="wf")
    assert_error(api.post(url("ghost"), {"workflowDefinitionId": "wf"}, format="json"), 404, "not_found")


def test_deregistered_agent_is_409_and_nothing_is_saved(api):
    AgentFactory(id="a1", deregistered_at=timezone.now())
    assert_error(api.post(url(), {"workflowDefinition": two_step_spec("new")}, format="json"), 409,
                 "agent_unavailable")
    assert not WorkflowDefinition.objects.exists() and not Session.objects.exists()


def test_idempotency_key_same_body_same_session_other_body_409(api, agent):
    WorkflowDefinitionFactory(id="wf")
    body = {"workflowDefinitionId": "wf", "initialPayload": {"x": 1}}
    first = api.post(url(), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post(url(), {"initialPayload": {"x": 1}, "workflowDefinitionId": "wf"}, format="json",
                     HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 202
    assert first.json()["sessionId"] == again.json()["sessionId"] and Session.objects.count() == 1
    assert_error(api.post(url(), {**body, "initialPayload": {"x": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"),
                 409, "idempotency_conflict")
    other = api.post(url(), body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert other.json()["sessionId"] != first.json()["sessionId"]


def test_an_expired_idempotency_key_starts_a_new_session(api, agent, settings):
    WorkflowDefinitionFactory(id="wf")
    body = {"workflowDefinitionId": "wf"}
    first = api.post(url(), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1").json()["sessionId"]
    Session.objects.filter(pk=first).update(
        created_at=timezone.now() - timedelta(hours=settings.OPSCORE_IDEMPOTENCY_TTL_HOURS, minutes=1))
    second = api.post(url(), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1").json()["sessionId"]
    assert second != first
    assert Session.objects.get(pk=first).idempotency_key is None
    assert Session.objects.get(pk=second).idempotency_key == "k-1"


def test_idempotency_race_loser_gets_the_winners_session(api, agent, monkeypatch):
    """Two identical requests: the second hits the unique key inside session_start."""
    from sessions import services

    WorkflowDefinitionFactory(id="wf")
    body = {"workflowDefinitionId": "wf"}
    winner = api.post(url(), body, format="json", HTTP_IDEMPOTENCY_KEY="race").json()["sessionId"]
    real = services._session_for_key
    calls = []

    def miss_first_time(**kwargs):
        calls.append(1)
        return None if len(calls) == 1 else real(**kwargs)

    monkeypatch.setattr(services, "_session_for_key", miss_first_time)
    response = api.post(url(), body, format="json", HTTP_IDEMPOTENCY_KEY="race")
    assert response.status_code == 202 and response.json()["sessionId"] == winner
    assert Session.objects.count() == 1 and len(calls) == 2


def test_agent_bound_key_may_trigger_for_its_agent_only(bound_api):
    AgentFactory(id="bound-agent")
    AgentFactory(id="other")
    WorkflowDefinitionFactory(id="wf")
    assert bound_api.post(url("bound-agent"), {"workflowDefinitionId": "wf"}, format="json").status_code == 202
    assert_error(bound_api.post(url("other"), {"workflowDefinitionId": "wf"}, format="json"), 403)
    assert Session.objects.get().created_by is None


def test_operator_may_trigger_with_csrf(operator_api, operator, agent):
    WorkflowDefinitionFactory(id="wf")
    assert_error(operator_api.post(url(), {"workflowDefinitionId": "wf"}, format="json"), 403)  # no CSRF token
    operator_api.handler.enforce_csrf_checks = False
    assert operator_api.post(url(), {"workflowDefinitionId": "wf"}, format="json").status_code == 202
    assert Session.objects.get().created_by == operator
