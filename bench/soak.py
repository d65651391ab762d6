"""Soak: a steady mixed load for --minutes, every process's RSS and the p99 latencies sampled each
--sample-seconds, then a table and a verdict.

The stack is that of the e2e tests (gunicorn with 2 workers, a qcluster, the scheduler loop, the
AgentKit stand-in playing --agents agents that work 0.2-1 s a task) on a fresh PostgreSQL database.
The load, all through HTTP:
  trigger   --rate two-step sessions a second, round-robin over the agents (Idempotency-Key each)
  report    state reports of --reporters more agents that only report (`idle` and `active`), as
            fast as one client sends them, one every 50 ms
  read      the API's reads: an agent's state, the sessions list, a session's detail
  page      a logged-in operator viewing the dashboard, the agents, sessions and failures pages
The simulated agents' own reports (active, idle per task) come on top.

Each sample row: every process group's RSS (web = gunicorn's master and workers, qcluster = its main
process, sentinel, workers, monitor and pusher), and the p99 of each kind of request in the
interval. Verdict, after the first --warmup-seconds:
  RSS       each group's RSS stays within +-15% of its value at the end of the warm-up
  p99 flat  no interval's p99 (per kind) above 2x the median of those intervals + 50 ms, and the
            last interval's at most 1.5x the first's + 50 ms
  errors    no client request refused or cut short, no 5xx in gunicorn's access log, no traceback
            in any log, every session ended, no attempt POSTed twice, no overlap on an agent

A 3-minute version runs in CI (tests/e2e/test_soak.py: RSS and errors asserted, the p99 figures
printed; timings are not asserted in tests).

Usage: .venv/bin/python bench/soak.py [--minutes 30] [--agents 200] [--rate 4] [--reporters 20]
         [--sample-seconds 60] [--warmup-seconds 60] [--database opscore_bench_soak]
Needs PostgreSQL at DATABASE_URL (default 127.0.0.1:5432, user postgres); drops and creates the
database --database on that server.
"""

from __future__ import annotations

import argparse
import itertools
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import stacklib  # noqa: E402 (bench/ is the script's directory)
from benchlib import percentile  # noqa: E402

DB_NAME = "opscore_bench_soak"
WORKFLOW = {"id": "soak-two-step", "name": "Soak", "tasks": [
    {"taskId": "one", "nextTaskId": "two", "maxRetries": 3, "timeoutSeconds": 30, "retryBackoffSeconds": 0.5},
    {"taskId": "two", "maxRetries": 3, "timeoutSeconds": 30, "retryBackoffSeconds": 0.5}]}
PAGES = ["/", "/agents/", "/sessions/", "/failures/", "/sessions/?status=completed"]
KINDS = ("trigger", "report", "read", "page")
RSS_TOLERANCE = 0.15


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss_kb: dict[str, int]
    p99_ms: dict[str, float | None]
    requests: int


