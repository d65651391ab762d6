"""opscore_site.postgresql: Django's health check, minus the SELECT 1 for a connection in use."""

from __future__ import annotations

import time

import pytest
from django.db import connection, connections

from opscore_site.postgresql import base

pytestmark = pytest.mark.django_db


@pytest.fixture
def checks(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(connection, "is_usable", lambda: calls.append(1) or True)
    connection.ensure_connection()
    return calls


def test_the_test_database_runs_on_this_backend():
    assert isinstance(connections["default"], base.DatabaseWrapper) and connection.health_check_enabled


def test_a_connection_that_ended_a_request_within_the_second_is_not_checked_again(checks):
    base.mark_good()
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert checks == [] and connection.health_check_done


def test_a_qcluster_job_that_ended_well_vouches_for_its_connection_like_a_request(checks):
    from django_q.signals import post_execute_in_worker

    connection.good_at = float("-inf")
    post_execute_in_worker.send(sender="django_q", func=None, task={})
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert checks == [] and connection.health_check_done


def test_an_idle_connection_is_checked(checks):
    connection.good_at = time.monotonic() - base.FRESH_SECONDS - 0.1
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert checks == [1]


def test_a_request_that_met_a_database_error_does_not_vouch_for_its_connection(checks, monkeypatch):
    connection.good_at = float("-inf")
    monkeypatch.setattr(connection, "errors_occurred", True)
    base.mark_good()
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert checks == [1]


def test_a_state_report_is_prepared_once_per_connection():
    from datetime import UTC, datetime

    from agents.services import agent_state_record

    for n in range(3):
        now = datetime.now(UTC)
        agent_state_record(agent_id="p1", state=("idle", "active")[n % 2], details={"n": n}, timestamp=now,
                           received_at=now)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), sum(generic_plans + custom_plans) FROM pg_prepared_statements"
                       " WHERE statement LIKE %s", ["%WITH report AS%"])
        assert cursor.fetchone() == (1, 3)
