"""POST/GET /v1/opscore/agent/{agentId}/state."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from agents.models import Agent, AgentState
from tests.agents.factories import AgentFactory
from tests.api.conftest import assert_error
from tests.sql import sql_of, unprepared

pytestmark = pytest.mark.django_db


def url(agent_id: str) -> str:
    return f"/v1/opscore/agent/{agent_id}/state"


def report(agent_id: str, state: str = "idle", *, at: datetime | None = None, details=..., **extra) -> dict:
    body = {"agentId": agent_id, "timestamp": (at or datetime.now(UTC)).isoformat(), "state": state}
    if details is not ...:
        body["details"] = details
    return {**body, **extra}


def test_first_report_creates_the_agent_and_answers_202(api):
    response = api.post(url("new-agent"), report("new-agent", "idle", details={}), format="json")
    assert response.status_code == 202
    assert response.json()["status"] == "success" and response.json()["message"]
    agent = Agent.objects.get(pk="new-agent")
    assert agent.state == "idle" and agent.state_details == {} and agent.last_seen_at is not None
    assert agent.name == "" and agent.capabilities == [] and agent.deregistered_at is None
    assert AgentState.objects.filter(agent=agent).count() == 1


@pytest.mark.parametrize("details", [None, {}, ...])
def test_details_may_be_null_empty_or_absent(api, details):
    response = api.post(url("a1"), report("a1", "active", details=details), format="json")
    assert response.status_code == 202, response.content
    assert Agent.objects.get(pk="a1").state_details == (None if details in (None, ...) else {})


def test_get_returns_the_current_state(api):
    at = datetime(2026, 11, 23, 22, 9, 39, 929454, tzinfo=UTC)
    api.post(url("a1"), report("a1", "error", at=at, details={"error_code": "E1", "message": "boom"}), format="json")
    body = api.get(url("a1")).json()
    assert body == {"agentId": "a1", "state": "error", "details": {"error_code": "E1", "message": "boom"},
                    "timestamp": "2026-11-23T22:09:39.929454Z"}


def test_get_unknown_agent_is_404(api):
    assert_error(api.get(url("nobody")), 404, "not_found")


def test_out_of_order_report_is_kept_in_history_but_does_not_change_the_state(api):
    now = datetime.now(UTC)
    api.post(url("a1"), report("a1", "idle", at=now), format="json")
    response = api.post(url("a1"), report("a1", "active", at=now - timedelta(milliseconds=5)), format="json")
    assert response.status_code == 202
    agent = Agent.objects.get(pk="a1")
    assert agent.state == "idle" and agent.state_timestamp == now
    assert list(AgentState.objects.filter(agent=agent).order_by("id").values_list("state", flat=True)) == [
        "idle", "active"]


def test_duplicate_report_is_stored_once_more_and_changes_nothing(api):
    now = datetime.now(UTC)
    first = report("a1", "active", at=now, details={"n": 1})
    api.post(url("a1"), first, format="json")
    received = Agent.objects.get(pk="a1").state_received_at
    assert api.post(url("a1"), first, format="json").status_code == 202
    agent = Agent.objects.get(pk="a1")
    assert agent.state == "active" and agent.state_received_at == received
    assert AgentState.objects.filter(agent=agent).count() == 2


def test_newer_report_wins(api):
    now = datetime.now(UTC)
    api.post(url("a1"), report("a1", "active", at=now - timedelta(seconds=1)), format="json")
    api.post(url("a1"), report("a1", "idle", at=now, details={"result": 3}), format="json")
    agent = Agent.objects.get(pk="a1")
    assert (agent.state, agent.state_details) == ("idle", {"result": 3})


def test_report_does_not_touch_registration_details(api):
    AgentFactory(id="a1", name="Known", capabilities=["x"], state="idle")
    api.post(url("a1"), report("a1", "active"), format="json")
    agent = Agent.objects.get(pk="a1")
    assert (agent.name, agent.capabilities, agent.state) == ("Known", ["x"], "active")


@pytest.mark.parametrize("change, field", [
    ({"agentId": "other"}, "agentId"),
    ({"state": "sleeping"}, "state"),
    ({"timestamp": "2026-11-23T22:09:39"}, "timestamp"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": (datetime.now(UTC) + timedelta(minutes=6)).isoformat()}, "timestamp"),
    ({"details": "text"}, "details"),
    ({"details": [1]}, "details"),
    ({"agentId": None}, "agentId"),
])
def test_bad_reports_are_400_with_the_field(api, change, field):
    body = assert_error(api.post(url("a1"), {**report("a1"), **change}, format="json"), 400, "invalid")
    assert field in body["errors"], body
    assert not AgentState.objects.exists()


def test_unknown_state_lists_the_allowed_values(api):
    body = assert_error(api.post(url("a1"), report("a1", "sleeping"), format="json"), 400)
    for state in ("initializing", "idle", "active", "error", "finished"):
        assert state in body["detail"]


def test_timestamp_without_microseconds_and_slightly_ahead_is_accepted(api):
    ahead = (datetime.now(UTC) + timedelta(minutes=4)).replace(microsecond=0).isoformat()
    assert api.post(url("a1"), {**report("a1"), "timestamp": ahead}, format="json").status_code == 202


def test_no_trailing_slash_redirect(api):
    response = api.post(url("a1") + "/", report("a1"), format="json")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"


def test_missing_key_is_401_and_bad_key_is_401(anon, db):
    assert_error(anon.post(url("a1"), report("a1"), format="json"), 401, "not_authenticated")
    anon.credentials(HTTP_AUTHORIZATION="Bearer opk_not-a-real-key-at-all")
    assert_error(anon.post(url("a1"), report("a1"), format="json"), 401, "authentication_failed")
    assert not Agent.objects.exists()


def test_agent_bound_key_reports_for_its_agent_only(bound_api):
    assert bound_api.post(url("bound-agent"), report("bound-agent"), format="json").status_code == 202
    body = assert_error(bound_api.post(url("other"), report("other"), format="json"), 403, "permission_denied")
    assert "bound-agent" in body["detail"]
    assert_error(bound_api.get(url("other")), 403)
    assert not Agent.objects.filter(pk="other").exists()


def test_revoked_key_is_401(api, service_key):
    from agents.models import ApiKey
    from agents.services import api_key_revoke

    assert api.post(url("a1"), report("a1"), format="json").status_code == 202  # verified and cached
    api_key_revoke(key=ApiKey.objects.get(name="fleet"))  # in this process: refused at once
    assert_error(api.post(url("a1"), report("a1"), format="json"), 401)


def test_a_key_revoked_by_another_process_is_refused_after_the_cache_bound(service_key, settings):
    """Another process's revocation reaches this one only through the database: within
    OPSCORE_API_KEY_CACHE_SECONDS (README "Auth")."""
    from agents.models import ApiKey
    from agents.services import api_key_authenticate

    settings.OPSCORE_API_KEY_CACHE_SECONDS = 5
    now = datetime.now(UTC)
    assert api_key_authenticate(raw=service_key, now=now) is not None
    ApiKey.objects.filter(name="fleet").update(revoked_at=now)  # what opscore_revoke_api_key does elsewhere
    assert api_key_authenticate(raw=service_key, now=now + timedelta(seconds=4.9)) is not None
    assert api_key_authenticate(raw=service_key, now=now + timedelta(seconds=5)) is None
    assert api_key_authenticate(raw=service_key, now=now + timedelta(seconds=5.1)) is None


def test_without_the_cache_every_request_verifies_its_key(api, settings, django_assert_num_queries):
    from agents.models import ApiKey

    settings.OPSCORE_API_KEY_CACHE_SECONDS = 0
    api.get(url("a1"))  # last_used written
    ApiKey.objects.filter(name="fleet").update(revoked_at=datetime.now(UTC))
    with django_assert_num_queries(1):  # the key lookup: no key, no state read
        assert_error(api.get(url("a1")), 401)


def test_a_cached_agent_bound_key_still_cannot_report_for_another_agent(bound_api, django_assert_num_queries):
    assert bound_api.post(url("bound-agent"), report("bound-agent"), format="json").status_code == 202
    with django_assert_num_queries(0):  # the key comes from the cache, and is refused before any write
        body = assert_error(bound_api.post(url("other"), report("other"), format="json"), 403, "permission_denied")
    assert "bound-agent" in body["detail"]
    assert not Agent.objects.filter(pk="other").exists()


def test_a_revoked_environment_key_stays_revoked(anon, settings, caplog):
    from agents.models import ApiKey
    from agents.services import BOOTSTRAP_KEY_NAME, api_key_revoke

    settings.OPSCORE_API_KEY = "opk_fleet-wide-environment-key-01"
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {settings.OPSCORE_API_KEY}")
    assert anon.post(url("a1"), report("a1"), format="json").status_code == 202  # installed on first use
    api_key_revoke(key=ApiKey.objects.get(name=BOOTSTRAP_KEY_NAME))
    for _ in range(2):
        assert_error(anon.post(url("a1"), report("a1"), format="json"), 401, "authentication_failed")
    assert not ApiKey.objects.filter(revoked_at__isnull=True).exists()
    assert "OPSCORE_API_KEY was revoked: rotate it" in caplog.text


def test_operator_may_read_state_but_not_report(operator_api):
    AgentFactory(id="a1")
    assert operator_api.get(url("a1")).status_code == 200
    assert_error(operator_api.post(url("a1"), report("a1"), format="json"), 403)


def test_bad_json_and_wrong_media_type(api):
    assert_error(api.post(url("a1"), b'{"agentId": ', content_type="application/json"), 400, "parse_error")
    assert_error(api.post(url("a1"), b"agentId=a1", content_type="application/x-www-form-urlencoded"),
                 415, "unsupported_media_type")
    assert_error(api.post(url("a1"), [1, 2], format="json"), 400)
    assert_error(api.post(url("a1"), report("a1", details={"x": "nul\x00"}), format="json"), 400)


def test_body_over_the_limit_is_413(api, settings):
    settings.OPSCORE_MAX_BODY_BYTES = 2048
    body = report("a1", details={"blob": "x" * 4096})
    assert_error(api.post(url("a1"), body, format="json"), 413, "payload_too_large")


def test_state_reports_are_not_throttled_by_default(api, settings):
    """A 429 is a lost report (AGENTKIT.md section 2): the API-wide rate does not apply to them."""
    settings.OPSCORE_THROTTLE_RATE = "2/min"
    for _ in range(4):
        assert api.post(url("a1"), report("a1"), format="json").status_code == 202
    assert api.get(url("a1")).status_code == 200


def test_state_reports_have_their_own_optional_rate(api, settings):
    settings.OPSCORE_STATE_THROTTLE_RATE = "2/min"
    for _ in range(2):
        assert api.post(url("a1"), report("a1"), format="json").status_code == 202
    response = api.post(url("a1"), report("a1"), format="json")
    assert_error(response, 429, "throttled")
    assert "Retry-After" in response


def test_other_endpoints_are_throttled_per_key(api, settings):
    settings.OPSCORE_THROTTLE_RATE = "2/min"
    for _ in range(2):
        assert api.get("/v1/opscore/agents").status_code == 200
    response = api.get("/v1/opscore/agents")
    assert_error(response, 429, "throttled")
    assert "Retry-After" in response


def test_anonymous_clients_are_counted_by_socket_address_not_x_forwarded_for(client, settings):
    settings.OPSCORE_THROTTLE_RATE = "2/min"
    # An address of its own: transactional tests (the fuzz) commit counters for 127.0.0.1.
    statuses = [client.get("/v1/opscore/schema", REMOTE_ADDR="192.0.2.10",
                           HTTP_X_FORWARDED_FOR=f"10.0.0.{n}").status_code for n in range(3)]
    assert statuses == [200, 200, 429]


def test_last_used_is_written_at_most_once_a_minute(api):
    from agents.models import ApiKey

    api.get(url("x"))
    first = ApiKey.objects.get(name="fleet").last_used_at
    assert first is not None
    api.get(url("x"))
    assert ApiKey.objects.get(name="fleet").last_used_at == first


def test_the_common_report_is_one_statement(api, django_assert_num_queries):
    """No task in flight, nothing queued (default configuration, no throttle): one statement,
    the CTE that upserts the agent, inserts the history row and asks the engine's interest
    (a task in flight, or queued work for an idle) at once; autocommit makes it its own
    transaction. The key was verified by the first request and is cached; nothing grows
    with the history."""
    api.post(url("a1"), report("a1", "active"), format="json")  # key verified, last_used written
    for n in range(30):
        api.post(url("a1"), report("a1", "active" if n % 2 else "idle"), format="json")
    with django_assert_num_queries(1) as captured:
        assert api.post(url("a1"), report("a1", "idle"), format="json").status_code == 202
    assert "WITH report AS" in captured.captured_queries[0]["sql"]
    assert AgentState.objects.filter(agent_id="a1").count() == 32


def test_a_state_read_is_one_statement(api, settings, django_assert_num_queries):
    """One prepared statement: the API throttle's upsert (opscore_site/throttle.py) as its CTE,
    and the agent's primary-key read; the key comes from the cache. An unknown agent: the same
    statement, then DRF's 404 (neither counted nor read again). A refused read: the statement,
    then DRF's own count (the upsert, which changes nothing, and the read of Retry-After)."""
    settings.OPSCORE_THROTTLE_RATE = "6000/min"
    api.post(url("a1"), report("a1", "active"), format="json")  # key verified, last_used written
    api.get(url("a1"))
    with django_assert_num_queries(1) as captured:
        assert api.get(url("a1")).json()["state"] == "active"
    assert "opscore_throttle" in captured.captured_queries[0]["sql"]
    assert "agents_agent" in captured.captured_queries[0]["sql"]
    with django_assert_num_queries(1):
        assert_error(api.get(url("nobody")), 404, "not_found")
    settings.OPSCORE_THROTTLE_RATE = "1/min"
    api.post(url("b1"), report("b1", "idle"), format="json")
    with django_assert_num_queries(1):
        assert api.get(url("b1")).status_code == 200  # b1's counter: a bucket of one
    with django_assert_num_queries(3):
        assert_error(api.get(url("b1")), 429, "throttled")
    settings.OPSCORE_THROTTLE_RATE = ""
    with django_assert_num_queries(1) as captured:
        assert api.get(url("a1")).status_code == 200
    assert "opscore_throttle" not in captured.captured_queries[0]["sql"]


