"""Faults, measured: run each fault against a real stack and print one row per fault.

Each fault gets a stack of its own (gunicorn with 2 workers, a qcluster, the scheduler loop and the
AgentKit stand-in with --agents agents), all on one fresh PostgreSQL database. Sessions of a stored
two-step workflow (10 s step timeout, 5 retries) are triggered through the API while the fault
happens; a reader polls the API meanwhile. Then the script waits for every session to end and
prints:

  started    sessions the API accepted (each trigger has an Idempotency-Key and is sent again
             after a dropped connection, a 5xx or a 429, so it starts its session exactly once)
  completed, failed
  lost       sessions still running once none has ended for --stall-timeout seconds (stuck, not slow)
  dup        attempts POSTed to AgentKit more than once (the stand-in's log of accepted runs, over
             all its lives), plus POSTs of an attempt that was never fenced in TaskAttempt
  overlap    runs AgentKit got for an agent still working on another one (a second POST for a task
             whose first one may still be running)
  5xx        answers of gunicorn with a 5xx status (its access log), and of those the 503s
  conn       requests of the bench's clients cut short (connection reset or refused)
  tb         tracebacks in any log (web, clusters, schedulers, stand-in)
  recover    seconds from the end of the fault to the first step completed after it
  drain      seconds from the end of the fault until the last session ended

Faults (--only NAME, repeatable; default every fault but `db-restart`):
  web-kill         SIGKILL of one gunicorn worker during requests, then of another 3 s later
  cluster-kill     SIGKILL of the qcluster's main process (its children are left as they are),
                   a new qcluster 2 s later
  scheduler-kill   SIGKILL of the scheduler, a new one 5 s later
  two-schedulers   two scheduler loops for the whole run
  slow-agentkit    AgentKit answers every /run after 5 s, above AGENTKIT_TIMEOUT_SECONDS (3 s), and
                   its agents work 4-5 s: the POST times out although AgentKit took the task; the
                   outcome must come from the reports or the step timeout, never from a second POST
  agentkit-forget  AgentKit is SIGKILLed and comes back knowing no agent (every /run is a 404) for
                   5 s, then its agents register again
  burst            5,000 triggers (x --scale) as fast as 8 clients can send them
  db-restart       PostgreSQL restarted twice within a minute (`pg_ctlcluster 15 main restart`): it
                   cuts every client of the server, so it runs only when named with --only

Run on this machine (2 cores shared with other helpers' work), `--scale 0.4` (80 sessions a fault,
16 for slow-agentkit, a burst of 2,000), 20 agents; db-restart by itself with `--only db-restart`:

  fault            started  completed  failed  lost  dup  overlap  5xx  503  conn  tb  recover   drain
  web-kill              80         80       0     0    0        0    0    0     0   0     0.0s    7.5s
  cluster-kill          80         80       0     0    0        0    0    0     0   0     0.0s   11.1s
  scheduler-kill        80         80       0     0    0        0    0    0     0   0     0.0s    8.1s
  two-schedulers        80         80       0     0    0        0    0    0     0   0     0.2s   15.1s
  slow-agentkit         16         16       0     0    0        0    0    0     0   0     0.3s   22.2s
  agentkit-forget       80         45      35     0    0        0    0    0     0   0     0.0s   32.2s
  burst               2000       2000       0     0    0        0    0    0     0   0     0.1s  544.6s
  db-restart            80         80       0     0    0        0   14   14     0   4        -    0.0s

  web-kill: a state report cut short by a killed worker is lost (the SDK never retries). When it is
  an agent's `idle`, Ops-Core still shows the agent `active`; the agent counts as free again 5 s
  after that report once nothing is in flight (`engine.free_agents`), so the task's timeout frees it
  and its next task goes out (before that rule, 3 and 6 sessions of a run waited forever). In this
  run and three more web-kill rows (80/80 each, 0 lost, 0 dup) the reports cut short (none or one a
  run) were `active` ones, which cost nothing; the db-restart row below had a lost `idle`.
  agentkit-forget: the sessions whose step reached AgentKit while it knew no agent got a 404, which
  is permanent (the step is dead, the session failed; 25 to 35 of 80 by run). slow-agentkit showed
  15 second POSTs to busy agents before a POST timeout stopped counting as a failed attempt.
  cluster-kill: the killed main process leaves its 5 children (sentinel, workers, monitor, pusher)
  running as orphans beside the new qcluster; nothing was dispatched twice. db-restart: the 14 503s
  are the API's answers while PostgreSQL restarted the first time: 8 reads of the bench's reader, a
  trigger (sent again) and 5 state reports, lost. Two agents lost both reports of a step (still
  `idle`: the timeout retried the step), one lost only its `idle` after its `active` got through,
  and the step's timeout 10 s later freed that agent, which took its next queued task at once. The 4
  tracebacks are django-q2's pusher logging "Failed to pull task from broker" once per restart (a
  chained exception: two tracebacks a line). The sessions (16 s of triggers) had all ended before
  the second restart, so no step completed after the fault (recover `-`, drain 0 s).

Usage: .venv/bin/python bench/faults.py [--only NAME ...] [--scale 1.0] [--agents 20]
         [--stall-timeout 90] [--drain-timeout 3600] [--database opscore_bench_faults]
Needs PostgreSQL at DATABASE_URL (default 127.0.0.1:5432, user postgres); drops and creates the
database --database on that server. Logs stay in the directory printed at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import stacklib  # noqa: E402 (bench/ is the script's directory)

DB_NAME = "opscore_bench_faults"
PG_RESTART = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"]


def spec(workflow_id: str, *, timeout: int = 10) -> dict:
    return {"id": workflow_id, "name": workflow_id, "tasks": [
        {"taskId": "one", "nextTaskId": "two", "maxRetries": 5, "timeoutSeconds": timeout, "retryBackoffSeconds": 0.2},
        {"taskId": "two", "maxRetries": 5, "timeoutSeconds": timeout, "retryBackoffSeconds": 0.2},
    ]}


@dataclass
class Fault:
    """One row of the table: how its stack starts, how many sessions it runs, what it does meanwhile."""

    name: str
    inject: Callable[["Run"], None]
    sessions: float = 200  # times --scale
    rate: float = 5.0  # triggers per second (0: as fast as the clients go)
    clients: int = 2
    work_time: str = "0.05-0.3"
    step_timeout: int = 10
    standin_extra: list[str] = field(default_factory=list)
    schedulers: tuple[str, ...] = ("scheduler",)
    cluster_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    fault: Fault
    stack: object
    agents: list[str]
    total: int
    session_ids: list[str] = field(default_factory=list)
    triggered: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    fault_end: datetime | None = None
    reader_errors: int = 0
    notes: list[str] = field(default_factory=list)
    old_groups: list[int] = field(default_factory=list)

    def wait_progress(self, fraction: float = 0.2) -> None:
        """Until `fraction` of the sessions are triggered and some step has completed."""
        from sessions.models import Task

        from tests.e2e.harness import wait_until

        wait_until(lambda: len(self.session_ids) >= self.total * fraction, timeout=300, what="triggers")
        wait_until(lambda: stacklib.db_call(lambda: Task.objects.filter(
            session__workflow_id=self.workflow_id, status="completed").exists()), timeout=120, what="a step done")

    @property
    def workflow_id(self) -> str:
        return f"fault-{self.fault.name}"

    def ended(self) -> None:
        self.fault_end = datetime.now(timezone.utc)


# --- the faults -------------------------------------------------------------------------------------


def _gunicorn_workers(stack) -> list[int]:
    master = stack.processes["web"].pid
    table = stacklib.process_table()
    return sorted(pid for pid, (parent, _) in table.items() if parent == master)


def web_kill(run: Run) -> None:
    run.wait_progress()
    for _ in range(2):
        os.kill(_gunicorn_workers(run.stack)[0], signal.SIGKILL)
        time.sleep(3)
    run.ended()


def cluster_kill(run: Run) -> None:
    run.wait_progress()
    old = run.stack.processes.pop("qcluster")
    os.kill(old.pid, signal.SIGKILL)
    old.wait()
    run.old_groups.append(old.pid)
    time.sleep(2)
    left = [pid for pid in stacklib.process_table() if _pgid(pid) == old.pid]
    run.notes.append(f"cluster-kill: {len(left)} processes of the killed qcluster still ran 2 s later "
                     "(killed at the end of the row)")
    run.stack.start("qcluster", [sys.executable, "manage.py", "qcluster"], **run.fault.cluster_env)
    run.ended()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def scheduler_kill(run: Run) -> None:
    run.wait_progress()
    old = run.stack.processes.pop("scheduler")
    os.kill(old.pid, signal.SIGKILL)
    old.wait()
    time.sleep(5)
    run.stack.start_scheduler()
    run.ended()


def nothing(run: Run) -> None:
    run.wait_progress(0)
    run.ended()


def slow_agentkit(run: Run) -> None:
    run.wait_progress(0)
    run.ended()


def agentkit_forget(run: Run) -> None:
    run.wait_progress()
    rows = run.stack.standin("/_standin/agents")["agents"]
    run.stack.stop("agentkit", sig=signal.SIGKILL)
    run.stack.start_agentkit(agents=0, work_time=run.fault.work_time)
    time.sleep(5)
    run.stack.standin("/_standin/agents", {"agents": [
        {"agentId": a["agentId"], "agentName": a["agentName"], "capabilities": a["capabilities"]} for a in rows]})
    run.ended()


def burst(run: Run) -> None:
    run.triggered.wait()
    run.ended()


def db_restart(run: Run) -> None:
    run.wait_progress()
    for n in range(2):
        subprocess.run(PG_RESTART, check=True, capture_output=True)
        if n == 0:
            time.sleep(20)
    run.ended()


FAULTS = {f.name: f for f in [
    Fault("web-kill", web_kill),
    Fault("cluster-kill", cluster_kill),
    Fault("scheduler-kill", scheduler_kill),
    Fault("two-schedulers", nothing, schedulers=("scheduler", "scheduler-b")),
    Fault("slow-agentkit", slow_agentkit, sessions=40, rate=2, work_time="4-5", step_timeout=20,
          standin_extra=["--answer-delay", "5"], cluster_env={"Q_WORKERS": "4"}),
    Fault("agentkit-forget", agentkit_forget),
    Fault("burst", burst, sessions=5000, rate=0, clients=8),
    Fault("db-restart", db_restart),
]}
DEFAULT = [name for name in FAULTS if name != "db-restart"]


# --- one row ----------------------------------------------------------------------------------------


def feed(run: Run, trigger: stacklib.Trigger) -> None:
    """Trigger run.total sessions, round-robin over the agents, at the fault's rate."""
    lock = threading.Lock()
    numbers = iter(range(run.total))
    started = time.monotonic()
    rate = run.fault.rate

    def client_loop() -> None:
        client = run.stack.api()
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            if rate:
                time.sleep(max(0.0, started + n / rate - time.monotonic()))
            session_id, _ = trigger(client, run.agents[n % len(run.agents)], f"{run.fault.name}-{n}-{uuid.uuid4()}")
            if session_id:
                with lock:
                    run.session_ids.append(session_id)

    threads = [threading.Thread(target=client_loop) for _ in range(run.fault.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.triggered.set()


def read(run: Run) -> None:
    """Poll the API until the row ends, as a dashboard would."""
    import httpx

    client = run.stack.api()
    while not run.stopping.is_set():
        for path in ("/v1/opscore/sessions?limit=5", f"/v1/opscore/agents/{run.agents[0]}"):
            try:
                client.get(path)
            except httpx.TransportError:
                run.reader_errors += 1
        time.sleep(0.2)


def wait_final(run: Run, *, stall: float, timeout: float) -> None:
    """Until every session has ended, or none has ended for `stall` seconds (what is left is stuck,
    not slow), or `timeout` has passed."""
    from sessions.models import Session

    deadline = time.monotonic() + timeout
    last_change, last_open = time.monotonic(), None
    while time.monotonic() < deadline and time.monotonic() - last_change < stall:
        still_open = stacklib.db_call(lambda: Session.objects.filter(pk__in=run.session_ids)
                                      .exclude(status__in=stacklib.FINAL).count())
        if not still_open:
            return
        if still_open != last_open:
            last_change, last_open = time.monotonic(), still_open
        time.sleep(1)


def figures(run: Run, trigger: stacklib.Trigger) -> dict:
    from collections import Counter

    from django.db.models import Max, Min

    from sessions.models import Session, Task, TaskAttempt

    ids = run.session_ids
    statuses = Counter(Session.objects.filter(pk__in=ids).values_list("status", flat=True))
    logs = stacklib.read_logs(run.stack.log_dir)
    posts = stacklib.standin_posts(logs)
    fenced = {f"{t}#{n}" for t, n in TaskAttempt.objects.filter(task__session_id__in=ids)
              .values_list("task_id", "number")}
    task_ids = {str(pk) for pk in Task.objects.filter(session_id__in=ids).values_list("pk", flat=True)}
    own = {key for key in posts if key.split("#")[0] in task_ids}
    answers = stacklib.access_statuses(logs)
    recover = drain = None
    if run.fault_end is not None:
        first = Task.objects.filter(session_id__in=ids, status="completed", finished_at__gt=run.fault_end).aggregate(
            first=Min("finished_at"))["first"]
        last = Session.objects.filter(pk__in=ids).aggregate(last=Max("ended_at"))["last"]
        recover = (first - run.fault_end).total_seconds() if first else None
        drain = max(0.0, (last - run.fault_end).total_seconds()) if last else None
    return {
        "fault": run.fault.name,
        "started": len(ids),
        "completed": statuses.get("completed", 0),
        "failed": statuses.get("failed", 0),
        "lost": sum(n for status, n in statuses.items() if status not in stacklib.FINAL) + (len(ids) - sum(statuses.values())),
        "dup": sum(1 for key in own if posts[key] > 1) + len(own - fenced),
        "overlap": stacklib.standin_overlaps(logs),
        "5xx": sum(n for status, n in answers.items() if status >= 500),
        "503": answers.get(503, 0),
        "conn": trigger.transport_errors + run.reader_errors,
        "tb": stacklib.traceback_count(logs),
        "recover": recover,
        "drain": drain,
        "refused": dict(trigger.refusals),
        "trigger_failures": trigger.failures[:3],
    }


def run_fault(fault: Fault, args, log_root: Path) -> dict:
    from tests.e2e.harness import Stack

    log_dir = log_root / fault.name
    log_dir.mkdir()
    stack = Stack(database_name=args.database, log_dir=log_dir)
    run = None
    try:
        agents = stacklib.start_stack(stack, agents=args.agents, work_time=fault.work_time,
                                      extra_standin=fault.standin_extra, schedulers=fault.schedulers,
                                      cluster_env=fault.cluster_env)
        run = Run(fault=fault, stack=stack, agents=agents, total=max(1, round(fault.sessions * args.scale)))
        stacklib.put_workflow(stack, spec(run.workflow_id, timeout=fault.step_timeout))
        trigger = stacklib.Trigger(run.workflow_id)
        feeder = threading.Thread(target=feed, args=(run, trigger))
        reader = threading.Thread(target=read, args=(run,))
        feeder.start()
        reader.start()
        try:
            fault.inject(run)
        finally:
            feeder.join()
        wait_final(run, stall=args.stall_timeout, timeout=args.drain_timeout)
        run.stopping.set()
        reader.join()
        row = stacklib.db_call(lambda: figures(run, trigger))
        row["notes"] = run.notes
        return row
    finally:
        if run is not None:
            run.stopping.set()
        stack.stop_all()
        for group in run.old_groups if run else []:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


COLUMNS = ["fault", "started", "completed", "failed", "lost", "dup", "overlap", "5xx", "503", "conn", "tb",
           "recover", "drain"]


def format_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.1f}s" if isinstance(value, float) else str(value)

    cells = [COLUMNS] + [[cell(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(FAULTS), metavar="NAME",
                        help=f"run this fault (repeatable); one of {', '.join(FAULTS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="times the sessions of each fault (burst: 5,000)")
    parser.add_argument("--agents", type=int, default=20, help="stand-in agents (default %(default)s)")
    parser.add_argument("--stall-timeout", type=float, default=90,
                        help="seconds with no session ending after which the sessions still running count as "
                             "lost (default %(default)s: longer than a step timeout and its retry)")
    parser.add_argument("--drain-timeout", type=float, default=3600,
                        help="the longest wait after the last trigger, however sessions progress (default %(default)s)")
    parser.add_argument("--database", default=DB_NAME, help="database to drop, create and use")
    args = parser.parse_args()
    if args.scale <= 0 or args.agents < 1:
        parser.error("--scale must be positive and --agents at least 1")

    stacklib.setup_django(args.database)
    log_root = Path(tempfile.mkdtemp(prefix="opscore-faults-"))
    rows = []
    for name in args.only or DEFAULT:
        print(f"running {name} ...", flush=True)
        row = run_fault(FAULTS[name], args, log_root)
        rows.append(row)
        extra = {k: row[k] for k in ("refused", "trigger_failures", "notes") if row[k]}
        print(format_table([row]).splitlines()[1] + (f"   {extra}" if extra else ""), flush=True)
    print()
    print(format_table(rows))
    bad = [row["fault"] for row in rows if row["lost"] or row["dup"]]
    print(f"\nlogs: {log_root}")
    if bad:
        print(f"LOST OR DUPLICATED: {', '.join(bad)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
