"""Personas and fixtures for the operator UI tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class FakeAgentKit:
    """A real HTTP server standing in for AgentKit's /v1/agents/{id}/run: answers `status`."""

    def __init__(self) -> None:
        self.status = 202
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                fake.requests.append(self.path)
                body = b'{"status":"scheduled"}' if fake.status < 300 else b'{"detail":"no such agent"}'
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_agentkit(settings):
    """AgentKit on a local port (settings.AGENTKIT_API_URL points at it); set `.status` to 404 to fail tasks."""
    fake = FakeAgentKit()
    settings.AGENTKIT_API_URL = fake.url
    yield fake
    fake.close()