def _in_flight(agentkit_stub, monkeypatch) -> str:
    """An agent with a dispatched first step of a two-step session; later jobs stay in the queue."""
    from django_q.conf import Conf

    from sessions import engine
    from sessions.models import Task
    from sessions.services import By
    from tests.workflows.factories import WorkflowDefinitionFactory

    monkeypatch.setattr(Conf, "SYNC", True)
    agent = AgentFactory(id="busy", state="idle")
    engine.session_start(definition=WorkflowDefinitionFactory(), agent=agent, initial_payload=None, by=By.system())
    monkeypatch.setattr(Conf, "SYNC", False)
    assert Task.objects.get(agent=agent).status == Task.Status.DISPATCHED
    return agent.id


def test_a_completing_idle_is_pinned(api, agentkit_stub, monkeypatch, django_assert_num_queries):
    """A task in flight, 10 statements: the CTE (it writes nothing: the engine's interest matched);
    our transaction (a savepoint inside the test's; BEGIN in production); the CTE forced; the
    task and its session FOR UPDATE in one statement (the engine has no savepoint of its own),
    the attempt's outcome, the task -> completed, the next task inserted already queued (its
    sequence from this one), both events in one INSERT, its job enqueued; ours (COMMIT in production)."""
    from sessions.models import Task

    agent_id = _in_flight(agentkit_stub, monkeypatch)
    api.get(url(agent_id))  # key verified and cached
    with django_assert_num_queries(10) as captured:
        assert api.post(url(agent_id), report(agent_id, "idle"), format="json").status_code == 202
    locks = [sql_of(q) for q in captured.captured_queries if "FOR NO KEY UPDATE" in q["sql"]]
    assert len(locks) == 1 and locks[0].endswith('FOR NO KEY UPDATE OF "opscore_sessions_task", "opscore_sessions_session"')
    assert unprepared(captured.captured_queries) == []  # the engine's statements compiled once, the CTE prepared
    assert list(Task.objects.filter(agent_id=agent_id).order_by("sequence").values_list("status", flat=True)) == [
        "completed", "queued"]
    assert AgentState.objects.filter(agent_id=agent_id).count() == 1


