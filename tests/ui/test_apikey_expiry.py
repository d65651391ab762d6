"""The keys page shows each key's expiry and last use, and creates keys that expire."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import ApiKey
from agents.services import api_key_create

pytestmark = pytest.mark.django_db


def test_the_keys_page_shows_expiry_and_last_use_and_creates_expiring_keys(staff_client):
    api_key_create(name="forever")
    expired, _ = api_key_create(name="old", expires_at=timezone.now() + timedelta(hours=1))
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    page = staff_client.get(reverse("agents:apikey-list")).content.decode()
    assert "<th>Expires</th>" in page and "<th>Last used</th>" in page
    assert 'badge failed">expired' in page and "never" in page
    response = staff_client.post(reverse("agents:apikey-create"), {"name": "temp", "expires": "12h"})
    assert response.status_code == 200
    assert timedelta(hours=11) < ApiKey.objects.get(name="temp").expires_at - timezone.now() <= timedelta(hours=12)
    response = staff_client.post(reverse("agents:apikey-create"), {"name": "bad", "expires": "-1d"})
    assert response.status_code == 400 and b"is not a duration" in response.content
    assert not ApiKey.objects.filter(name="bad").exists()
