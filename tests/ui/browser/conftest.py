"""Browser tests: pytest-playwright driving Debian's Chromium against pytest-django's live server.

`playwright install` cannot download here; scripts/test installs the `chromium` package with apt.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings

# Playwright's sync API runs an event loop in this thread, and Django then refuses ORM
# calls from it (SynchronousOnlyOperation). The tests are not async code, so this is safe.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
PASSWORD = "correct-horse-battery"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/ui/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Chromium is missing: scripts/test installs it with apt (apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def ui_operator(transactional_db):
    from django.contrib.auth.models import User

    return User.objects.create_user("olivia", "olivia@example.com", PASSWORD, is_staff=True)


@pytest.fixture
def logged_in(page, live_server, ui_operator):
    """A page logged in through the real login form."""
    page.set_default_timeout(15_000)
    page.goto(live_server.url + "/")
    page.fill("input[name=username]", ui_operator.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/")
    return page


@pytest.fixture
def service_key(transactional_db) -> str:
    from agents.services import api_key_create

    return api_key_create(name="fleet (browser test)")[1]


@pytest.fixture
def standin(live_server, service_key, settings):
    """The AgentKit stand-in (a real HTTP server) reporting to the live server; AGENTKIT_API_URL points at it.

    Agents it does not know get 404 from /run (a permanent failure), as from AgentKit.
    """
    from agentkit_standin import StandIn

    standin = StandIn(opscore_url=live_server.url, api_key=service_key,
                      webhook_secret=settings.OPSCORE_WEBHOOK_SECRET, work_time="0.3-0.5", with_result=True,
                      seed=11).start()
    settings.AGENTKIT_API_URL = standin.url
    yield standin
    standin.stop()