def test_an_engaged_agents_next_report_goes_straight_to_its_transaction(api, agentkit_stub, monkeypatch,
                                                                        django_assert_num_queries):
    """After a report that interested the engine (`active` for the task in flight), the agent's `idle`
    skips the asking statement: 9 where the first report of an agent takes 10."""
    from sessions.models import Task

    agent_id = _in_flight(agentkit_stub, monkeypatch)
    api.get(url(agent_id))
    with django_assert_num_queries(7):  # ask, ours, forced CTE, task FOR UPDATE, -> running, its event, ours
        assert api.post(url(agent_id), report(agent_id, "active"), format="json").status_code == 202
    with django_assert_num_queries(9):
        assert api.post(url(agent_id), report(agent_id, "idle"), format="json").status_code == 202
    assert list(Task.objects.filter(agent_id=agent_id).order_by("sequence").values_list("status", flat=True)) == [
        "completed", "queued"]
    assert AgentState.objects.filter(agent_id=agent_id).count() == 2


def test_a_guess_that_was_wrong_costs_one_transaction_and_is_forgotten(api, agentkit_stub, monkeypatch,
                                                                        django_assert_num_queries):
    """The agent's last report interested the engine, this one interests nobody: recorded in its
    transaction (ours, the forced CTE, ours), nothing moved; the next report takes the one statement."""
    from sessions.models import Task

    agent_id = _in_flight(agentkit_stub, monkeypatch)
    api.get(url(agent_id))
    assert api.post(url(agent_id), report(agent_id, "active"), format="json").status_code == 202
    Task.objects.filter(agent_id=agent_id).update(status=Task.Status.COMPLETED)  # nothing in flight now
    with django_assert_num_queries(3):
        assert api.post(url(agent_id), report(agent_id, "active"), format="json").status_code == 202
    with django_assert_num_queries(1):
        assert api.post(url(agent_id), report(agent_id, "active"), format="json").status_code == 202
    assert AgentState.objects.filter(agent_id=agent_id).count() == 3
    assert api.get(url(agent_id)).json()["state"] == "active"


