"""Content-Security-Policy: the header on every page, the docs' own policies, and templates that
need nothing inline (tests/ui/browser/test_csp.py checks that a browser sees no violation)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from tests.ui.helpers import failed_session

pytestmark = pytest.mark.django_db

STRICT = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
TEMPLATES = Path(settings.BASE_DIR) / "templates"


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def test_operator_pages_the_admin_and_the_login_carry_the_strict_policy(client, operator):
    from django.test import Client

    task = failed_session()
    client.force_login(operator)  # a superuser: the admin's changelists too
    for path in ("/", "/agents/", "/sessions/", f"/sessions/{task.session_id}/", "/failures/", "/workflows/",
                 "/api-keys/", "/admin/", "/admin/opscore_sessions/task/", "/approvals/", "/sessions/bulk/pause/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Security-Policy"] == STRICT, path
    login = Client().get("/accounts/login/")
    assert login["Content-Security-Policy"] == STRICT and "nonce" not in login["Content-Security-Policy"]


def test_api_responses_and_error_pages_carry_it_too(client, staff_client):
    assert client.get("/v1/opscore/agents")["Content-Security-Policy"] == STRICT  # a 401
    assert staff_client.get("/no-such-page/")["Content-Security-Policy"] == STRICT


@pytest.mark.parametrize("path, style", [
    ("/v1/opscore/docs", "nonce"),
    ("/v1/opscore/redoc", "'unsafe-inline'"),
])
def test_the_api_docs_allow_their_inline_script_by_nonce_only(client, path, style):
    response = client.get(path)
    assert response.status_code == 200
    policy = directives(response)
    (nonce,) = re.findall(r"'nonce-([^']+)'", " ".join(policy["script-src"]))
    assert policy["script-src"] == ["'self'", f"'nonce-{nonce}'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert style in " ".join(policy["style-src"])
    html = response.content.decode()
    inline = re.findall(r"<script(?![^>]*\ssrc=)([^>]*)>", html)
    assert inline and all(f'nonce="{nonce}"' in attrs for attrs in inline), inline
    assert "fonts.googleapis.com" not in html
    # A fresh nonce per response.
    assert directives(client.get(path))["script-src"] != policy["script-src"]


def test_the_api_docs_policies_differ_from_the_strict_one_only_where_they_must(client):
    swagger, redoc = directives(client.get("/v1/opscore/docs")), directives(client.get("/v1/opscore/redoc"))
    strict = {name: values for name, *values in (part.split() for part in STRICT.split(";"))}
    assert {k: v for k, v in swagger.items() if k not in ("script-src", "style-src")} == \
        {k: v for k, v in strict.items() if k not in ("script-src", "style-src")}
    assert redoc["img-src"] == ["'self'", "data:", "https://cdn.redoc.ly"]
    assert redoc["worker-src"] == ["'self'", "blob:"]
    assert redoc["object-src"] == ["'none'"] and redoc["frame-ancestors"] == ["'none'"]


INLINE = {
    "event handler attribute": re.compile(r"<[^>]*\son[a-z]+\s*=", re.I),
    "style attribute": re.compile(r"<[^>]*\sstyle\s*=", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
    "inline script without a nonce": re.compile(r"<script(?![^>]*\ssrc=)(?![^>]*\snonce=)[^>]*>", re.I),
    "inline style without a nonce": re.compile(r"<style(?![^>]*\snonce=)[^>]*>", re.I),
}


def test_no_template_needs_inline_script_or_style():
    found = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        text = template.read_text()
        for what, pattern in INLINE.items():
            found += [f"{template.relative_to(TEMPLATES)}: {what}: {m.group(0)[:80]}" for m in pattern.finditer(text)]
    assert not found, "\n".join(found)


def test_confirmations_are_data_attributes_that_poll_js_handles(staff_client):
    from agents.services import api_key_create

    api_key_create(name="night <shift>")
    html = staff_client.get("/api-keys/").content.decode()
    assert 'data-confirm="Revoke night &lt;shift&gt;? Agents using it get 401 from now on."' in html
    script = (Path(settings.BASE_DIR) / "ui" / "static" / "ui" / "poll.js").read_text()
    assert "form[data-confirm]" in script and "window.confirm(form.dataset.confirm)" in script
