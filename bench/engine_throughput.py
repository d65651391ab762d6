"""Benchmark: end-to-end workflow steps per second and trigger->dispatch latency, next to raw
django-q2 no-op jobs per second, in one run on this machine.

Starts gunicorn, one qcluster, the scheduler loop and the AgentKit stand-in with instant
agents against a fresh PostgreSQL database, then:
  1. enqueues --noop-jobs no-op django-q2 jobs and times until the cluster has run them all;
  2. runs --sessions two-step sessions over --agents agents (each agent in a closed loop:
     trigger through the API, wait for completion, trigger again) and prints steps/s and the
     p50/p99 latency from a session's creation to its first task's dispatch.

Usage: .venv/bin/python bench/engine_throughput.py [--agents 5] [--sessions 100] [--noop-jobs 500]
Needs PostgreSQL at DATABASE_URL (default 127.0.0.1:5432, user postgres); uses the database
opscore_bench_engine on that server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import percentile, recreate_database  # noqa: E402 (bench/ is the script's directory)

DB_NAME = "opscore_bench_engine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--noop-jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="qcluster workers")
    parser.add_argument("--poll", type=float, default=1.0, help="django-q2 broker poll interval, seconds (Q_POLL)")
    args = parser.parse_args()

    os.environ["DATABASE_URL"] = recreate_database(DB_NAME)
    os.environ["DJANGO_SETTINGS_MODULE"] = "opscore_site.settings_test"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    import httpx
    from django_q.models import Success
    from django_q.tasks import async_task

    from sessions.models import Session, Task
    from tests.e2e.harness import Stack, wait_until

    log_dir = Path(tempfile.mkdtemp(prefix="opscore-bench-"))
    stack = Stack(database_name=DB_NAME, log_dir=log_dir)
    env_extra = {"Q_WORKERS": str(args.workers), "Q_POLL": str(args.poll)}
    try:
        stack.start_web()
        stack.start("qcluster", [sys.executable, "manage.py", "qcluster"], **env_extra)
        stack.start_scheduler()
        stack.start_agentkit(agents=args.agents, work_time="0")

        # 1. Raw django-q2 throughput with a no-op job.
        Success.objects.all().delete()
        started = time.monotonic()
        for i in range(args.noop_jobs):
            async_task("sessions.tasks.noop_job", i)
        wait_until(lambda: Success.objects.filter(func="sessions.tasks.noop_job").count() >= args.noop_jobs,
                   timeout=600, interval=0.1, what="no-op jobs")
        noop_elapsed = time.monotonic() - started
        noop_rate = args.noop_jobs / noop_elapsed

        # 2. Workflow steps through the whole product.
        api = stack.api()
        agents = wait_until(lambda: [a["agentId"] for a in stack.standin("/_standin/agents")["agents"]],
                            timeout=30, what="stand-in agents")
        wait_until(lambda: all(api.get(f"/v1/opscore/agent/{a}/state").status_code == 200 for a in agents),
                   timeout=30, what="agents known to Ops-Core")
        spec = {"id": "bench-two-step", "name": "Bench", "tasks": [
            {"taskId": "one", "nextTaskId": "two", "timeoutSeconds": 30},
            {"taskId": "two", "timeoutSeconds": 30}]}
        per_agent = max(1, args.sessions // len(agents))
        errors: list[str] = []

        def loop(agent_id: str) -> None:
            client = stack.api()
            for _ in range(per_agent):
                response = client.post(f"/v1/opscore/agent/{agent_id}/workflow",
                                       json={"workflowDefinition": spec, "initialPayload": None})
                if response.status_code != 202:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                session_id = response.json()["sessionId"]
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    status = client.get(f"/v1/opscore/sessions/{session_id}").json()["status"]
                    if status in ("completed", "failed", "cancelled"):
                        break
                    time.sleep(0.02)

        threads = [threading.Thread(target=loop, args=(agent_id,)) for agent_id in agents]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        completed = Session.objects.filter(status="completed").count()
        steps = Task.objects.filter(status="completed").count()
        latencies = []
        for task in Task.objects.filter(sequence=1, dispatched_at__isnull=False).select_related("session"):
            latencies.append((task.dispatched_at - task.session.created_at).total_seconds() * 1000)

        print(f"machine: {os.cpu_count()} cores; qcluster workers: {args.workers}; poll: {args.poll}s; "
              f"agents: {len(agents)}")
        print(f"raw django-q2 no-op jobs: {args.noop_jobs} in {noop_elapsed:.2f}s = {noop_rate:.1f} jobs/s")
        print(f"sessions completed: {completed}/{per_agent * len(agents)} (errors: {len(errors)})")
        print(f"workflow steps completed: {steps} in {elapsed:.2f}s = {steps / elapsed:.1f} steps/s")
        if latencies:
            print(f"trigger->dispatch latency: p50 {statistics.median(latencies):.1f} ms, "
                  f"p99 {percentile(latencies, 0.99):.1f} ms (n={len(latencies)})")
        if errors:
            print("first errors:", errors[:3])
    finally:
        stack.stop_all()
        print(f"logs: {log_dir}")


if __name__ == "__main__":
    main()