def test_a_receiver_that_fails_rolls_back_its_writes_and_the_report_is_kept(api):
    """A receiver that raises ReceiverFailed: what it wrote is rolled back with the transaction, and
    the report is recorded again on its own (history row and current state)."""
    from agents.signals import ReceiverFailed, agent_state_reported, report_interest_register, \
        report_interest_unregister

    def receiver(**kwargs):
        AgentState.objects.create(agent_id=kwargs["agent_id"], state="error", details={"written": "by receiver"},
                                  timestamp=kwargs["timestamp"], received_at=kwargs["received_at"])
        raise ReceiverFailed

    agent_state_reported.connect(receiver, dispatch_uid="test-failing-receiver")
    report_interest_register("test-failing-receiver", lambda: "report.agent_id = 'watched'")
    try:
        for _ in range(2):  # the second goes straight to its transaction (the agent is engaged)
            assert api.post(url("watched"), report("watched", "active"), format="json").status_code == 202
    finally:
        agent_state_reported.disconnect(dispatch_uid="test-failing-receiver")
        report_interest_unregister("test-failing-receiver")
    assert list(AgentState.objects.filter(agent_id="watched").values_list("state", flat=True)) == ["active", "active"]
    assert api.get(url("watched")).json()["state"] == "active"


def test_an_error_report_in_flight_is_pinned(api, agentkit_stub, monkeypatch, django_assert_num_queries):
    """A task in flight reports error, 11 statements: the CTE (writes nothing), our savepoint,
    the CTE forced; the task FOR UPDATE (passed on to the attempt's failure, not selected
    again), the attempt's outcome, -> failed, -> retry_scheduled, the agent's next queued task
    and then a task waiting for a capability (none: nothing to kick), both events in one
    INSERT; ours."""
    from sessions.models import Task

    agent_id = _in_flight(agentkit_stub, monkeypatch)
    api.get(url(agent_id))
    with django_assert_num_queries(11):
        response = api.post(url(agent_id), report(agent_id, "error", details={"error_code": "E", "message": "m"}),
                            format="json")
    assert response.status_code == 202
    assert Task.objects.get(agent_id=agent_id).status == Task.Status.RETRY_SCHEDULED
    assert AgentState.objects.filter(agent_id=agent_id).count() == 1


