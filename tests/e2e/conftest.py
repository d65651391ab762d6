"""The `stack` fixture of the e2e tests: the whole product as subprocesses on the test database.

At teardown it asks the web server for a few error answers to requests that carry the secrets,
then scans those answers and every log of the stack (web, clusters, schedulers, stand-in) for the
API key, the webhook secret, SECRET_KEY and any password a test put in `stack.secrets`: a test
whose run wrote one of them anywhere fails.
"""

from __future__ import annotations

import httpx
import pytest
from django.conf import settings
from django.db import connection

from tests.e2e.harness import API_KEY, WEBHOOK_SECRET, Stack, secrets_in


def error_pages(stack: Stack) -> dict[str, str]:
    """Answers to bad requests that carry the secrets in headers and bodies (never in the URL, which
    is logged): a wrong key, a bad webhook signature, a 404, a body with them as values."""
    if "web" not in stack.processes:
        return {}
    wrong = {"Authorization": f"Bearer {API_KEY}{WEBHOOK_SECRET}"}
    with httpx.Client(base_url=stack.web_url, timeout=10) as client:
        answers = {
            "401 page": client.get("/v1/opscore/agents", headers=wrong),
            "webhook": client.post("/v1/opscore/internal/agent/notify", content=b'{"event_type": "REGISTER"}',
                                   headers={"X-AgentKit-Timestamp": "1", "X-AgentKit-Signature": WEBHOOK_SECRET}),
            "404 page": client.get("/no-such-page/", headers=wrong),
            "400 API": client.post("/v1/opscore/agent/a1/state", headers=wrong,
                                   json={"agentId": "a1", "state": API_KEY, "details": {"secret": WEBHOOK_SECRET}}),
        }
    return {name: f"{r.status_code} {r.headers} {r.text}" for name, r in answers.items()}


@pytest.fixture
def stack(tmp_path, transactional_db):
    stack = Stack(database_name=connection.settings_dict["NAME"], log_dir=tmp_path)
    stack.secrets.update({"API key": API_KEY, "webhook secret": WEBHOOK_SECRET, "SECRET_KEY": settings.SECRET_KEY})
    try:
        yield stack
        pages = error_pages(stack)
    finally:
        stack.stop_all()
        # Leave nothing for the flush to trip over.
        from django_q.models import OrmQ

        OrmQ.objects.all().delete()
    logs = {path.name: path.read_text(errors="replace") for path in sorted(tmp_path.glob("*.log"))}
    leaks = secrets_in({**logs, **pages}, stack.secrets)
    assert not leaks, f"secrets in the logs or error pages: {leaks[:20]}"
