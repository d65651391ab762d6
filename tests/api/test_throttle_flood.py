"""A flood from one key (OPSCORE_THROTTLE_RATE): that key gets 429s, every other key is served as usual."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from agents.services import api_key_create
from tests.api.conftest import assert_error

pytestmark = pytest.mark.django_db

V1 = "/v1/opscore"


def client_with_new_key(name: str, agent_id: str = "") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name=name, agent_id=agent_id)[1]}")
    return client


def test_a_flooding_key_gets_429s_while_another_key_is_served(settings):
    settings.OPSCORE_THROTTLE_RATE = "5/min"
    flooder, other = client_with_new_key("flooder"), client_with_new_key("other")
    statuses = [flooder.get(f"{V1}/agents").status_code for _ in range(40)]
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
    refused = flooder.get(f"{V1}/sessions")  # the key's one counter covers every non-agent endpoint
    assert_error(refused, 429, "throttled")
    assert 0 < int(refused["Retry-After"]) <= 60
    # The other key has its own counter: all of its quota, on the same endpoints, during the flood.
    assert [other.get(f"{V1}/{path}").status_code for path in ("agents", "sessions", "tasks", "workflows", "agents")] \
        == [200] * 5
    assert other.get(f"{V1}/agents").status_code == 429  # and then it is held to the same rate
    assert flooder.get(f"{V1}/agents").status_code == 429


def test_a_key_flooding_one_agent_endpoint_leaves_other_keys_for_that_agent_alone(settings):
    settings.OPSCORE_THROTTLE_RATE = "3/min"
    flooder, bound = client_with_new_key("flooder"), client_with_new_key("bound", agent_id="a1")
    statuses = [flooder.get(f"{V1}/agent/a1/state").status_code for _ in range(20)]
    assert statuses[:3] == [404] * 3 and set(statuses[3:]) == {429}  # a1 has not reported yet: 404
    assert [bound.get(f"{V1}/agent/a1/state").status_code for _ in range(3)] == [404] * 3