def test_a_bad_report_costs_no_query(api, django_assert_num_queries):
    api.get(url("a1"))  # key verified and cached
    with django_assert_num_queries(0):
        assert_error(api.post(url("a1"), report("a1", "sleeping"), format="json"), 400, "invalid")


def test_receivers_see_the_reports_their_interest_matches(api):
    from agents.signals import agent_state_reported, report_interest_register, report_interest_unregister

    seen = []

    def receiver(**kwargs):
        seen.append((kwargs["agent_id"], kwargs["state"]))

    agent_state_reported.connect(receiver, dispatch_uid="test-receiver")
    report_interest_register("test-receiver", lambda: "report.agent_id = 'watched' OR report.state = 'error'")
    try:
        for agent_id, state in [("a1", "idle"), ("watched", "active"), ("a1", "error")]:
            assert api.post(url(agent_id), report(agent_id, state), format="json").status_code == 202
    finally:
        report_interest_unregister("test-receiver")
        agent_state_reported.disconnect(dispatch_uid="test-receiver")
    assert seen == [("watched", "active"), ("a1", "error")]
    # Every report is recorded once, interesting or not.
    assert AgentState.objects.count() == 3 and Agent.objects.get(pk="watched").state == "active"


# --------------------------------------------------------------------------- the lean path


