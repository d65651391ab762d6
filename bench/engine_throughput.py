"""Benchmark: workflow steps per second and trigger->dispatch latency, next to raw django-q2
no-op jobs per second of the same cluster, in one run on this machine.

Starts gunicorn, one qcluster, the scheduler loop and the AgentKit stand-in with instant
agents against a fresh PostgreSQL database, then measures the raw no-op rate of that
cluster (--noop-jobs no-op jobs committed in one transaction, timed until the last has run)
and one of two modes:

open (default): the engine's throughput. A stored two-step workflow is triggered by id
  1. --idle-sessions times one at a time on an idle system, each waited for: trigger->dispatch
     p50/p99 idle and the trigger API's p50 from one client;
  2. --sessions times over --agents agents, all at once from --clients concurrent API
     clients (the engine starts working meanwhile), then completion is watched in the
     database: steps/s and its ratio to the no-op rate, the trigger API's rate, trigger->first
     dispatch, enqueue->dispatch (a job's own wait in the queue; a session queued behind
     others on a busy agent waits for the agent, not for the queue) and session end to end,
     each p50/p99, the WAL the server wrote per step (repeatable where timings are not), and
     the stand-in's count of duplicate attempts and overlaps, and the CPU per step (every
     process of the stack, PostgreSQL and this script, read from /proc) beside the CPU per no-op job;
  3. (--apart, the default) --sessions more with the fleet's dispatch off (engine.fleet_pause): the
     trigger API with nothing else running (rate, p50/p99, CPU per trigger); then dispatch on
     (engine.fleet_resume): the engine with nothing else running, steps/s from the resume and its
     ratio, CPU per step, enqueue->dispatch and resume->session end, and the ratio's ceiling on
     this machine (a step's own job, at a no-op job's CPU, plus the stand-in's CPU per step, with
     no other work). The machine is CPU-bound in phase 2, so its steps/s is the two halves' CPU
     shared out; phase 3 shows each on its own.
closed: the latency loop kept from before: each agent triggers a session through the API,
  waits for it to complete (polling the API), and triggers the next; prints steps/s and
  trigger->dispatch p50/p99.

Usage: .venv/bin/python bench/engine_throughput.py [--mode open|closed] [--agents 50]
         [--sessions 500] [--idle-sessions 20] [--clients 4] [--noop-jobs 500] [--workers 2] [--poll 1]
         [--no-apart]
Needs PostgreSQL at DATABASE_URL (default 127.0.0.1:5432, user postgres); drops and creates the
database --database (default opscore_bench_engine) on that server.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import cpu_delta, cpu_seconds, percentile, recreate_database, run_threads  # noqa: E402 (bench/ is the script's directory)

DB_NAME = "opscore_bench_engine"
FINAL = ("completed", "failed", "cancelled")
SPEC = {"id": "bench-two-step", "name": "Bench", "tasks": [
    {"taskId": "one", "nextTaskId": "two", "timeoutSeconds": 30},
    {"taskId": "two", "timeoutSeconds": 30}]}


def ms(delta) -> float:
    return delta.total_seconds() * 1000


def spread(label: str, values: list[float], unit: str = "ms") -> str:
    if not values:
        return f"{label}: no samples"
    return (f"{label}: p50 {statistics.median(values):.1f} {unit}, p99 {percentile(values, 0.99):.1f} {unit} "
            f"(n={len(values)})")


def stack_cpu(stack) -> dict[str, float]:
    """`cpu_seconds` of the stack's processes (web, qcluster, scheduler, agentkit), PostgreSQL and this script."""
    return cpu_seconds({name: proc.pid for name, proc in stack.processes.items()})


def cpu_line(label: str, used: dict[str, float], count: int) -> str:
    """CPU milliseconds per unit of work (`count` of them), in all and by process group."""
    parts = ", ".join(f"{name} {seconds * 1000 / count:.1f}" for name, seconds in
                      sorted(used.items(), key=lambda item: -item[1]) if seconds * 1000 / count >= 0.05)
    return f"{label}: {sum(used.values()) * 1000 / count:.1f} ms of CPU ({parts})"


