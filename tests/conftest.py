"""Shared fixtures: personas and the django-q2 sync switch."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User


@pytest.fixture(autouse=True)
def _fresh_per_process_caches():
    """Each test verifies its keys afresh and starts with no guess about which agents' reports interest
    the engine: both per-process caches outlive a test's rolled-back rows."""
    from agents.services import api_key_cache_clear, report_hints_clear

    api_key_cache_clear()
    report_hints_clear()
    yield
    api_key_cache_clear()
    report_hints_clear()


@pytest.fixture
def operator(db) -> User:
    """A staff user with every permission (an on-call operator)."""
    return User.objects.create_user("alice", "alice@example.com", "correct-horse-battery", is_staff=True,
                                    is_superuser=True)


@pytest.fixture
def q_sync(monkeypatch):
    """Run django-q2 jobs inline. django-q2 reads its config at import, so patch Conf, not settings."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)
    return Conf