def _through_drf(settings) -> None:
    """A state-report rate sends every report through DRF (the lean path steps aside)."""
    settings.OPSCORE_STATE_THROTTLE_RATE = "1000000/min"


def _comparable(response) -> tuple:
    headers = {k: v for k, v in response.headers.items() if k not in ("X-Request-ID",)}
    return response.status_code, response.content, headers


def test_the_lean_path_answers_byte_for_byte_like_drf(api, settings):
    at = datetime(2026, 11, 23, 22, 9, 39, 929454, tzinfo=UTC)
    lean = api.post(url("a1"), report("a1", "idle", at=at, details={}), format="json")
    _through_drf(settings)
    full = api.post(url("a1"), report("a1", "idle", at=at, details={}), format="json")
    assert _comparable(lean) == _comparable(full)
    assert lean.content == b'{"status":"success","message":"State \'idle\' recorded for agent \'a1\'."}'


def test_the_lean_path_records_without_drf(api, monkeypatch):
    from agents.api.state_views import AgentStateView

    def drf_post(*args, **kwargs):
        raise AssertionError("the common report went through DRF")

    monkeypatch.setattr(AgentStateView, "post", drf_post)
    assert api.post(url("a1"), report("a1", "active", details={"n": 1}), format="json").status_code == 202
    agent = Agent.objects.get(pk="a1")
    assert (agent.state, agent.state_details) == ("active", {"n": 1})


