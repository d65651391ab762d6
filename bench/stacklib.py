"""What bench/faults.py and bench/soak.py share: a database migrated in this process, the e2e
harness's Stack with gunicorn's access log on, process trees and their RSS, triggers that survive
a dropped connection, and counts read from the stack's logs (5xx answers, tracebacks, the
stand-in's accepted runs and overlaps, across all its lives)."""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchlib import proc_stats, recreate_database  # noqa: E402 (bench/ is the script's directory)

# One line per request in web.log: `gunicorn-access <status> <method> <path>`.
ACCESS_ARGS = ["--access-logfile", "-", "--access-logformat", "gunicorn-access %(s)s %(m)s %(U)s"]
ACCESS_LINE = re.compile(r"^gunicorn-access (\d{3}) (\S+) (\S+)", re.MULTILINE)
RUN_ACCEPTED = re.compile(r"standin run agent=\S+ task=(\S+) -> 202")
OVERLAP = re.compile(r"standin overlap agent=")
TRACEBACK = "Traceback (most recent call last)"
FINAL = ("completed", "failed", "cancelled")


def setup_django(database: str) -> str:
    """Drop, create and migrate `database` on DATABASE_URL's server, with Django set up in this process."""
    os.environ["DATABASE_URL"] = recreate_database(database)
    os.environ["DJANGO_SETTINGS_MODULE"] = "opscore_site.settings_test"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return os.environ["DATABASE_URL"]


def db_call(fn: Callable[[], Any], *, attempts: int = 120) -> Any:
    """`fn()` through a database that may be restarting: reconnect and try again, once a second."""
    from django.db import InterfaceError, OperationalError, connection

    for _ in range(attempts - 1):
        try:
            return fn()
        except (OperationalError, InterfaceError):
            connection.close()
            time.sleep(1)
    return fn()


def start_stack(stack, *, agents: int, work_time: str, extra_standin: list[str] | None = None,
                clusters: tuple[str, ...] = ("qcluster",), schedulers: tuple[str, ...] = ("scheduler",),
                cluster_env: dict[str, str] | None = None) -> list[str]:
    """Start web (access log on), the clusters, the schedulers and the stand-in; return the agent ids
    once Ops-Core knows every one of them."""
    from tests.e2e.harness import wait_until

    stack.start_web(extra=ACCESS_ARGS)
    for name in clusters:
        stack.start(name, [sys.executable, "manage.py", "qcluster"], **(cluster_env or {}))
    for name in schedulers:
        stack.start(name, [sys.executable, "manage.py", "opscore_scheduler"])
    stack.start_agentkit(agents=agents, work_time=work_time, extra=extra_standin)
    ids = wait_until(lambda: [a["agentId"] for a in stack.standin("/_standin/agents")["agents"]]
                     if stack.standin("/_standin/stats")["agents_registered"] >= agents else None,
                     timeout=60, what="stand-in agents")
    api = stack.api()
    wait_until(lambda: all(api.get(f"/v1/opscore/agent/{a}/state").status_code == 200 for a in ids),
               timeout=120, what="agents known to Ops-Core")
    return ids


def put_workflow(stack, spec: dict) -> None:
    response = stack.api().put(f"/v1/opscore/workflows/{spec['id']}", json=spec)
    if response.status_code not in (200, 201):
        raise AssertionError(f"workflow {spec['id']}: {response.status_code} {response.text[:300]}")


class Trigger:
    """Start sessions through the API. Each trigger has its own Idempotency-Key and is sent again
    (same key) after a dropped connection, a 5xx or a 429: a request cut short by a killed worker
    starts its session exactly once."""

    def __init__(self, workflow_id: str, *, tries: int = 30) -> None:
        self.workflow_id = workflow_id
        self.tries = tries
        self.transport_errors = 0
        self.refusals: Counter[int] = Counter()
        self.failures: list[str] = []

    def __call__(self, client: httpx.Client, agent_id: str, key: str) -> tuple[str | None, float]:
        """(session id or None, seconds the successful call took)."""
        for _ in range(self.tries):
            started = time.perf_counter()
            try:
                response = client.post(f"/v1/opscore/agent/{agent_id}/workflow",
                                       json={"workflowDefinitionId": self.workflow_id},
                                       headers={"Idempotency-Key": key})
            except httpx.TransportError:
                self.transport_errors += 1
                time.sleep(0.5)
                continue
            if response.status_code == 202:
                return response.json()["sessionId"], time.perf_counter() - started
            self.refusals[response.status_code] += 1
            if response.status_code in (429, 503) or response.status_code >= 500:
                time.sleep(float(response.headers.get("Retry-After", "0.5") or 0.5))
                continue
            self.failures.append(f"{response.status_code} {response.text[:200]}")
            return None, 0.0
        self.failures.append(f"gave up after {self.tries} tries")
        return None, 0.0


# --- processes ------------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS in kB) of every live process (zombies left out)."""
    return {pid: (stat.parent, stat.rss_kb) for pid, stat in proc_stats().items() if stat.state != "Z"}


def group_rss_kb(pgid: int, table: dict[int, tuple[int, int]]) -> int:
    """RSS of every process in process group `pgid` (the harness starts each process in its own)."""
    total = 0
    for pid, (_, rss) in table.items():
        try:
            if os.getpgid(pid) == pgid:
                total += rss
        except OSError:
            continue
    return total


# --- logs -----------------------------------------------------------------------------------------


def read_logs(log_dir: Path) -> dict[str, str]:
    return {path.stem: path.read_text(errors="replace") for path in sorted(log_dir.glob("*.log"))}


def access_statuses(logs: dict[str, str]) -> Counter[int]:
    """Every answer gunicorn gave, by status."""
    return Counter(int(status) for status, _, _ in ACCESS_LINE.findall(logs.get("web", "")))


def access_lines(logs: dict[str, str]) -> list[tuple[int, str, str]]:
    return [(int(status), method, path) for status, method, path in ACCESS_LINE.findall(logs.get("web", ""))]


def traceback_count(logs: dict[str, str]) -> int:
    return sum(text.count(TRACEBACK) for text in logs.values())


def standin_posts(logs: dict[str, str]) -> Counter[str]:
    """`<task id>#<attempt>` -> how many times the stand-in accepted it, over every life of the stand-in."""
    return Counter(RUN_ACCEPTED.findall(logs.get("agentkit", "")))


def standin_overlaps(logs: dict[str, str]) -> int:
    """Runs accepted for an agent still working on another one, over every life of the stand-in."""
    return len(OVERLAP.findall(logs.get("agentkit", "")))
