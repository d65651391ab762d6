"""One FilterSet per resource: the API list and the operator page filter with the same rules.

An operator's browser session may read the API, so one client asks both.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.agents.factories import AgentFactory
from tests.ui.helpers import failed_session
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db
V1 = "/v1/opscore"


def test_the_agents_page_and_the_api_filter_with_one_rule(staff_client):
    """"Not stale" includes deregistered agents on both (a deregistered agent is never stale)."""
    AgentFactory(id="fresh-1", state="idle", last_seen_at=timezone.now())
    AgentFactory(id="old-1", state="idle", last_seen_at=timezone.now() - timedelta(days=2))
    AgentFactory(id="gone-1", state="idle", deregistered_at=timezone.now(),
                 last_seen_at=timezone.now() - timedelta(days=2))

    def api_ids(query):
        return [a["agentId"] for a in staff_client.get(f"{V1}/agents?{query}").json()["results"]]

    def page_ids(query):
        return [a.pk for a in staff_client.get(f"/agents/?{query}").context["page"]]

    assert api_ids("stale=false") == page_ids("stale=no&deregistered=all") == ["fresh-1", "gone-1"]
    assert api_ids("stale=true") == page_ids("stale=yes") == ["old-1"]
    assert api_ids("drained=no&deregistered=no") == page_ids("drained=no") == ["fresh-1", "old-1"]
    assert api_ids("") == page_ids("deregistered=all") == ["fresh-1", "gone-1", "old-1"]

    bad = staff_client.get(f"{V1}/agents?drained=maybe")
    assert bad.status_code == 400
    assert bad.json() == {"detail": "drained: 'maybe' must be yes or no (true or false)", "code": "invalid",
                          "errors": {"drained": ["'maybe' must be yes or no (true or false)"]}}
    page = staff_client.get("/agents/?drained=maybe&state=idle")
    assert [a.pk for a in page.context["page"]] == ["fresh-1", "old-1"]  # shown and ignored on the page
    assert "Filter “Drained” ignored: &#x27;maybe&#x27; must be yes or no" in page.content.decode()


def test_the_failures_queue_is_the_tasks_list_awaiting_a_decision(staff_client):
    waiting = failed_session(definition=WorkflowDefinitionFactory(id="wanted"))
    failed_session(definition=WorkflowDefinitionFactory(id="other"))
    listed = staff_client.get(f"{V1}/tasks?awaiting_decision=yes&workflow=wanted").json()["results"]
    page = staff_client.get("/failures/?workflow=wanted").context["page"]
    assert [t["taskId"] for t in listed] == [str(t.pk) for t in page] == [str(waiting.pk)]
    assert staff_client.get(f"{V1}/tasks?awaiting_decision=no").json()["count"] == 0
    assert staff_client.get(f"{V1}/tasks?awaiting_decision=perhaps").status_code == 400


def test_the_date_range_is_one_definition_for_both(staff_client):
    recent, old = failed_session(), failed_session()
    old.session.__class__.objects.filter(pk=old.session_id).update(created_at=timezone.now() - timedelta(days=3))
    api = staff_client.get(f"{V1}/sessions?since=24h").json()["results"]
    page = staff_client.get("/sessions/?since=24h").context["page"]
    assert [s["sessionId"] for s in api] == [str(s.pk) for s in page] == [str(recent.session_id)]
    body = staff_client.get(f"{V1}/sessions?since=forever").json()
    assert body["code"] == "invalid" and list(body["errors"]) == ["since"]
