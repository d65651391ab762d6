"""Every Ops-Core command against a database that is not there: one line and an exit code, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "postgres://postgres@127.0.0.1:9/opscore"  # the discard port: connection refused


def run_manage(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": NOWHERE, "DJANGO_SETTINGS_MODULE": "opscore_site.settings_test",
           "DEBUG": "1"}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args", [
    ["opscore_import_workflows", "examples/workflows"],
    ["opscore_export_workflows"],
    ["opscore_create_api_key", "--name", "x"],
    ["opscore_revoke_api_key", "1"],
    ["opscore_retry", "--dry-run"],
    ["opscore_prune", "--dry-run"],
    ["opscore_requeue_stuck", "--dry-run"],
    ["opscore_scheduler", "--once"],
    ["opscore_demo_traffic", "--once"],
], ids=lambda args: args[0])
def test_a_command_says_the_database_is_unavailable(args):
    result = run_manage(*args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("CommandError: the database is unavailable: connection failed"), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_status_reports_an_unavailable_database_as_unhealthy_for_monitors():
    screen = run_manage("opscore_status")
    assert screen.returncode == 2 and screen.stderr == ""
    assert "health     UNHEALTHY\n    - the database is unavailable: connection failed" in screen.stdout
    data = run_manage("opscore_status", "--json")
    assert data.returncode == 2
    body = json.loads(data.stdout)
    assert body["healthy"] is False and body["problems"][0].startswith("the database is unavailable")