@dataclass
class SoakResult:
    samples: list[Sample]
    warmup_seconds: float
    errors: list[str]
    sessions: dict[str, int]
    rss_problems: list[str] = field(default_factory=list)
    p99_problems: list[str] = field(default_factory=list)

    def after_warmup(self) -> list[Sample]:
        return [s for s in self.samples if s.at > self.warmup_seconds + 1e-6]

    def baseline(self) -> Sample:
        before = [s for s in self.samples if s.at <= self.warmup_seconds + 1e-6]
        return before[-1] if before else self.samples[0]

    def judge(self) -> None:
        base = self.baseline()
        later = self.after_warmup()
        self.rss_problems = [
            f"{group}: {sample.rss_kb.get(group, 0) / 1024:.1f} MB at {sample.at:.0f}s against "
            f"{kb / 1024:.1f} MB after the warm-up"
            for sample in later for group, kb in base.rss_kb.items()
            if abs(sample.rss_kb.get(group, 0) - kb) > RSS_TOLERANCE * kb]
        self.p99_problems = []
        for kind in KINDS:
            values = [s.p99_ms[kind] for s in later if s.p99_ms.get(kind) is not None]
            if len(values) < 2:
                continue
            middle = statistics.median(values)
            self.p99_problems += [f"{kind}: p99 {v:.0f} ms in one interval, median {middle:.0f} ms"
                                  for v in values if v > 2 * middle + 50]
            if values[-1] > 1.5 * values[0] + 50:
                self.p99_problems.append(f"{kind}: p99 rose from {values[0]:.0f} ms to {values[-1]:.0f} ms")

    @property
    def ok(self) -> bool:
        return not (self.errors or self.rss_problems or self.p99_problems)

    def table(self) -> str:
        groups = sorted({g for s in self.samples for g in s.rss_kb})
        head = ["t"] + [f"{g} MB" for g in groups] + [f"{k} p99" for k in KINDS] + ["requests"]
        rows = [head]
        for s in self.samples:
            rows.append([f"{s.at:.0f}s" + (" (warm-up)" if s.at <= self.warmup_seconds + 1e-6 else "")]
                        + [f"{s.rss_kb.get(g, 0) / 1024:.1f}" for g in groups]
                        + ["-" if s.p99_ms.get(k) is None else f"{s.p99_ms[k]:.0f} ms" for k in KINDS]
                        + [str(s.requests)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)

    def verdict(self) -> str:
        lines = [f"sessions: {self.sessions}"]
        lines.append("RSS within +-15% after warm-up: " + ("yes" if not self.rss_problems else
                                                           "NO: " + "; ".join(self.rss_problems[:5])))
        lines.append("p99 flat: " + ("yes" if not self.p99_problems else "NO: " + "; ".join(self.p99_problems[:5])))
        lines.append("no errors: " + ("yes" if not self.errors else "NO: " + "; ".join(self.errors[:5])))
        lines.append("verdict: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


class Latencies:
    """Request timings by kind, taken out one interval at a time; refusals kept as errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def timed(self, kind: str, send) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = send()
        except httpx.HTTPError as exc:
            with self._lock:
                self.errors.append(f"{kind}: {exc.__class__.__name__}: {exc}")
            return None
        elapsed = (time.perf_counter() - started) * 1000
        with self._lock:
            self._ms[kind].append(elapsed)
            if response.status_code >= 400:
                self.errors.append(f"{kind}: {response.request.method} {response.request.url.path} "
                                   f"-> {response.status_code} {response.text[:120]}")
        return response

    def take(self) -> dict[str, list[float]]:
        with self._lock:
            taken, self._ms = self._ms, defaultdict(list)
        return taken


def operator_client(base_url: str, username: str, password: str) -> httpx.Client:
    """A client logged in through the login form. The cookies are copied by hand: in production mode
    they are `Secure`, which httpx would not send back over plain http to the local server."""
    import re

    client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
    form = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    if form.status_code != 200 or not token:
        raise AssertionError(f"the login page answered {form.status_code}")
    csrf = form.cookies.get("csrftoken")
    answer = client.post("/accounts/login/", data={"username": username, "password": password,
                                                   "csrfmiddlewaretoken": token.group(1)},
                         headers={"Cookie": f"csrftoken={csrf}", "Referer": f"{base_url}/accounts/login/"})
    if answer.status_code != 302 or not answer.cookies.get("sessionid"):
        raise AssertionError(f"logging in: {answer.status_code} {answer.text[:200]}")
    client.cookies.clear()
    client.headers["Cookie"] = f"sessionid={answer.cookies['sessionid']}; csrftoken={csrf}"
    return client


def create_operator() -> tuple[str, str]:
    """A staff superuser with a random password, in the database this process is set up on."""
    from django.contrib.auth import get_user_model

    username, password = "soak-operator", secrets.token_urlsafe(16)
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"email": "soak@example.com"})
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    return username, password


def soak(stack, *, seconds: float, agents: list[str], operator: tuple[str, str], rate: float = 4.0,
         reporters: int = 20, sample_seconds: float = 60, warmup_seconds: float = 60,
         drain_seconds: float = 120) -> SoakResult:
    """Run the load on a started stack for `seconds`, sampling as it goes; then wait for the sessions
    to end and judge."""
    from sessions.models import Session

    from tests.e2e.harness import wait_until

    stacklib.put_workflow(stack, WORKFLOW)
    latencies = Latencies()
    stop = threading.Event()
    session_ids: list[str] = []
    trigger = stacklib.Trigger(WORKFLOW["id"], tries=1)

    def triggers() -> None:
        client = stack.api()
        started = time.monotonic()
        for n in itertools.count():
            if stop.wait(max(0.0, started + n / rate - time.monotonic())):
                return
            response = latencies.timed("trigger", lambda: client.post(
                f"/v1/opscore/agent/{agents[n % len(agents)]}/workflow",
                json={"workflowDefinitionId": WORKFLOW["id"]}, headers={"Idempotency-Key": str(uuid.uuid4())}))
            if response is not None and response.status_code == 202:
                session_ids.append(response.json()["sessionId"])

    def reports() -> None:
        client = stack.api()
        ids = [f"soak-reporter-{n}" for n in range(reporters)]
        for n in itertools.count():
            if stop.wait(0.05):
                return
            agent_id = ids[n % len(ids)]
            body = {"agentId": agent_id, "state": "idle" if n % 2 else "active", "details": {"n": n},
                    "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
            latencies.timed("report", lambda: client.post(f"/v1/opscore/agent/{agent_id}/state", json=body))

    def reads() -> None:
        client = stack.api()
        rng = random.Random(1)
        while not stop.wait(0.1):
            latencies.timed("read", lambda: client.get(f"/v1/opscore/agent/{rng.choice(agents)}/state"))
            listing = latencies.timed("read", lambda: client.get("/v1/opscore/sessions?limit=20"))
            if listing is not None and listing.status_code == 200 and listing.json()["results"]:
                some = rng.choice(listing.json()["results"])["sessionId"]
                latencies.timed("read", lambda: client.get(f"/v1/opscore/sessions/{some}"))

    def pages() -> None:
        client = operator_client(stack.web_url, *operator)
        for n in itertools.count():
            if stop.wait(0.5):
                return
            latencies.timed("page", lambda: client.get(PAGES[n % len(PAGES)]))

    threads = [threading.Thread(target=target, daemon=True) for target in (triggers, reports, reads, pages)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples = []
    try:
        while (elapsed := time.monotonic() - started) < seconds - 1e-6:
            time.sleep(min(sample_seconds, seconds - elapsed))
            taken = latencies.take()
            table = stacklib.process_table()
            rss = {name: stacklib.group_rss_kb(proc.pid, table) for name, proc in stack.processes.items()}
            samples.append(Sample(at=round(time.monotonic() - started), rss_kb=rss,
                                  p99_ms={k: percentile(taken[k], 0.99) if taken.get(k) else None for k in KINDS},
                                  requests=sum(len(v) for v in taken.values())))
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    def ended() -> bool:
        return not Session.objects.filter(pk__in=session_ids).exclude(status__in=stacklib.FINAL).exists()

    errors = list(latencies.errors)
    try:
        wait_until(ended, timeout=drain_seconds, interval=1, what="every session ended")
    except AssertionError as exc:
        errors.append(str(exc))
    statuses = _status_counts(session_ids)
    logs = stacklib.read_logs(stack.log_dir)
    fivexx = sum(n for status, n in stacklib.access_statuses(logs).items() if status >= 500)
    if fivexx:
        errors.append(f"{fivexx} 5xx answers in gunicorn's access log")
    if (tracebacks := stacklib.traceback_count(logs)):
        errors.append(f"{tracebacks} tracebacks in the logs")
    posts = stacklib.standin_posts(logs)
    if (dups := [key for key, n in posts.items() if n > 1]):
        errors.append(f"{len(dups)} attempts POSTed twice")
    if (overlaps := stacklib.standin_overlaps(logs)):
        errors.append(f"{overlaps} runs sent to a busy agent")
    if trigger.failures:
        errors.extend(trigger.failures[:3])
    result = SoakResult(samples=samples, warmup_seconds=warmup_seconds, errors=errors, sessions=statuses)
    result.judge()
    return result


def _status_counts(session_ids: list[str]) -> dict[str, int]:
    from collections import Counter

    from sessions.models import Session

    return dict(Counter(Session.objects.filter(pk__in=session_ids).values_list("status", flat=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--agents", type=int, default=200, help="simulated agents (default %(default)s)")
    parser.add_argument("--rate", type=float, default=4.0, help="sessions triggered per second (default %(default)s)")
    parser.add_argument("--reporters", type=int, default=20, help="extra agents that only report (default %(default)s)")
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--warmup-seconds", type=float, default=60)
    parser.add_argument("--database", default=DB_NAME, help="database to drop, create and use")
    args = parser.parse_args()
    if args.minutes <= 0 or args.agents < 1 or args.rate <= 0 or args.reporters < 1 or args.sample_seconds <= 0:
        parser.error("--minutes, --rate and --sample-seconds must be positive, --agents and --reporters at least 1")

    stacklib.setup_django(args.database)
    from tests.e2e.harness import Stack

    log_dir = Path(tempfile.mkdtemp(prefix="opscore-soak-"))
    stack = Stack(database_name=args.database, log_dir=log_dir)
    try:
        agents = stacklib.start_stack(stack, agents=args.agents, work_time="0.2-1")
        result = soak(stack, seconds=args.minutes * 60, agents=agents, operator=create_operator(), rate=args.rate,
                      reporters=args.reporters, sample_seconds=args.sample_seconds,
                      warmup_seconds=args.warmup_seconds)
    finally:
        stack.stop_all()
    print(result.table())
    print(result.verdict())
    print(f"logs: {log_dir}")
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
