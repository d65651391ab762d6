"""Login throttling (django-axes): the operator login and the admin login lock out an account
at one address after OPSCORE_LOGIN_FAILURE_LIMIT failures; nothing else is locked."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import Client
from rest_framework.test import APIClient

from agents.services import api_key_create

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"  # tests/conftest.py `operator`
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


def attempt(path: str, username: str, password: str, address: str = "10.0.0.1"):
    return Client(REMOTE_ADDR=address).post(path, {"username": username, "password": password})


def fail(times: int, path: str = LOGIN, username: str = "alice", address: str = "10.0.0.1") -> list:
    return [attempt(path, username, "wrong", address) for _ in range(times)]


@pytest.fixture
def limit(settings) -> int:
    return settings.AXES_FAILURE_LIMIT


def assert_locked_out(response, username: str = "alice") -> None:
    assert response.status_code == 429, (response.status_code, response.content[:300])
    text = response.content.decode()
    assert "Too many failed logins" in text
    assert f"as “{username}” from your address" in text
    assert "locked for 15 minutes" in text


@pytest.mark.parametrize("path", [LOGIN, ADMIN_LOGIN])
def test_the_nth_failure_locks_the_account_at_that_address_with_a_message(operator, limit, path):
    answers = fail(limit, path)
    assert [r.status_code for r in answers[:-1]] == [200] * (limit - 1)
    assert_locked_out(answers[-1])
    # Now even the right password is refused, on both login pages.
    assert_locked_out(attempt(LOGIN, "alice", PASSWORD))
    assert_locked_out(attempt(ADMIN_LOGIN, "alice", PASSWORD))
    assert AccessAttempt.objects.get().failures_since_start >= limit


def test_failures_before_the_limit_show_the_usual_form_error(operator, limit):
    response = fail(limit - 1)[-1]
    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content
    assert attempt(LOGIN, "alice", PASSWORD).status_code == 302


def test_other_accounts_and_other_addresses_are_not_locked(operator, limit, django_user_model):
    django_user_model.objects.create_user("bob", password=PASSWORD, is_staff=True)
    fail(limit)
    assert_locked_out(attempt(LOGIN, "alice", PASSWORD))
    assert attempt(LOGIN, "bob", PASSWORD).status_code == 302  # same address, another account
    assert attempt(LOGIN, "alice", PASSWORD, address="10.0.0.2").status_code == 302  # same account elsewhere


def test_a_success_before_the_limit_starts_the_count_again(operator, limit):
    fail(limit - 1)
    assert attempt(LOGIN, "alice", PASSWORD).status_code == 302
    answers = fail(limit - 1)
    assert {r.status_code for r in answers} == {200}
    assert attempt(LOGIN, "alice", PASSWORD).status_code == 302


def test_the_lockout_ends_after_the_cool_off(operator, limit, settings):
    fail(limit)
    assert_locked_out(attempt(LOGIN, "alice", PASSWORD))
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))
    assert attempt(LOGIN, "alice", PASSWORD).status_code == 302


def test_the_address_is_the_one_the_api_throttles_use(operator, limit, settings):
    """X-Forwarded-For is spoofable: it counts only as far as OPSCORE_NUM_PROXIES trusts it."""
    for n in range(limit):
        Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}").post(
            LOGIN, {"username": "alice", "password": "wrong"})
    assert_locked_out(attempt(LOGIN, "alice", PASSWORD))
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"10.0.0.1"}


def test_behind_a_trusted_proxy_the_forwarded_address_counts(operator, limit, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    for _ in range(limit):
        Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.7").post(
            LOGIN, {"username": "alice", "password": "wrong"})
    proxied = Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.7")
    assert_locked_out(proxied.post(LOGIN, {"username": "alice", "password": PASSWORD}))
    other = Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.8")
    assert other.post(LOGIN, {"username": "alice", "password": PASSWORD}).status_code == 302


def test_api_keys_are_neither_counted_nor_locked_out(operator, limit):
    fail(limit)
    _, raw = api_key_create(name="fleet")
    api = APIClient(REMOTE_ADDR="10.0.0.1")
    for _ in range(limit + 2):
        api.credentials(HTTP_AUTHORIZATION="Bearer not-a-key")
        assert api.get("/v1/opscore/agents").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/v1/opscore/agents").status_code == 200
    assert AccessAttempt.objects.count() == 1  # alice's login failures only
