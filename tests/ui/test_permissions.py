"""Who may see and change what: anonymous users, outsiders, read-only operators, operators."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import Agent, ApiKey
from agents.services import api_key_create
from sessions.models import Session, Task, TaskEvent
from tests.agents.factories import AgentFactory
from tests.sessions.factories import TaskFactory
from tests.ui.helpers import failed_session
from tests.workflows.factories import WorkflowDefinitionFactory, two_step_spec
from workflows.models import WorkflowDefinition

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    dead = failed_session()
    running = TaskFactory(status=Task.Status.QUEUED)
    key, _ = api_key_create(name="fleet")
    return {"dead": dead, "running": running, "agent": dead.agent, "definition": dead.session.definition,
            "key": key}


def page_urls(world):
    w = world
    return [
        reverse("sessions:dashboard"),
        reverse("agents:agent-list"),
        reverse("agents:agent-detail", args=[w["agent"].pk]),
        reverse("sessions:session-list"),
        reverse("sessions:session-detail", args=[w["dead"].session_id]),
        reverse("sessions:failure-list"),
        reverse("sessions:failure-retry") + f"?ids={w['dead'].pk}&scope=selected",
        reverse("workflows:workflow-list"),
        reverse("workflows:workflow-detail", args=[w["definition"].pk]),
        reverse("workflows:workflow-create"),
        reverse("workflows:workflow-edit", args=[w["definition"].pk]),
        reverse("workflows:workflow-import"),
        reverse("workflows:workflow-export", args=[w["definition"].pk, "json"]),
        reverse("sessions:session-start", args=[w["definition"].pk]),
        reverse("agents:apikey-list"),
    ]


def write_requests(world):
    """Every mutation: (url, POST data)."""
    w = world
    spec = two_step_spec(w["definition"].pk)
    spec["name"] = "changed"
    import json

    return [
        (reverse("agents:agent-drain", args=[w["agent"].pk]), {"reason": "maintenance"}),
        (reverse("agents:agent-undrain", args=[w["agent"].pk]), {"reason": "done"}),
        (reverse("sessions:session-cancel", args=[w["running"].session_id]), {"reason": "stop"}),
        (reverse("sessions:session-retry", args=[w["dead"].session_id]), {"reason": "again"}),
        (reverse("sessions:task-retry", args=[w["dead"].pk]), {"reason": "again"}),
        (reverse("sessions:failure-retry"), {"scope": "all", "reason": "again"}),
        (reverse("workflows:workflow-create"), {"document": json.dumps(two_step_spec("brand-new"))}),
        (reverse("workflows:workflow-edit", args=[w["definition"].pk]), {"document": json.dumps(spec)}),
        (reverse("workflows:workflow-import"), {"document": json.dumps(two_step_spec("imported"))}),
        (reverse("sessions:session-start", args=[w["definition"].pk]), {"agent": w["agent"].pk}),
        (reverse("agents:apikey-create"), {"name": "new key"}),
        (reverse("agents:apikey-revoke", args=[w["key"].pk]), {}),
    ]


def snapshot():
    """Everything a mutation could change, to prove a refused one changed nothing."""
    return (
        list(Agent.objects.values_list("pk", "drained_at")),
        list(Session.objects.values_list("pk", "status")),
        list(Task.objects.values_list("pk", "status")),
        TaskEvent.objects.count(),
        list(WorkflowDefinition.objects.values_list("pk", "revision")),
        list(ApiKey.objects.values_list("pk", "revoked_at")),
    )


def test_anonymous_users_are_sent_to_log_in_for_every_page(client, world):
    for url in page_urls(world):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_anonymous_posts_change_nothing(client, world):
    before = snapshot()
    for url, data in write_requests(world):
        response = client.post(url, data)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url
    assert snapshot() == before


def test_logged_in_users_who_are_not_operators_are_refused(client, outsider, world):
    client.force_login(outsider)
    for url in page_urls(world):
        assert client.get(url).status_code == 403, url
    before = snapshot()
    for url, data in write_requests(world):
        assert client.post(url, data).status_code == 403, url
    assert snapshot() == before


def test_read_only_operators_see_every_page(read_only_client, world):
    for url in page_urls(world):
        response = read_only_client.get(url)
        assert response.status_code == 200, url
        assert b"Traceback" not in response.content


def test_read_only_operators_are_refused_every_mutation(read_only_client, world):
    before = snapshot()
    for url, data in write_requests(world):
        response = read_only_client.post(url, data)
        assert response.status_code == 403, url
    assert snapshot() == before


def test_read_only_operators_see_no_write_buttons(read_only_client, world):
    w = world
    pages = {
        reverse("agents:agent-detail", args=[w["agent"].pk]): [b"Drain"],
        reverse("sessions:session-detail", args=[w["dead"].session_id]): [b"Retry task", b"Retry from step"],
        reverse("sessions:session-detail", args=[w["running"].session_id]): [b"Cancel session"],
        reverse("sessions:failure-list"): [b"Retry selected", b"name=\"ids\""],
        reverse("workflows:workflow-detail", args=[w["definition"].pk]): [b"Start a session", b">Edit<"],
        reverse("workflows:workflow-list"): [b"New definition", b"Import file"],
        reverse("agents:apikey-list"): [b"Create key", b"Revoke"],
    }
    for url, needles in pages.items():
        content = read_only_client.get(url).content
        assert b"read-only" in content, url
        for needle in needles:
            assert needle not in content, (url, needle)


def test_operators_see_the_write_buttons(staff_client, world):
    w = world
    assert b"Drain" in staff_client.get(reverse("agents:agent-detail", args=[w["agent"].pk])).content
    detail = staff_client.get(reverse("sessions:session-detail", args=[w["dead"].session_id])).content
    assert b"Retry task" in detail and b"Retry from step" in detail
    assert b"Cancel session" in staff_client.get(
        reverse("sessions:session-detail", args=[w["running"].session_id])).content
    assert b"Revoke" in staff_client.get(reverse("agents:apikey-list")).content


def test_a_staff_member_of_the_read_only_group_is_read_only(client, staff_operator, world):
    from django.contrib.auth.models import Group

    from ui.permissions import READ_ONLY_GROUP

    staff_operator.groups.add(Group.objects.get_or_create(name=READ_ONLY_GROUP)[0])
    client.force_login(staff_operator)
    before = snapshot()
    url, data = write_requests(world)[0]
    assert client.post(url, data).status_code == 403
    assert snapshot() == before


def test_get_on_a_mutation_url_is_refused(staff_client, world):
    url, _ = write_requests(world)[0]
    assert staff_client.get(url).status_code == 405


def test_mutations_need_a_csrf_token(staff_operator, world):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_operator)
    before = snapshot()
    url, data = write_requests(world)[0]
    assert client.post(url, data).status_code == 403
    assert snapshot() == before


def test_the_data_migration_creates_the_read_only_group_once():
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Group

    from ui.permissions import READ_ONLY_GROUP

    migration = importlib.import_module("ui.migrations.0001_read_only_group")
    assert migration.READ_ONLY_GROUP == READ_ONLY_GROUP
    Group.objects.filter(name=READ_ONLY_GROUP).delete()
    migration.create_group(apps, None)
    migration.create_group(apps, None)
    assert Group.objects.filter(name=READ_ONLY_GROUP).count() == 1


def test_unknown_objects_are_404(staff_client):
    for url in [reverse("agents:agent-detail", args=["nope"]),
                "/sessions/not-a-uuid/",  # no URL matches
                reverse("sessions:session-detail", args=["6f1c2a8e-0000-4000-8000-000000000000"]),
                reverse("workflows:workflow-detail", args=["nope"]),
                reverse("workflows:workflow-export", args=[WorkflowDefinitionFactory().pk, "xml"])]:
        assert staff_client.get(url).status_code == 404, url
    assert staff_client.post("/tasks/bad/retry/").status_code == 404


def test_agents_are_listed_for_read_only_users_too(read_only_client):
    AgentFactory(id="visible-agent")
    assert b"visible-agent" in read_only_client.get(reverse("agents:agent-list")).content


def test_the_api_refuses_read_only_operators_changes_but_lets_them_read(client, staff_operator):
    """The same rule on /v1/: a staff member of the read-only group may read, not act."""
    from django.contrib.auth.models import Group

    from ui.permissions import READ_ONLY_GROUP

    task = TaskFactory(status=Task.Status.QUEUED)
    staff_operator.groups.add(Group.objects.get_or_create(name=READ_ONLY_GROUP)[0])
    client.force_login(staff_operator)
    assert client.get(f"/v1/opscore/sessions/{task.session_id}").status_code == 200
    response = client.post(f"/v1/opscore/sessions/{task.session_id}/cancel", {"reason": "x"},
                           content_type="application/json")
    assert response.status_code == 403, response.content
    task.session.refresh_from_db()
    assert task.session.status == Session.Status.RUNNING


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example/",
                                    "https:evil.example", "javascript:alert(1)"])
def test_login_and_actions_never_redirect_off_site(client, staff_operator, target):
    response = client.post(reverse("login"), {"username": "bob", "password": "correct-horse-battery",
                                              "next": target})
    assert response.status_code == 302 and response["Location"] == "/", response["Location"]
    assert target.encode() not in client.get(reverse("login") + "?next=" + target).content
    dead = failed_session()
    response = client.post(reverse("sessions:task-retry", args=[dead.pk]), {"next": target})
    assert response["Location"] == reverse("sessions:session-detail", args=[dead.session_id])
