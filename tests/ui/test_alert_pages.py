"""The alert pages: list, create/edit with their checks, the detail with deliveries, the test button."""

from __future__ import annotations

import pytest

from alerts.models import AlertDelivery, AlertRule
from tests.alerts.factories import AlertRuleFactory

pytestmark = pytest.mark.django_db

GOOD = {"name": "failed sessions", "kind": "session_failed", "workflow_id": "", "step_id": "", "threshold": "0",
        "window_minutes": "10", "interval_minutes": "5", "channel": "webhook",
        "target": "https://hooks.example.com/opscore", "enabled": "on"}


def test_an_operator_creates_a_rule_and_sees_it(staff_client, staff_operator):
    response = staff_client.post("/alerts/new/", GOOD)
    rule = AlertRule.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/alerts/{rule.pk}/"
    assert rule.created_by == staff_operator and rule.secret and len(rule.secret) == 64
    assert rule.name in staff_client.get("/alerts/").content.decode()
    page = staff_client.get(f"/alerts/{rule.pk}/").content.decode()
    assert "Send a test" in page and rule.secret in page and "Nothing sent yet" in page


@pytest.mark.parametrize("change, field, message", [
    ({"target": "javascript:alert(1)"}, "target", "http"),
    ({"channel": "email", "target": "oncall@example.com, not-an-address"}, "target", "not-an-address"),
    ({"interval_minutes": "0"}, "interval_minutes", "at least 1"),
    ({"kind": "queue_depth", "workflow_id": "wf"}, "workflow_id", "name a workflow"),
    ({"kind": "session_failed", "step_id": "s"}, "step_id", "name a step"),
    ({"kind": "approval_waiting"}, "kind", "not one of the available choices"),
    ({"threshold": "-1"}, "threshold", ""),
])
def test_bad_input_is_a_400_that_says_why(staff_client, change, field, message):
    response = staff_client.post("/alerts/new/", {**GOOD, **change})
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert message in " ".join(response.context["form"].errors[field])
    assert not AlertRule.objects.exists()


def test_editing_keeps_the_secret_and_the_creator(staff_client):
    rule = AlertRuleFactory()
    secret = rule.secret
    assert staff_client.get(f"/alerts/{rule.pk}/edit/").status_code == 200
    response = staff_client.post(f"/alerts/{rule.pk}/edit/", {**GOOD, "name": "renamed", "channel": "slack"})
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.name, rule.channel, rule.secret) == ("renamed", "slack", secret)


def test_send_a_test_queues_a_test_delivery(staff_client, django_capture_on_commit_callbacks):
    rule = AlertRuleFactory()
    with django_capture_on_commit_callbacks() as jobs:
        response = staff_client.post(f"/alerts/{rule.pk}/test/")
    assert response.status_code == 302
    delivery = AlertDelivery.objects.get()
    assert delivery.is_test and delivery.payload["test"] is True and "TEST" in delivery.payload["title"]
    assert len(jobs) == 1
    rule.refresh_from_db()
    assert rule.last_fired_at is None  # a test is not the rule firing
    page = staff_client.get(f"/alerts/{rule.pk}/").content.decode()
    assert f'data-delivery="{delivery.pk}"' in page and "pending" in page


def test_read_only_operators_see_but_change_nothing(read_only_client):
    rule = AlertRuleFactory()
    assert read_only_client.get("/alerts/").status_code == 200
    page = read_only_client.get(f"/alerts/{rule.pk}/").content.decode()
    assert "Send a test" not in page and rule.secret not in page
    assert read_only_client.post(f"/alerts/{rule.pk}/test/").status_code == 403
    assert read_only_client.post("/alerts/new/", GOOD).status_code == 403
    assert not AlertDelivery.objects.exists() and AlertRule.objects.count() == 1


def test_outsiders_and_anonymous_users_are_kept_out(client, outsider):
    rule = AlertRuleFactory()
    assert client.get("/alerts/").status_code == 302
    client.force_login(outsider)
    assert client.get(f"/alerts/{rule.pk}/").status_code == 403
    assert client.get("/alerts/999999/").status_code == 403


def test_an_unknown_rule_is_a_404(staff_client):
    assert staff_client.get("/alerts/999999/").status_code == 404
    assert staff_client.post("/alerts/999999/test/").status_code == 404


def test_the_admin_lists_rules_and_deliveries(client, operator):
    rule = AlertRuleFactory()
    AlertDelivery.objects.create(rule=rule, channel=rule.channel, payload={"title": "x"})
    client.force_login(operator)
    for path in ("/admin/alerts/alertrule/", f"/admin/alerts/alertrule/{rule.pk}/change/",
                 "/admin/alerts/alertrule/add/", "/admin/alerts/alertdelivery/"):
        assert client.get(path).status_code == 200, path
