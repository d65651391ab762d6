"""Crawl every operator page of a running Ops-Core as a logged-in operator, and name each that is not a 200.

Used by the quickstart test on the SQLite demo while traffic runs: the suite's other page tests run on
PostgreSQL only, so a page that breaks on SQLite (a UUID annotation read back as hex text) shows here.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlparse

import httpx

SESSION_LINK = re.compile(r'href="(/sessions/[0-9a-f-]{36}/)"')
AGENT_LINK = re.compile(r'href="(/agents/(?!\?)[^"/]+/)"')
WORKFLOW_LINK = re.compile(r'href="(/workflows/(?!new/|import/|\?)[^"/]+/)"')
ALERT_LINK = re.compile(r'href="(/alerts/\d+/)"')
ADMIN_CHANGELIST = re.compile(r'href="(/admin/\w+/\w+/)"')
ADMIN_ADD = re.compile(r'href="(/admin/\w+/\w+/add/)"')
ADMIN_CHANGE = re.compile(r'href="(/admin/\w+/\w+/[^"/]+/change/)"')
# The agents list's "task in flight" cell links to the session: the link that broke on SQLite.
IN_FLIGHT_ROW = re.compile(r'<tr data-agent="([^"]+)">(?:(?!</tr>).)*?href="/sessions/[0-9a-f-]{36}/"', re.S)

# Every list page, plain and with each of its filters (the values the filter forms offer).
LIST_PAGES = [
    "/",
    "/agents/", "/agents/?state=idle", "/agents/?state=active", "/agents/?stale=yes", "/agents/?stale=no",
    "/agents/?drained=yes", "/agents/?drained=no", "/agents/?deregistered=yes", "/agents/?deregistered=all",
    "/agents/?capability=demo", "/agents/?q=demo", "/agents/?page=2",
    "/sessions/", "/sessions/?status=running", "/sessions/?status=completed", "/sessions/?status=failed",
    "/sessions/?since=1h", "/sessions/?since=24h", "/sessions/?since=7d", "/sessions/?q=0",
    "/sessions/?after=2026-01-01T00:00&before=2099-01-01T00:00", "/sessions/?workflow=upstream-sample",
    "/sessions/?page=2",
    "/failures/", "/failures/?status=failed", "/failures/?status=dead", "/failures/?q=error", "/failures/?step=x",
    "/approvals/", "/approvals/?page=2", "/sessions/?status=paused", "/sessions/bulk/pause/", "/sessions/bulk/resume/",
    "/workflows/", "/workflows/?q=sample", "/workflows/new/", "/workflows/import/",
    "/api-keys/",
    "/alerts/", "/alerts/new/",
    "/admin/",
    "/v1/opscore/docs", "/v1/opscore/redoc", "/v1/opscore/schema",
]


@dataclass
class Crawl:
    base: str
    client: httpx.Client = field(init=False)
    seen: dict[str, int] = field(default_factory=dict)
    bodies: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base, timeout=15, follow_redirects=False)

    def login(self, username: str, password: str) -> None:
        form = self.client.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert form.status_code == 200 and token, f"the login page: {form.status_code}"
        answer = self.client.post("/accounts/login/", data={
            "username": username, "password": password, "csrfmiddlewaretoken": token.group(1)},
            headers={"Referer": urljoin(self.base, "/accounts/login/")})
        assert answer.status_code == 302, f"logging in as {username}: {answer.status_code} {answer.text[:300]}"

    def get(self, path: str) -> str:
        """Fetch a page once; its status is kept for the report."""
        if path not in self.seen:
            response = self.client.get(path)
            self.seen[path] = response.status_code
            self.bodies[path] = response.text
        return self.bodies[path]

    def first(self, page: str, pattern: re.Pattern) -> str | None:
        found = pattern.findall(self.get(page))
        return found[0] if found else None

    def first_change_form(self, changelist: str, tries: int = 3) -> str | None:
        """Open the first change form the changelist links to. A row can go between the list and its
        form (a job the queue ran meanwhile): the admin then redirects to its index ("... doesn't
        exist. Perhaps it was deleted?"), its answer for a deleted object, so the list is read again
        and its new first row opened. Any other answer is kept for the report as it came."""
        for _ in range(tries):
            change = self.first(changelist, ADMIN_CHANGE)
            if change is None:
                return None
            response = self.client.get(change)
            gone = response.status_code == 302 and urlparse(response.headers.get("location", "")).path == "/admin/"
            if not gone:
                self.seen[change], self.bodies[change] = response.status_code, response.text
                return change
            self.seen.pop(changelist, None)  # read the list again
        self.seen[change], self.bodies[change] = response.status_code, response.text  # reported as it answered
        return change

    def failed(self) -> list[str]:
        return [f"{path} answered {code}" + _why(self.bodies[path]) for path, code in self.seen.items() if code != 200]

    def agent_with_task_in_flight(self, timeout: float = 60) -> str | None:
        """Fetch the agents list until a row shows a task in flight (or the page fails); that agent's id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.seen.pop("/agents/", None)
            rows = IN_FLIGHT_ROW.findall(self.get("/agents/"))
            if self.seen["/agents/"] != 200 or rows:
                return rows[0] if rows else None
            time.sleep(0.3)
        return None

    def everything(self) -> dict[str, str | None]:
        """The whole operator surface; returns what it found to link to, for the caller's asserts."""
        found = {"agent in flight": self.agent_with_task_in_flight()}
        for page in LIST_PAGES:
            self.get(page)
        found["running session"] = self.first("/sessions/?status=running", SESSION_LINK)
        found["completed session"] = self.first("/sessions/?status=completed", SESSION_LINK)
        found["failed task's session"] = self.first("/failures/", SESSION_LINK)
        found["workflow"] = self.first("/workflows/", WORKFLOW_LINK)
        found["agent"] = self.first("/agents/?deregistered=all", AGENT_LINK)
        found["alert rule"] = self.first("/alerts/", ALERT_LINK)
        if found["alert rule"]:
            self.get(found["alert rule"] + "edit/")
        if found["agent in flight"]:
            self.get(f"/agents/{found['agent in flight']}/")
        for key in ("running session", "completed session", "failed task's session", "workflow", "agent",
                    "alert rule"):
            if found[key]:
                self.get(found[key])
        if found["workflow"]:
            workflow = found["workflow"]
            for suffix in ("edit/", "start/", "export.json", "export.yaml"):
                self.get(workflow + suffix)
        for changelist in sorted(set(ADMIN_CHANGELIST.findall(self.get("/admin/")))):
            found[f"admin {changelist}"] = self.first_change_form(changelist)
        for add in sorted(set(ADMIN_ADD.findall(self.get("/admin/")))):
            self.get(add)
        return found


def _why(body: str) -> str:
    """The first line of a Django debug page's exception, when the demo runs with DEBUG on."""
    match = re.search(r'<pre class="exception_value">(.*?)</pre>', body, re.S) or re.search(
        r"<title>(.*?)</title>", body, re.S)
    return f": {html.unescape(match.group(1).strip())[:300]}" if match else ""
