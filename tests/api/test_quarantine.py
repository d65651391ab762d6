"""Quarantine and release by hand: the API actions on the agents resource, the admin actions and the
opscore_quarantine command, each through the engine and recorded with who did it."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from agents.models import Agent
from sessions import engine
from sessions.models import QuarantineEvent
from tests.agents.factories import AgentFactory
from tests.api.conftest import assert_error

pytestmark = pytest.mark.django_db
V1 = "/v1/opscore"
Q = Agent.Quarantine


def test_the_api_quarantines_and_releases_an_agent_with_the_operator(operator_api, operator):
    agent = AgentFactory(id="a1")
    assert_error(operator_api.post(f"{V1}/agents/a1/quarantine", {"reason": "smoke"}, format="json"), 403)
    operator_api.handler.enforce_csrf_checks = False
    response = operator_api.post(f"{V1}/agents/a1/quarantine", {"reason": "smoke"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["quarantineState"] == "quarantined" and body["quarantineReason"] == "smoke"
    assert body["quarantineProbeAt"] is None and body["quarantinedAt"] is not None
    agent.refresh_from_db()
    assert agent.quarantined_by == operator
    assert_error(operator_api.post(f"{V1}/agents/a1/quarantine", {"reason": "again"}, format="json"), 409,
                 "invalid_transition")
    response = operator_api.post(f"{V1}/agents/a1/release", {"reason": "fixed"}, format="json")
    assert response.status_code == 200 and response.json()["quarantineState"] == ""
    assert_error(operator_api.post(f"{V1}/agents/a1/release", format="json"), 409, "invalid_transition")
    assert [e.actor_label for e in QuarantineEvent.objects.all()] == [f"operator {operator}"] * 2


def test_the_api_refuses_a_quarantine_without_a_reason_and_an_unknown_agent(api):
    AgentFactory(id="a1")
    for body in ({}, {"reason": "  "}, {"reason": "x" * 1001}):
        error = assert_error(api.post(f"{V1}/agents/a1/quarantine", body, format="json"), 400)
        assert "reason" in error["errors"]
    assert_error(api.post(f"{V1}/agents/a1/quarantine", [1, 2], format="json"), 400)
    assert_error(api.post(f"{V1}/agents/nobody/quarantine", {"reason": "x"}, format="json"), 404)
    assert Agent.objects.get(pk="a1").quarantine_state == Q.NONE


def test_a_service_key_quarantine_names_the_key(api):
    AgentFactory(id="a1")
    assert api.post(f"{V1}/agents/a1/quarantine", {"reason": "flaky"}, format="json").status_code == 200
    event = QuarantineEvent.objects.get()
    assert event.actor == "system" and event.reason.startswith("flaky via API key")


def test_an_agent_bound_key_may_not_quarantine(bound_api):
    AgentFactory(id="a1")
    assert bound_api.post(f"{V1}/agents/a1/quarantine", {"reason": "x"}, format="json").status_code == 403


def test_the_openapi_schema_documents_the_actions(api):
    schema = api.get(f"{V1}/schema?format=json").json()
    assert "post" in schema["paths"]["/v1/opscore/agents/{agent_id}/quarantine"]
    assert "post" in schema["paths"]["/v1/opscore/agents/{agent_id}/release"]
    agent_schema = schema["components"]["schemas"]["AgentOut"]
    assert {"quarantineState", "quarantineReason", "quarantineProbeAt"} <= set(agent_schema["properties"])


def test_admin_actions_quarantine_and_release_with_counts(client, operator):
    client.force_login(operator)
    first, second = AgentFactory(), AgentFactory()
    url = reverse("admin:agents_agent_changelist")
    response = client.post(url, {"action": "quarantine_selected", "_selected_action": [first.pk, second.pk]},
                           follow=True)
    assert any("Quarantined agent(s): 2" in str(m) for m in response.context["messages"])
    first.refresh_from_db()
    assert first.quarantine_state == Q.QUARANTINED and first.quarantined_by == operator
    response = client.post(url, {"action": "release_selected", "_selected_action": [first.pk]}, follow=True)
    assert any("Released agent(s): 1" in str(m) for m in response.context["messages"])
    assert list(Agent.objects.quarantined().values_list("pk", flat=True)) == [second.pk]
    response = client.post(url, {"action": "release_selected", "_selected_action": [first.pk]}, follow=True)
    assert any("Skipped 1" in str(m) and "not quarantined" in str(m) for m in response.context["messages"])


def run(*args) -> str:
    out = StringIO()
    call_command("opscore_quarantine", *args, stdout=out)
    return out.getvalue()


def test_the_command_quarantines_releases_and_shows(operator):
    agent = AgentFactory(id="a1")
    assert run("a1") == "agent a1: not quarantined\n"
    assert run("a1", "--reason", "flaky", "--dry-run") == "dry run: would quarantine agent a1 (now not quarantined)\n"
    assert Agent.objects.get(pk="a1").quarantine_state == Q.NONE
    assert run("a1", "--reason", "flaky", "--user", operator.username) == "agent a1: quarantined\n"
    agent.refresh_from_db()
    assert agent.quarantined_by == operator and agent.quarantine_reason == "flaky"
    assert run("a1") == "agent a1: quarantined (flaky)\n"
    with pytest.raises(CommandError, match="already quarantined"):
        run("a1", "--reason", "again")
    assert run("a1", "--release") == "agent a1: released\n"
    with pytest.raises(CommandError, match="is not quarantined"):
        run("a1", "--release")


@pytest.mark.parametrize(("args", "message"), [
    (("nobody", "--release"), "no agent 'nobody'"),
    (("a1", "--reason", " "), "--reason may not be blank"),
    (("a1", "--release", "--user", "ghost"), "no user named 'ghost'"),
])
def test_the_command_refuses_bad_input(args, message):
    AgentFactory(id="a1")
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_a_released_agent_by_the_engine_is_not_quarantined(db):
    agent = AgentFactory()
    engine.agent_quarantine(agent=agent, by=engine.By.system(), reason="x")
    assert Agent.objects.quarantined().count() == 1
