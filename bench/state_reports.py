#!/usr/bin/env python
"""Benchmark the hottest path: POST /v1/opscore/agent/{agentId}/state under load.

Creates its own PostgreSQL database (dropped and re-created each run), migrates it,
starts gunicorn on it, sends N reports over M agents from C concurrent clients
(threads with keep-alive httpx clients), and prints reports/s and p50/p99 latency.
Not a test: nothing is asserted.

    .venv/bin/python bench/state_reports.py --reports 5000 --agents 50 --concurrency 8
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchlib import percentile, recreate_database, run_threads  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "opk_bench-service-key-0123456789abcdef"
STATES = ["active", "idle"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=5000, help="total reports to send (default 5000)")
    parser.add_argument("--agents", type=int, default=50, help="distinct agent ids (default 50)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (default 1)")
    parser.add_argument("--port", type=int, default=18150)
    parser.add_argument("--database", default="opscore_bench_api")
    parser.add_argument("--throttle-rate", default="1000000/min",
                        help="OPSCORE_THROTTLE_RATE for the server; '' turns throttling off (default: on, "
                             "high enough never to refuse)")
    args = parser.parse_args()

    database_url = recreate_database(args.database)
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "opscore_site.settings",
           "SECRET_KEY": "bench-secret-key-" + "x" * 40, "OPSCORE_WEBHOOK_SECRET": "bench-webhook-secret",
           "OPSCORE_API_KEY": API_KEY, "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "false",
           "LOG_LEVEL": "WARNING", "DEBUG": "false", "OPSCORE_THROTTLE_RATE": args.throttle_rate,
           "AGENTKIT_API_URL": "http://127.0.0.1:9"}
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)

    server = subprocess.Popen(
        [str(Path(python).parent / "gunicorn"), "opscore_site.wsgi", "--bind", f"127.0.0.1:{args.port}",
         "--workers", str(args.workers), "--threads", str(args.threads), "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            print("bench: gunicorn did not become ready", file=sys.stderr)
            return 1

        work: queue.Queue[int] = queue.Queue()
        for n in range(args.reports):
            work.put(n)
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
                http.get("/health")  # connect once before timing
                while True:
                    try:
                        n = work.get_nowait()
                    except queue.Empty:
                        return
                    agent_id = f"bench-agent-{n % args.agents:05d}"
                    body = {"agentId": agent_id, "timestamp": datetime.now(UTC).isoformat(),
                            "state": STATES[n % 2], "details": {"n": n}}
                    started = time.perf_counter()
                    response = http.post(f"/v1/opscore/agent/{agent_id}/state", json=body)
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        wall = run_threads([threading.Thread(target=client) for _ in range(args.concurrency)])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    latencies.sort()
    print(f"reports: {len(latencies)} over {args.agents} agents, {args.concurrency} clients, "
          f"gunicorn {args.workers}x{args.threads}, throttle {args.throttle_rate or 'off'}")
    print(f"status codes: {dict(sorted(statuses.items()))}")
    print(f"throughput: {len(latencies) / wall:.0f} reports/s ({wall:.2f}s wall)")
    print(f"latency: p50 {percentile(latencies, 0.50) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
          f"mean {statistics.fmean(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
