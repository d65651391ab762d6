"""Personas and fixtures for the operator UI tests."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from ui.permissions import READ_ONLY_GROUP


@pytest.fixture
def staff_operator(db) -> User:
    """A staff user without superuser rights: may act in the operator UI."""
    return User.objects.create_user("bob", "bob@example.com", "correct-horse-battery", is_staff=True)


@pytest.fixture
def read_only(db) -> User:
    """A member of the read-only group (not staff): sees everything, changes nothing."""
    user = User.objects.create_user("carol", "carol@example.com", "correct-horse-battery")
    # get_or_create: a transactional test's flush removes the migration's row under --reuse-db.
    user.groups.add(Group.objects.get_or_create(name=READ_ONLY_GROUP)[0])
    return user


@pytest.fixture
def outsider(db) -> User:
    """A logged-in user who is neither staff nor read-only operator."""
    return User.objects.create_user("dave", "dave@example.com", "correct-horse-battery")


@pytest.fixture
def staff_client(client, staff_operator):
    client.force_login(staff_operator)
    return client


@pytest.fixture
def read_only_client(client, read_only):
    client.force_login(read_only)
    return client