def noop_rate(jobs: int) -> tuple[float, float]:
    """Commit `jobs` no-op jobs at once; return (seconds from the first one's start to the last one's end,
    jobs/s over that span: the drain rate, without the cluster's pickup of the first job)."""
    from django.db import transaction
    from django.db.models import Max, Min
    from django_q.models import Success
    from django_q.tasks import async_task

    from tests.e2e.harness import wait_until

    Success.objects.filter(func="sessions.tasks.noop_job").delete()
    with transaction.atomic():
        for i in range(jobs):
            async_task("sessions.tasks.noop_job", i)
    wait_until(lambda: Success.objects.filter(func="sessions.tasks.noop_job").count() >= jobs,
               timeout=600, interval=0.05, what="no-op jobs")
    span = Success.objects.filter(func="sessions.tasks.noop_job").aggregate(first=Min("started"), last=Max("stopped"))
    elapsed = (span["last"] - span["first"]).total_seconds()
    return elapsed, (jobs - 1) / elapsed


def wait_sessions_final(session_ids: list[str], *, timeout: float, interval: float) -> None:
    """Watch the database (never the API) until every session has ended."""
    from sessions.models import Session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Session.objects.filter(pk__in=session_ids).exclude(status__in=FINAL).exists():
            return
        time.sleep(interval)
    raise AssertionError(f"sessions still running after {timeout}s")


def trigger(client, agent_id: str) -> tuple[str, float]:
    """Trigger the stored workflow for `agent_id`; return (session id, call ms)."""
    started = time.perf_counter()
    response = client.post(f"/v1/opscore/agent/{agent_id}/workflow",
                           json={"workflowDefinitionId": SPEC["id"], "initialPayload": None})
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 202:
        raise AssertionError(f"trigger: {response.status_code} {response.text[:200]}")
    return response.json()["sessionId"], elapsed


def session_figures(session_ids: list[str]) -> dict[str, list[float]]:
    from sessions.models import Session, Task

    tasks = list(Task.objects.filter(session_id__in=session_ids).select_related("session")
                 .only("sequence", "status", "dispatched_at", "enqueued_at", "finished_at", "session__created_at"))
    return {
        "first_dispatch": [ms(t.dispatched_at - t.session.created_at) for t in tasks
                           if t.sequence == 1 and t.dispatched_at],
        "enqueue_dispatch": [ms(t.dispatched_at - t.enqueued_at) for t in tasks if t.dispatched_at and t.enqueued_at],
        "end_to_end": [ms(ended - created) for created, ended in
                       Session.objects.filter(pk__in=session_ids, ended_at__isnull=False)
                       .values_list("created_at", "ended_at")],
    }


