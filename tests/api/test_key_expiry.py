"""API keys with an expiry: refused with a clear 401 once past it, on every endpoint and from the
key cache too; shown on the keys page; set by the command, the page and the admin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import ApiKey
from agents.services import ApiKeyExpired, api_key_authenticate, api_key_create
from tests.api.conftest import assert_error

pytestmark = pytest.mark.django_db


def client_for(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def state(agent_id: str = "a1") -> dict:
    return {"agentId": agent_id, "timestamp": datetime.now(UTC).isoformat(), "state": "idle", "details": {}}


def test_a_key_past_its_expiry_is_a_401_that_says_it_expired(settings):
    settings.OPSCORE_API_KEY_CACHE_SECONDS = 0  # the expiry is moved in the database below (cached: next test)
    key, raw = api_key_create(name="short-lived", expires_at=timezone.now() + timedelta(hours=1))
    api = client_for(raw)
    assert api.post("/v1/opscore/agent/a1/state", state(), format="json").status_code == 202
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    for response in (api.post("/v1/opscore/agent/a1/state", state(), format="json"),  # the lean path
                     api.get("/v1/opscore/agent/a1/state"), api.get("/v1/opscore/sessions")):
        body = assert_error(response, 401, "key_expired")
        assert "API key 'short-lived'" in body["detail"] and "expired at" in body["detail"]


def test_the_cache_does_not_outlive_the_expiry(settings):
    settings.OPSCORE_API_KEY_CACHE_SECONDS = 60
    now = timezone.now()
    key, raw = api_key_create(name="k", expires_at=now + timedelta(seconds=30))
    assert api_key_authenticate(raw=raw, now=now) == key  # verified and cached for a minute
    assert api_key_authenticate(raw=raw, now=now + timedelta(seconds=29)) == key
    with pytest.raises(ApiKeyExpired):
        api_key_authenticate(raw=raw, now=now + timedelta(seconds=30))


def test_an_expiry_in_the_past_is_refused_when_creating():
    with pytest.raises(Exception) as caught:
        api_key_create(name="k", expires_at=timezone.now() - timedelta(minutes=1))
    assert "the expiry must be in the future" in str(caught.value)
    assert not ApiKey.objects.filter(name="k").exists()


def test_the_command_sets_the_expiry_and_refuses_a_bad_duration(capsys):
    call_command("opscore_create_api_key", "--name", "ci", "--expires", "30d")
    key = ApiKey.objects.get(name="ci")
    assert timedelta(days=29, hours=23) < key.expires_at - timezone.now() <= timedelta(days=30)
    assert "expires " in capsys.readouterr().out
    with pytest.raises(CommandError, match="--expires: 'soon' is not a duration"):
        call_command("opscore_create_api_key", "--name", "ci2", "--expires", "soon")