def _read_through_drf(monkeypatch) -> None:
    from agents.api.state_views import AgentStateView

    monkeypatch.setattr(AgentStateView, "_lean_get", lambda self, request, agent_id: None)


def test_the_lean_read_answers_byte_for_byte_like_drf(api, monkeypatch):
    at = datetime(2026, 11, 23, 22, 9, 39, 929454, tzinfo=UTC)
    api.post(url("a1"), report("a1", "error", at=at, details={"error_code": "E1", "message": "bööm"}),
             format="json")
    api.post(url("a2"), report("a2", "idle"), format="json")
    lean, lean_other = api.get(url("a1")), api.get(url("a2"))  # one serializer renders both
    _read_through_drf(monkeypatch)
    full, full_other = api.get(url("a1")), api.get(url("a2"))
    assert _comparable(lean) == _comparable(full)
    assert _comparable(lean_other) == _comparable(full_other)
    assert lean_other.json()["agentId"] == "a2" and lean_other.json()["state"] == "idle"
    assert lean.content == ('{"agentId":"a1","state":"error","details":{"message":"bööm","error_code":"E1"},'
                            '"timestamp":"2026-11-23T22:09:39.929454Z"}').encode()  # details in jsonb's key order


def test_the_lean_read_skips_drf_and_refuses_nothing_itself(api, bound_api, operator_api, monkeypatch):
    from agents.api.state_views import AgentStateView

    api.post(url("a1"), report("a1", "idle"), format="json")
    drf_get = AgentStateView.get

    def no_drf(*args, **kwargs):
        raise AssertionError("a key's read of a known agent went through DRF")

    monkeypatch.setattr(AgentStateView, "get", no_drf)
    assert api.get(url("a1")).json()["state"] == "idle"
    monkeypatch.setattr(AgentStateView, "get", drf_get)
    assert_error(api.get(url("nobody")), 404, "not_found")  # DRF's answers, as before
    assert_error(bound_api.get(url("a1")), 403, "permission_denied")
    assert_error(APIClient().get(url("a1"), HTTP_AUTHORIZATION="Bearer opk_nope"), 401)
    assert operator_api.get(url("a1")).json()["state"] == "idle"