def wal_lsn() -> int:
    """The server's current WAL position in bytes: a repeatable measure of what a run writes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        return cursor.fetchone()[0]


def open_loop(args, stack, agents: list[str], noop: float, noop_ms: float) -> None:
    from django.db.models import Max, Min

    from sessions.models import Session, Task

    api = stack.api()
    response = api.post("/v1/opscore/workflows", json=SPEC)
    if response.status_code not in (200, 201):
        raise AssertionError(f"workflow: {response.status_code} {response.text[:200]}")

    # 1. Idle: one session at a time, each waited for in the database.
    idle_ids, idle_calls = [], []
    for i in range(args.idle_sessions):
        session_id, call_ms = trigger(api, agents[i % len(agents)])
        idle_ids.append(session_id)
        idle_calls.append(call_ms)
        wait_sessions_final([session_id], timeout=60, interval=0.01)
    idle = session_figures(idle_ids)

    # 2. Loaded: every session triggered from `clients` concurrent clients while the engine works.
    stack.standin("/_standin/stats/reset", {})
    wal_start = wal_lsn()
    cpu_start = stack_cpu(stack)
    loaded_ids, loaded_calls, trigger_seconds, errors = trigger_all(args, stack, agents)
    wait_sessions_final(loaded_ids, timeout=args.timeout, interval=0.25)
    loaded_cpu = cpu_delta(cpu_start, stack_cpu(stack))
    wal_bytes = wal_lsn() - wal_start

    window = Task.objects.filter(session_id__in=loaded_ids).aggregate(end=Max("finished_at"))
    window["start"] = Session.objects.filter(pk__in=loaded_ids).aggregate(start=Min("created_at"))["start"]
    steps = Task.objects.filter(session_id__in=loaded_ids, status="completed").count()
    seconds = (window["end"] - window["start"]).total_seconds()
    completed = Session.objects.filter(pk__in=loaded_ids, status="completed").count()
    loaded = session_figures(loaded_ids)
    stats = stack.standin("/_standin/stats")

    print(f"sessions completed: {completed}/{args.sessions} (trigger errors: {len(errors)})")
    print(f"workflow steps completed: {steps} in {seconds:.2f}s = {steps / seconds:.1f} steps/s")
    print(f"ratio steps/s / no-op jobs/s: {steps / seconds / noop:.2f}")
    print(cpu_line("  per step, its share of the triggers included", loaded_cpu, max(steps, 1)))
    print(f"WAL written while loaded (the whole server): {wal_bytes / 1e6:.1f} MB = "
          f"{wal_bytes / max(steps, 1) / 1024:.1f} kB per step")
    print(spread("idle trigger->dispatch", idle["first_dispatch"]))
    print(spread("loaded trigger->first dispatch", loaded["first_dispatch"]))
    print(spread("loaded enqueue->dispatch (every task)", loaded["enqueue_dispatch"]))
    print(spread("loaded session end to end", loaded["end_to_end"]))
    print(spread("trigger API, 1 client, idle", idle_calls))
    print(spread(f"trigger API, {args.clients} clients, engine running", loaded_calls)
          + f"; {len(loaded_calls) / trigger_seconds:.1f} triggers/s")
    print(f"stand-in: duplicate attempts {len(stats['duplicate_attempts'])}, overlaps {len(stats['overlaps'])}, "
          f"max concurrent per agent {max(stats['max_concurrent_by_agent'].values(), default=0)}")
    if errors:
        print("first errors:", errors[:3])
    if args.apart:
        apart(args, stack, agents, noop, noop_ms)


def trigger_all(args, stack, agents: list[str]) -> tuple[list[str], list[float], float, list[str]]:
    """Trigger --sessions sessions over `agents` from --clients concurrent API clients;
    (session ids, call ms, wall seconds, errors)."""
    numbers = itertools.count()
    lock = threading.Lock()
    ids: list[str] = []
    calls: list[float] = []
    errors: list[str] = []

    def client_loop() -> None:
        client = stack.api()
        while True:
            with lock:
                n = next(numbers)
            if n >= args.sessions:
                return
            try:
                session_id, call_ms = trigger(client, agents[n % len(agents)])
            except Exception as exc:  # noqa: BLE001 (a benchmark reports, it does not stop)
                errors.append(str(exc))
                continue
            with lock:
                ids.append(session_id)
                calls.append(call_ms)

    seconds = run_threads([threading.Thread(target=client_loop) for _ in range(args.clients)])
    return ids, calls, seconds, errors


def apart(args, stack, agents: list[str], noop: float, noop_ms: float) -> None:
    """3. The two halves apart: --sessions more triggered with the fleet's dispatch off (the trigger
    API with nothing else running), then dispatch turned on (the engine with nothing else running)."""
    from django.db.models import Max
    from django.utils import timezone
    from django_q.models import OrmQ

    from sessions import engine
    from sessions.models import Session, Task
    from tests.e2e.harness import wait_until

    stack.standin("/_standin/stats/reset", {})
    engine.fleet_pause(by=engine.By.system(), reason="bench: triggers first")
    cpu_start = stack_cpu(stack)
    ids, calls, trigger_seconds, errors = trigger_all(args, stack, agents)
    trigger_cpu = cpu_delta(cpu_start, stack_cpu(stack))
    # Each agent's first job finds the switch off and leaves its task queued (held).
    wait_until(lambda: not OrmQ.objects.exists(), timeout=120, interval=0.1, what="held jobs ended")
    cpu_start = stack_cpu(stack)
    resumed_at = timezone.now()
    engine.fleet_resume(by=engine.By.system(), reason="bench: the engine alone")
    wait_sessions_final(ids, timeout=args.timeout, interval=0.25)
    engine_cpu = cpu_delta(cpu_start, stack_cpu(stack))
    end = Task.objects.filter(session_id__in=ids).aggregate(end=Max("finished_at"))["end"]
    steps = Task.objects.filter(session_id__in=ids, status="completed").count()
    seconds = (end - resumed_at).total_seconds()
    completed = Session.objects.filter(pk__in=ids, status="completed").count()
    figures = session_figures(ids)
    ends = [ms(ended - resumed_at) for ended in Session.objects.filter(pk__in=ids, ended_at__isnull=False)
            .values_list("ended_at", flat=True)]
    stats = stack.standin("/_standin/stats")

    print(f"apart: {len(ids)} sessions triggered with dispatch off (trigger errors: {len(errors)}), "
          f"then dispatch on: {completed} completed")
    print(spread(f"  trigger API alone, {args.clients} clients", calls)
          + f"; {len(calls) / trigger_seconds:.1f} triggers/s")
    print(cpu_line("  per trigger", trigger_cpu, max(len(calls), 1)))
    print(f"  engine alone: {steps} steps in {seconds:.2f}s from the resume = {steps / seconds:.1f} steps/s; "
          f"ratio to no-op jobs/s: {steps / seconds / noop:.2f}")
    print(cpu_line("  per step", engine_cpu, max(steps, 1)))
    standin_ms = engine_cpu.get("agentkit", 0.0) * 1000 / max(steps, 1)
    print(f"  ceiling while CPU-bound: a step costs at least its own job ({noop_ms:.1f} ms, as a no-op's) and the "
          f"stand-in's share ({standin_ms:.1f} ms) on the same cores: ratio <= {noop_ms / (noop_ms + standin_ms):.2f} "
          f"with no other work at all")
    print(spread("  enqueue->dispatch (every task)", figures["enqueue_dispatch"]))
    print(spread("  resume->session end", ends))
    print(f"  stand-in: duplicate attempts {len(stats['duplicate_attempts'])}, overlaps {len(stats['overlaps'])}")
    if errors:
        print("  first errors:", errors[:3])


def closed_loop(args, stack, agents: list[str]) -> None:
    from sessions.models import Session, Task

    per_agent = max(1, args.sessions // len(agents))
    errors: list[str] = []

    def loop(agent_id: str) -> None:
        client = stack.api()
        for _ in range(per_agent):
            response = client.post(f"/v1/opscore/agent/{agent_id}/workflow",
                                   json={"workflowDefinition": SPEC, "initialPayload": None})
            if response.status_code != 202:
                errors.append(f"{response.status_code} {response.text[:200]}")
                return
            session_id = response.json()["sessionId"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = client.get(f"/v1/opscore/sessions/{session_id}").json()["status"]
                if status in FINAL:
                    break
                time.sleep(0.02)

    elapsed = run_threads([threading.Thread(target=loop, args=(agent_id,)) for agent_id in agents])
    completed = Session.objects.filter(status="completed").count()
    steps = Task.objects.filter(status="completed").count()
    latencies = [ms(task.dispatched_at - task.session.created_at) for task in
                 Task.objects.filter(sequence=1, dispatched_at__isnull=False).select_related("session")]
    print(f"sessions completed: {completed}/{per_agent * len(agents)} (errors: {len(errors)})")
    print(f"workflow steps completed: {steps} in {elapsed:.2f}s = {steps / elapsed:.1f} steps/s")
    print(spread("trigger->dispatch latency", latencies))
    if errors:
        print("first errors:", errors[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("open", "closed"), default="open")
    parser.add_argument("--agents", type=int, default=None, help="stand-in agents (default 50 open, 5 closed)")
    parser.add_argument("--sessions", type=int, default=None, help="sessions (default 500 open, 100 closed)")
    parser.add_argument("--idle-sessions", type=int, default=20, help="open: sessions run one at a time first")
    parser.add_argument("--clients", type=int, default=4, help="open: concurrent API clients triggering")
    parser.add_argument("--timeout", type=float, default=900, help="open: seconds to wait for every session")
    parser.add_argument("--noop-jobs", type=int, default=500)
    parser.add_argument("--apart", action=argparse.BooleanOptionalAction, default=True,
                        help="open: then --sessions more triggered with dispatch off, and the engine alone")
    parser.add_argument("--workers", type=int, default=2, help="qcluster workers")
    parser.add_argument("--poll", type=float, default=1.0, help="django-q2 broker poll interval, seconds (Q_POLL)")
    parser.add_argument("--database", default=DB_NAME, help="database to drop, create and use")
    args = parser.parse_args()
    args.agents = args.agents or (50 if args.mode == "open" else 5)
    args.sessions = args.sessions or (500 if args.mode == "open" else 100)

    os.environ["DATABASE_URL"] = recreate_database(args.database)
    os.environ["DJANGO_SETTINGS_MODULE"] = "opscore_site.settings_test"
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from tests.e2e.harness import Stack, wait_until

    log_dir = Path(tempfile.mkdtemp(prefix="opscore-bench-"))
    stack = Stack(database_name=args.database, log_dir=log_dir)
    env_extra = {"Q_WORKERS": str(args.workers), "Q_POLL": str(args.poll)}
    try:
        stack.start_web()
        stack.start("qcluster", [sys.executable, "manage.py", "qcluster"], **env_extra)
        stack.start_scheduler()
        stack.start_agentkit(agents=args.agents, work_time="0")
        api = stack.api()
        # Every agent, not the first ones registered: the stand-in registers them one by one.
        def all_registered() -> list[str] | None:
            ids = [a["agentId"] for a in stack.standin("/_standin/agents")["agents"]]
            return ids if len(ids) >= args.agents else None

        agents = wait_until(all_registered, timeout=120, what=f"{args.agents} stand-in agents")
        wait_until(lambda: all(api.get(f"/v1/opscore/agent/{a}/state").status_code == 200 for a in agents),
                   timeout=120, what="agents known to Ops-Core")

        cpu_before = stack_cpu(stack)
        noop_seconds, noop = noop_rate(args.noop_jobs)
        noop_cpu = cpu_delta(cpu_before, stack_cpu(stack))
        print(f"machine: {os.cpu_count()} cores; mode: {args.mode}; qcluster workers: {args.workers}; "
              f"poll: {args.poll}s; broker: {settings.Q_CLUSTER.get('broker_class') or 'django-q2 ORM'}; "
              f"agents: {len(agents)}")
        print(f"raw django-q2 no-op jobs: {args.noop_jobs} in {noop_seconds:.2f}s = {noop:.1f} jobs/s")
        print(cpu_line("  per no-op job, enqueue to end", noop_cpu, args.noop_jobs))
        if args.mode == "open":
            open_loop(args, stack, agents, noop, sum(noop_cpu.values()) * 1000 / args.noop_jobs)
        else:
            closed_loop(args, stack, agents)
    finally:
        stack.stop_all()
        print(f"logs: {log_dir}")


if __name__ == "__main__":
    main()
