"""Settings from the environment, health probes, request ids, start-up checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPSCORE_", "AGENTKIT_", "DJANGO_"))}
    base.pop("SECRET_KEY", None)
    base.pop("DEBUG", None)
    base.pop("SECURE_SSL_REDIRECT", None)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "opscore_site.settings",
    "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/opscore"),
    "SECRET_KEY": "a-long-random-production-secret-key-with-enough-entropy-0123456789-abcdefghij",
    "OPSCORE_WEBHOOK_SECRET": "webhook-secret",
    "ALLOWED_HOSTS": "opscore.example.com",
    "AGENTKIT_API_URL": "http://agentkit.internal:8000",
}


def test_production_without_secret_key_stops_with_a_clear_message():
    env = {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"}
    result = run_manage("check", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("ImproperlyConfigured: SECRET_KEY is not set")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_production_without_webhook_secret_stops_with_a_clear_message():
    env = {k: v for k, v in PRODUCTION.items() if k != "OPSCORE_WEBHOOK_SECRET"}
    result = run_manage("check", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("ImproperlyConfigured: OPSCORE_WEBHOOK_SECRET is not set")
    assert "Traceback" not in result.stderr


def test_commands_that_only_read_the_code_run_without_the_secrets():
    # CI and image builds run `makemigrations --check` / `collectstatic` with no secrets set.
    env = {k: v for k, v in PRODUCTION.items() if k not in ("SECRET_KEY", "OPSCORE_WEBHOOK_SECRET")}
    result = run_manage("makemigrations", "--check", "--dry-run", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout
    # Anything that serves, signs or touches data still needs them.
    result = run_manage("migrate", "--plan", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("ImproperlyConfigured: SECRET_KEY is not set")


def test_a_mistyped_variable_is_named():
    result = run_manage("check", env={**PRODUCTION, "Q_WORKERS": "many"})
    assert result.returncode == 1
    assert "Q_WORKERS: Input should be a valid integer" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name, value", [
    ("AGENTKIT_API_URL", "agentkit:8000"),  # no scheme
    ("AGENTKIT_API_URL", "http://[::1"),
    ("AGENTKIT_API_URL", "ftp://agentkit"),
    ("AGENTKIT_API_KEY", "clé-secrète"),
])
def test_an_agentkit_setting_that_could_never_work_stops_start_up(name, value):
    result = run_manage("check", env={**PRODUCTION, name: value})
    assert result.returncode != 0
    assert f"{name}: Value error, " in result.stderr


def test_a_lease_shorter_than_the_job_timeout_is_refused():
    result = run_manage("check", env={**PRODUCTION, "Q_TIMEOUT": "100", "Q_RETRY": "120"})
    assert result.returncode != 0
    assert "Q_RETRY (120s) must exceed" in result.stderr


def test_check_deploy_passes_with_production_settings():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_queue_settings_keep_the_lease_above_the_timeout(settings):
    import math

    q = settings.Q_CLUSTER
    assert q["retry"] > q["timeout"] * (1 + math.ceil((q["queue_limit"] + q["bulk"]) / q["workers"]))
    assert q["orm"] == "default" and q["max_attempts"] and q["save_limit"] == 0 and q["catch_up"] is False
    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True
    assert "pool" not in settings.DATABASES["default"].get("OPTIONS", {})


def test_health_and_ready(client, db):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ok", "database": "ok"}


def test_every_response_carries_a_request_id(client, db):
    response = client.get("/health", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    generated = client.get("/health", HTTP_X_REQUEST_ID="bad id with spaces")["X-Request-ID"]
    assert generated != "bad id with spaces" and len(generated) == 32


def test_log_lines_are_json_with_the_request_id():
    import io
    import json
    import logging

    from opscore_site.middleware import _request_id

    handler = logging.getLogger().handlers[0]
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    token = _request_id.set("req-42")
    try:
        logging.getLogger("opscore.test").warning("hello %s", "world")
    finally:
        _request_id.reset(token)
        handler.setStream(previous)
    record = json.loads(buffer.getvalue().strip().splitlines()[-1])
    assert record["message"] == "hello world" and record["request_id"] == "req-42" and record["level"] == "WARNING"


def test_production_redirects_operator_pages_to_https_but_not_the_api(db, settings):
    """AgentKit and its SDK follow no redirects: a 301 on an in-cluster http:// URL is a lost report."""
    from rest_framework.test import APIClient

    from agents.services import api_key_create

    assert not settings.DEBUG  # the production block of settings.py, with its SECURE_REDIRECT_EXEMPT
    settings.SECURE_SSL_REDIRECT = True
    _, raw = api_key_create(name="fleet")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    body = {"agentId": "x", "timestamp": "2026-11-23T22:09:39+00:00", "state": "idle", "details": {}}
    assert client.post("/v1/opscore/agent/x/state", body, format="json").status_code == 202
    assert client.post("/v1/opscore/internal/agent/notify", b"{}", content_type="application/json").status_code == 401
    page = client.get("/")
    assert page.status_code == 301 and page["Location"].startswith("https://")
    assert client.get("/health").status_code == 200


def test_the_api_builds_no_flash_message_storage(client, db, monkeypatch):
    from django.contrib.messages.storage.fallback import FallbackStorage

    built = []
    original = FallbackStorage.__init__

    def spy(self, request, *args, **kwargs):
        built.append(request.path)
        original(self, request, *args, **kwargs)

    monkeypatch.setattr(FallbackStorage, "__init__", spy)
    client.get("/v1/opscore/agent/a1/state")
    client.get("/accounts/login/")
    assert built == ["/accounts/login/"]
