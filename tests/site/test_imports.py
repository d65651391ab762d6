"""Imports point one way: agents and workflows know nothing of sessions, and opscore_site
knows the apps only through what they declare (DESIGN.md "Dependency direction")."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Django is set up as in the tests, but with the admin that does not autodiscover: the admin
# modules import every app (sessions/admin.py imports the engine, as it should).
PROBE = """
import json, sys
import django
from django.conf import settings
settings.INSTALLED_APPS = ["django.contrib.admin.apps.SimpleAdminConfig" if app == "django.contrib.admin" else app
                           for app in settings.INSTALLED_APPS]
django.setup()
loaded_at_setup = sorted(name for name in sys.modules if name.startswith("sessions."))
import agents.api.views, workflows.api.views, opscore_site.api
print(json.dumps({"at_setup": loaded_at_setup,
                  "loaded": sorted(name for name in sys.modules if name.startswith("sessions."))}))
"""


def _sessions_modules_loaded() -> dict:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "opscore_site.settings_test"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_loading_the_agents_and_workflows_api_does_not_load_the_engine():
    modules = _sessions_modules_loaded()
    assert "sessions.engine" not in modules["at_setup"]  # else the check below proves nothing
    assert "sessions.engine" not in modules["loaded"], modules["loaded"]
    assert set(modules["loaded"]) == set(modules["at_setup"]), "agents/workflows API code imports sessions"


def _app_imports(package: str) -> list[str]:
    apps = ("agents", "workflows", "sessions")
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1].split(".")[0] in apps:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return offenders


def test_opscore_site_imports_no_app_module():
    """Settings and URL composition name the apps by strings; the API's error handler maps domain
    errors by the `code`/`http_status` they declare (opscore_site/errors.py), not by their classes."""
    assert _app_imports("opscore_site") == []


def test_ui_is_a_library_the_apps_import_and_imports_no_app():
    """The pages are composed in opscore_site/urls.py; ui/ holds what every app's pages share."""
    assert _app_imports("ui") == []
