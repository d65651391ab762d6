"""Prometheus multiprocess mode over real processes: gunicorn (2 workers, deploy/gunicorn.conf.py), a
qcluster, the scheduler and the AgentKit stand-in share one PROMETHEUS_MULTIPROC_DIR, and one scrape
of any web worker shows the sum of what every process counted, equal to what the database says."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from agents.models import AgentState
from sessions.models import Task, TaskAttempt
from tests.e2e.harness import BIN, Stack, wait_until
from tests.e2e.test_engine_e2e import agents_known, fast_spec, trigger, wait_all_final

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOKEN = "e2e-scrape-token"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def per_process(directory: Path, scratch: Path) -> dict[int, dict[tuple[str, tuple], float]]:
    """What each process wrote: the collector run over each pid's files alone."""
    found: dict[int, dict] = {}
    for pid in sorted({int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("*.db")}):
        own = scratch / str(pid)
        own.mkdir(parents=True)
        for path in directory.glob(f"*_{pid}.db"):
            shutil.copy(path, own / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(own))
        found[pid] = {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for metric in registry.collect() for s in metric.samples}
    return found


def test_one_scrape_sums_the_counters_of_every_process(stack: Stack, tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "OPSCORE_METRICS_TOKEN": TOKEN}
    stack.start("web", [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "opscore_site.wsgi", "--bind",
                        f"127.0.0.1:{stack.web_port}", "--workers", "2", "--threads", "4", "--timeout", "30",
                        "--no-control-socket"], **env)
    wait_until(lambda: httpx.get(f"{stack.web_url}/ready", timeout=2).status_code == 200, timeout=30,
               what="gunicorn /ready")
    stack.start("qcluster", [sys.executable, "manage.py", "qcluster"], **env)
    stack.start("scheduler", [sys.executable, "manage.py", "opscore_scheduler"], **env)
    stack.start_agentkit(agents=3, work_time="0.05-0.15")
    agent_ids = agents_known(stack, 3)

    sessions = [trigger(stack, agent_ids[i % 3], {"workflowDefinition": fast_spec("metrics-e2e")})
                for i in range(9)]
    statuses = wait_all_final(stack, sessions, timeout=120)
    assert set(statuses.values()) == {"completed"}

    assert httpx.get(f"{stack.web_url}/metrics", timeout=10).status_code == 401
    scrape = lambda: httpx.get(f"{stack.web_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},  # noqa: E731
                               timeout=10)
    # The scheduler's heartbeat is written after its first clean pass.
    wait_until(lambda: samples(scrape().text)[("opscore_scheduler_last_pass_timestamp_seconds", ())] > 0,
               timeout=20, what="a scheduler pass")
    response = scrape()
    assert response.status_code == 200
    total = samples(response.text)

    completed = Task.objects.filter(status=Task.Status.COMPLETED).count()
    posted = TaskAttempt.objects.filter(http_status=202).count()
    assert completed == 18
    assert total[("opscore_tasks_total", (("outcome", "completed"),))] == completed
    assert total[("opscore_agentkit_requests_total", (("code", "202"),))] == posted
    assert total[("opscore_task_schedule_to_start_seconds_count", ())] == TaskAttempt.objects.count()
    assert total[("opscore_sessions_finished_total", (("status", "completed"),))] == 9
    assert total[("opscore_queue_depth", ())] == 0
    assert total[("opscore_agents", (("state", "idle"),))] == 3
    state_posts = sum(value for (name, labels), value in total.items()
                      if name == "opscore_http_request_duration_seconds_count"
                      and ("endpoint", "v1/opscore/agent/<opsid:agent_id>/state") in labels and ("method", "POST") in labels)
    assert state_posts >= 2 * completed  # each task: at least an `active` and an `idle` report
    reports = sum(value for (name, labels), value in total.items() if name == "opscore_state_reports_total")
    assert reports == AgentState.objects.count()  # every recorded report, from either gunicorn worker

    # Several processes wrote: completions are counted where reports arrive (the web workers),
    # AgentKit requests where dispatch jobs run (the qcluster's workers); the scrape is their sum.
    by_pid = per_process(directory, tmp_path / "split")
    completing = {pid for pid, seen in by_pid.items() if seen.get(("opscore_tasks_total", (("outcome", "completed"),)))}
    posting = {pid for pid, seen in by_pid.items()
               if seen.get(("opscore_agentkit_requests_total", (("code", "202"),)))}
    assert completing and posting and not completing & posting
    assert len(completing | posting) >= 2
    assert sum(by_pid[pid][("opscore_tasks_total", (("outcome", "completed"),))] for pid in completing) == completed
