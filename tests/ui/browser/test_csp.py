"""Content-Security-Policy in a real browser: every page an operator opens (the UI, the admin, the
API docs) renders with no violation, and the confirmations that were inline `onsubmit` handlers
still ask first."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from agents.models import ApiKey
from agents.services import api_key_create
from sessions import engine
from sessions.models import Session
from tests.agents.factories import AgentFactory, AgentStateFactory
from tests.ui.helpers import failed_session
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db(transaction=True)

# Runs before any page script; the policy does not apply to it (Playwright injects it).
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
                              " at " + (e.sourceFile || e.documentURI) + ":" + e.lineNumber);
});
"""


@pytest.fixture
def csp_page(logged_in):
    """The logged-in page, recording CSP violations from the console and from `securitypolicyviolation`."""
    page = logged_in
    seen: list[str] = []
    page.on("console", lambda message: seen.append(f"console {message.type}: {message.text}")
            if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text else None)
    page.add_init_script(RECORD_VIOLATIONS)
    page.csp_console = seen
    return page


def violations(page) -> list[str]:
    return page.csp_console + page.evaluate("window.__cspViolations || []")


def open_page(page, url: str, ready: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)
    assert "Content-Security-Policy" in response.headers or "content-security-policy" in response.headers, url
    # Redoc parses the whole schema in the browser before it draws its heading: slow on a busy
    # 2-core machine, so the wait is generous (a wait, not a speed check).
    expect(page.locator(ready).first).to_be_visible(timeout=30_000)
    page.wait_for_load_state("networkidle")


def test_the_operator_pages_the_admin_and_the_api_docs_have_no_csp_violation(csp_page, live_server, ui_operator,
                                                                             artifacts):
    page = csp_page
    ui_operator.is_superuser = True  # every admin page
    ui_operator.save(update_fields=["is_superuser"])
    agent = AgentFactory(id="csp-agent")
    AgentStateFactory(agent=agent)
    dead = failed_session()
    definition = WorkflowDefinitionFactory(id="csp-wf")
    session = engine.session_start(definition=definition, agent=agent, by=engine.By.system())
    api_key_create(name="csp key")
    pages = {
        "/": "[data-testid=agents-idle]",
        "/agents/": "tr[data-agent=csp-agent]",
        "/agents/csp-agent/": "text=State timeline",
        "/sessions/": "progress.progress",
        f"/sessions/{session.pk}/": "[data-testid=progress]",
        f"/sessions/{dead.session_id}/": "[data-testid=task-error]",
        "/failures/": "tr[data-task]",
        "/failures/retry/?scope=all": "[data-testid=confirm-count]",
        "/approvals/": "[data-testid=no-approvals]",
        "/sessions/bulk/pause/": "[data-testid=confirm-count]",
        "/workflows/": "text=csp-wf",
        "/workflows/csp-wf/": "text=Start a session",
        "/workflows/csp-wf/edit/": "textarea",
        "/workflows/csp-wf/start/": "button:has-text('Start session')",
        "/api-keys/": "text=csp key",
        "/admin/": "#site-name",
        "/admin/opscore_sessions/task/": "#result_list",
        f"/admin/opscore_sessions/task/{dead.pk}/change/": "#content",
        "/admin/axes/accessattempt/": "#content",
        "/v1/opscore/docs": ".swagger-ui .info .title",
        "/v1/opscore/redoc": "h1:has-text('Ops-Core API')",
    }
    found = {}
    for path, ready in pages.items():
        open_page(page, live_server.url + path, ready)
        if problems := violations(page):
            found[path] = problems
    page.screenshot(path=str(artifacts / "redoc-under-csp.png"))
    page.goto(f"{live_server.url}/sessions/")
    page.screenshot(path=str(artifacts / "sessions-under-csp.png"))
    assert not found, found


def test_the_login_page_and_a_lockout_have_no_csp_violation(page, live_server, ui_operator, settings):
    seen: list[str] = []
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text else None)
    page.add_init_script(RECORD_VIOLATIONS)
    page.set_default_timeout(15_000)
    page.goto(live_server.url + "/accounts/login/")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        page.fill("input[name=username]", ui_operator.username)
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        if page.get_by_test_id("locked-out").count():
            break
        assert not page.evaluate("window.__cspViolations"), "login page"
    expect(page.locator("h1")).to_have_text("Too many failed logins")
    expect(page.get_by_test_id("locked-out")).to_contain_text("is locked for 15 minutes")
    assert not seen and not page.evaluate("window.__cspViolations")


def test_revoking_a_key_asks_first_and_dismissing_keeps_it(csp_page, live_server):
    page = csp_page
    key, _ = api_key_create(name="night shift")
    asked: list[str] = []

    def answer(dialog, accept: bool):
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.goto(live_server.url + "/api-keys/")
    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    page.click(f"form[action$='/api-keys/{key.pk}/revoke/'] button")
    expect(page.locator(f"form[action$='/api-keys/{key.pk}/revoke/']")).to_be_visible()
    assert asked == ["Revoke night shift? Agents using it get 401 from now on."]
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None

    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    page.click(f"form[action$='/api-keys/{key.pk}/revoke/'] button")
    expect(page.locator(f"form[action$='/api-keys/{key.pk}/revoke/']")).to_have_count(0)
    assert len(asked) == 2
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert not violations(page)


def test_cancelling_a_session_asks_first_and_dismissing_keeps_it_running(csp_page, live_server):
    page = csp_page
    session = engine.session_start(definition=WorkflowDefinitionFactory(), agent=AgentFactory(),
                                   by=engine.By.system())
    asked: list[str] = []
    page.goto(f"{live_server.url}/sessions/{session.pk}/")
    page.fill("form[action$='/cancel/'] input[name=reason]", "wrong agent")
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("button:has-text('Cancel session')")
    expect(page.get_by_test_id("session-status")).to_have_text("pending")
    assert asked == ["Cancel this session?"]
    session.refresh_from_db()
    assert session.status == Session.Status.PENDING

    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click("button:has-text('Cancel session')")
    expect(page.get_by_test_id("session-status")).to_have_text("cancelled")
    assert len(asked) == 2
    assert not violations(page)
