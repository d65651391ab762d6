"""opscore_sync_agents (against a real local HTTP server) and the API key commands."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from agents.models import Agent, ApiKey
from agents.services import api_key_create, api_key_lookup
from tests.agents.factories import AgentFactory

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


class FakeAgentKit:
    """A real HTTP server on a free port answering GET /v1/agents with a set status and body."""

    def __init__(self) -> None:
        self.status, self.body, self.paths = 404, {"detail": "Not Found"}, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                payload = json.dumps(owner.body).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agentkit_server(settings):
    server = FakeAgentKit()
    settings.AGENTKIT_API_URL = server.url
    yield server
    server.close()


def listing():
    return {"status": "success", "data": [
        {"agentId": "a-1", "agentName": "Alpha", "version": "2.0.0", "capabilities": ["x", "y"],
         "contactEndpoint": "http://alpha:9000/", "metadata": {"zone": "eu"}},
        {"agentId": "a-2", "agentName": "Beta", "version": "1.0.0", "capabilities": [], "metadata": {}},
        {"agentName": "no id"},
    ]}


def test_sync_against_todays_agentkit_says_there_is_no_listing_and_exits_cleanly(agentkit_server):
    out, _ = run("opscore_sync_agents")
    assert "this AgentKit has no agent listing" in out
    assert "state reports and the registration webhook" in out
    assert agentkit_server.paths == ["/v1/agents"]
    assert not Agent.objects.exists()


def test_sync_upserts_identity_from_a_listing_and_keeps_the_state(agentkit_server):
    AgentFactory(id="a-2", name="old name", state=Agent.State.ACTIVE, capabilities=[])
    agentkit_server.status, agentkit_server.body = 200, listing()
    out, err = run("opscore_sync_agents")
    assert "a-1: created" in out and "a-2: updated" in out
    assert "3 agent(s) listed: 1 created, 1 updated, 0 unchanged, 1 skipped" in out
    assert "skipped an entry without an agent id" in err
    alpha = Agent.objects.get(pk="a-1")
    assert (alpha.name, alpha.version, alpha.capabilities, alpha.contact_endpoint, alpha.metadata) == (
        "Alpha", "2.0.0", ["x", "y"], "http://alpha:9000/", {"zone": "eu"})
    assert alpha.state is None and alpha.registered_at is not None
    beta = Agent.objects.get(pk="a-2")
    assert beta.name == "Beta" and beta.state == Agent.State.ACTIVE

    again, _ = run("opscore_sync_agents")
    assert "0 created, 0 updated, 2 unchanged, 1 skipped" in again


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_sync_skips_entries_the_webhook_would_refuse_with_the_reason(agentkit_server):
    """Overlong fields and NUL were a DataError traceback that lost the whole sync; nan became null."""
    agentkit_server.status, agentkit_server.body = 200, [
        {"agentId": "ok", "agentName": "fine"},
        {"agentId": "long-version", "version": "v" * 65},
        {"agentId": "far", "contactEndpoint": "http://x/" + "e" * 2048},
        {"agentId": "nan", "metadata": {"load": float("nan")}},
        {"agentId": "nul", "agentName": "a\u0000b"},
        {"agentId": "deep", "metadata": {"m": nested(70)}},
        {"agentId": "script", "contactEndpoint": "javascript:alert(3)"},
    ]
    out, err = run("opscore_sync_agents")
    assert "7 agent(s) listed: 1 created, 0 updated, 0 unchanged, 6 skipped" in out
    assert "skipped agent 'long-version': version: String should have at most 64 characters" in err
    assert "skipped agent 'far': contactEndpoint: String should have at most 2048 characters" in err
    assert "skipped agent 'nan': numbers must be finite" in err
    assert "skipped agent 'nul': text may not contain NUL" in err
    assert "skipped agent 'deep': nested more than 64 levels deep" in err
    assert "skipped agent 'script': contactEndpoint: must be an http:// or https:// URL" in err
    assert list(Agent.objects.values_list("pk", flat=True)) == ["ok"]


def test_sync_dry_run_writes_nothing(agentkit_server):
    agentkit_server.status, agentkit_server.body = 200, listing()
    out, _ = run("opscore_sync_agents", "--dry-run")
    assert "dry run, nothing written: would be 2 created" in out
    assert not Agent.objects.exists()


def test_sync_reports_an_unreachable_or_failing_agentkit(agentkit_server, settings):
    agentkit_server.status, agentkit_server.body = 500, {"detail": "boom"}
    with pytest.raises(CommandError, match="cannot read AgentKit's agent listing: AgentKit answered 500: boom"):
        run("opscore_sync_agents")
    settings.AGENTKIT_API_URL = "http://127.0.0.1:9"  # discard port: connection refused
    with pytest.raises(CommandError, match="AgentKit unreachable"):
        run("opscore_sync_agents")
    settings.AGENTKIT_API_URL = ""
    with pytest.raises(CommandError, match="AGENTKIT_API_URL is not configured"):
        run("opscore_sync_agents")


def test_create_api_key_prints_a_working_key_once():
    out, err = run("opscore_create_api_key", "--name", "ci runner", "--agent", "a-1")
    raw = out.splitlines()[1]
    key = api_key_lookup(raw)
    assert key is not None and key.name == "ci runner" and key.kind == ApiKey.Kind.AGENT and key.agent_id == "a-1"
    assert f"prefix {key.prefix}" in out and "only time the key is shown" in err
    assert key.key_hash == ApiKey.hash_secret(raw) and raw not in key.key_hash  # stored hashed only


def test_create_api_key_dry_run_checks_the_input_and_creates_nothing():
    out, err = run("opscore_create_api_key", "--name", " ci runner ", "--agent", "a-1", "--dry-run")
    assert out == "dry run, nothing created: would create API key 'ci runner' (agent a-1)\n" and err == ""
    assert "would create API key 'fleet' (service (any agent))" in run("opscore_create_api_key", "--name", "fleet",
                                                                       "--dry-run")[0]
    assert not ApiKey.objects.exists()
    with pytest.raises(CommandError, match="--name: an API key needs a name"):
        run("opscore_create_api_key", "--name", "", "--dry-run")


def test_create_api_key_refuses_a_blank_name():
    with pytest.raises(CommandError, match="--name: an API key needs a name"):
        run("opscore_create_api_key", "--name", "  ")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("args, message", [
    (["--agent", ""], "--agent is blank; leave the option out to create a service key"),
    (["--agent", "   "], "--agent is blank"),
    (["--agent", "rack/7"], "--agent: an agent id may not contain '/'"),
    (["--agent", "a" * 256], "--agent: an agent id has at most 255 characters"),
    (["--name", "n" * 201], "--name: Ensure this value has at most 200 characters"),
])
def test_create_api_key_refuses_an_agent_id_or_name_no_key_could_use(args, message):
    # A blank --agent (an unset $AGENT_ID) used to make a service key valid for every agent.
    argv = ["--name", "ci runner", *args] if args[0] == "--agent" else args
    for dry_run in ([], ["--dry-run"]):
        with pytest.raises(CommandError, match=re.escape(message)):
            run("opscore_create_api_key", *argv, *dry_run)
    assert not ApiKey.objects.exists()


def test_revoke_by_prefix_with_a_dry_run_first():
    key, raw = api_key_create(name="old")
    out, _ = run("opscore_revoke_api_key", key.prefix, "--dry-run")
    assert f"dry run: would revoke API key #{key.pk} 'old'" in out
    key.refresh_from_db()
    assert key.revoked_at is None

    out, _ = run("opscore_revoke_api_key", raw)  # the whole key works too: its prefix is used
    assert f"revoked API key #{key.pk}" in out
    key.refresh_from_db()
    assert key.revoked_at is not None and api_key_lookup(raw) is None

    again, _ = run("opscore_revoke_api_key", str(key.pk))
    assert "was already revoked" in again


def test_revoke_refuses_unknown_or_malformed_keys():
    with pytest.raises(CommandError, match="no API key with id or prefix '999'"):
        run("opscore_revoke_api_key", "999")
    with pytest.raises(CommandError, match="neither a key id nor a prefix"):
        run("opscore_revoke_api_key", "opk_")


def test_sync_skips_agent_ids_no_url_can_carry(agentkit_server):
    """An id with '/' could never be dispatched to, and broke the operator's agent list (NoReverseMatch: a 500)."""
    agentkit_server.status = 200
    agentkit_server.body = {"data": [{"agentId": "rack/7"}, {"agentId": "x" * 256}, {"agentId": "ok-1"}]}
    out, err = run("opscore_sync_agents")
    assert "3 agent(s) listed: 1 created, 0 updated, 0 unchanged, 2 skipped" in out
    assert err.count("skipped an entry without an agent id Ops-Core can use") == 2
    assert list(Agent.objects.values_list("pk", flat=True)) == ["ok-1"]
