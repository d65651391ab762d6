"""The UI's CSS and JS are local files, found by the finders and collected for production."""

from __future__ import annotations

import os
import subprocess
import sys

from django.conf import settings
from django.contrib.staticfiles import finders
from django.urls import reverse


def test_the_ui_assets_are_found():
    assert finders.find("ui/opscore.css") and finders.find("ui/poll.js")


def test_pages_reference_local_assets_only(client, operator):
    client.force_login(operator)
    content = client.get(reverse("sessions:dashboard")).content.decode()
    assert "/static/ui/opscore.css" in content and "/static/ui/poll.js" in content
    assert "https://" not in content and "//cdn" not in content


def test_whitenoise_serves_the_css(client):
    response = client.get("/static/ui/opscore.css")
    assert response.status_code == 200
    assert b"--accent" in b"".join(response.streaming_content)


def test_collectstatic_works_in_production_mode(tmp_path):
    env = {"DJANGO_SETTINGS_MODULE": "opscore_site.settings", "DEBUG": "false", "SECRET_KEY": "x" * 50,
           "OPSCORE_WEBHOOK_SECRET": "s", "PATH": "/usr/bin:/bin", "DATABASE_URL": os.environ["DATABASE_URL"]}
    code = ("import django, sys; from django.conf import settings; "
            f"settings.STATIC_ROOT = {str(tmp_path)!r}; django.setup(); "
            "from django.core.management import call_command; call_command('collectstatic', '--noinput', verbosity=0)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=settings.BASE_DIR)
    assert result.returncode == 0, result.stderr
    manifest = (tmp_path / "staticfiles.json").read_text()
    assert "ui/opscore.css" in manifest and "ui/poll.js" in manifest
    assert list(tmp_path.glob("ui/opscore.*.css.gz"))