@pytest.mark.parametrize("lean", [True, False])
def test_a_read_is_throttled_the_same_lean_or_not_and_counted_once(api, settings, monkeypatch, lean):
    settings.OPSCORE_THROTTLE_RATE = "3/min"
    if not lean:
        _read_through_drf(monkeypatch)
    api.post(url("a1"), report("a1", "idle"), format="json")
    assert [api.get(url("a1")).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert [api.get(url("nobody")).status_code for _ in range(4)] == [404, 404, 404, 429]  # a 404 counts once
    refused = api.get(url("a1"))
    assert_error(refused, 429, "throttled")
    assert 0 < int(refused["Retry-After"]) <= 20  # 3/min: one more every 20 s


EDGE_BODIES = [
    {"agentId": 7, "timestamp": "2026-11-23T22:09:39+00:00", "state": "idle"},
    {"agentId": "a1", "timestamp": "  2026-11-23T22:09:39Z  ", "state": "idle"},
    {"agentId": "a1", "timestamp": "2026-11-23T22:09:39+02:00", "state": "idle", "details": None, "extra": 1},
    {"agentId": "a1", "timestamp": "2026-11-23T22:09:39+00:00", "state": "IDLE"},
    {"agentId": "a1", "timestamp": "2026-11-23T22:09:39+00:00", "state": ["idle"]},
    {"agentId": "a1", "timestamp": "2026-11-23T22:09:39+00:00", "state": "idle", "details": [1]},
    {"agentId": "a1", "timestamp": "2026-11-23T22:09:39+00:00", "state": "idle", "details": "x"},
    {"agentId": "a1", "timestamp": 1795471675, "state": "idle"},
    {"agentId": "a1", "timestamp": "", "state": "idle"},
    {"agentId": "a1", "timestamp": "   ", "state": "idle"},
    {"agentId": "a1", "timestamp": " " * 40 + "2026-11-23T22:09:39+00:00" + " " * 40, "state": "idle"},
    {"agentId": "a1 ", "timestamp": "2026-11-23T22:09:39+00:00", "state": "idle"},
    {"agentId": "a1", "state": "idle"},
    {"agentId": "a1", "timestamp": "2099-01-01T00:00:00+00:00", "state": "idle"},
    {"agentId": "a1", "timestamp": "9999-12-31T23:59:59-12:00", "state": "idle"},
    {"timestamp": "2026-11-23T22:09:39+00:00", "state": "idle"},
    [],
    "idle",
    None,
]


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_the_lean_path_accepts_and_refuses_exactly_what_drf_does(api, settings, body):
    lean = api.post(url("a1"), body, format="json")
    lean_rows = AgentState.objects.count()
    _through_drf(settings)
    full = api.post(url("a1"), body, format="json")
    server_time = re.compile(r"server time [^)]*")  # the one part that differs between two requests
    assert (lean.status_code, server_time.sub("", lean.content.decode())) == (
        full.status_code, server_time.sub("", full.content.decode()))
    assert AgentState.objects.count() == (2 * lean_rows if lean.status_code == 202 else 0)


@pytest.mark.parametrize("headers", [
    {"HTTP_AUTHORIZATION": "Bearer"}, {"HTTP_AUTHORIZATION": "Bearer  two  spaces"},
    {"HTTP_AUTHORIZATION": "Basic abc"}, {"HTTP_AUTHORIZATION": "Bearer opk_café-not-ascii-key"}, {},
])
def test_odd_credentials_get_drfs_answers(anon, headers):
    anon.credentials(**headers)
    response = anon.post(url("a1"), report("a1"), format="json")
    assert response.status_code in (401, 403)
    assert_error(response, response.status_code)
    assert not AgentState.objects.exists()


def test_the_portable_path_keeps_the_report_as_received(db):
    """SQLite's three statements (run here on PostgreSQL, the SQL is portable): the history row holds
    the details and times as reported, not their database-prepared forms; a failing receiver's
    report is recorded again."""
    from django.utils import timezone

    from agents import services
    from agents.signals import ReceiverFailed, agent_state_reported, report_interest_register, \
        report_interest_unregister

    def receiver(**kwargs):
        raise ReceiverFailed

    at = timezone.now()
    params = {"agent_id": "p1", "capabilities": services._prep("capabilities", []),
              "metadata": services._prep("metadata", {}), "received_at": services._prep("state_received_at", at),
              "state": "active", "timestamp": services._prep("state_timestamp", at),
              "details": services._prep("state_details", {"b": 2})}
    report_ = {"agent_id": "p1", "state": "active", "details": {"b": 2}, "timestamp": at, "received_at": at}
    agent_state_reported.connect(receiver, dispatch_uid="test-portable")
    report_interest_register("test-portable", lambda: "TRUE")
    try:
        with pytest.raises(ReceiverFailed):
            services._record_portable(params, report_, with_receivers=True)
        matched, history = services._record_portable(params, report_, with_receivers=False)
    finally:
        agent_state_reported.disconnect(dispatch_uid="test-portable")
        report_interest_unregister("test-portable")
    assert matched
    assert list(AgentState.objects.filter(agent_id="p1").values_list("details", "received_at")) == [({"b": 2}, at)]
    assert Agent.objects.get(pk="p1").state_details == {"b": 2}
