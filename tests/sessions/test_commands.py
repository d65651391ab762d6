"""The sessions maintenance commands through call_command, on top of the real engine.

AgentKit is stubbed at the HTTP seam (tests/sessions/conftest.py).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import OrmQ, Success
from django_q.models import Task as QTask
from django_q.signing import SignedPackage
from django_q.status import Stat, Status

from agents.models import Agent, AgentState
from sessions import engine, sweeps
from sessions.engine import By
from sessions.management.commands.opscore_scheduler import HEARTBEAT_KEY
from sessions.models import Actor, Session, Task, TaskEvent
from tests.agents.factories import AgentFactory, AgentStateFactory
from tests.workflows.factories import WorkflowDefinitionFactory, two_step_spec

pytestmark = pytest.mark.django_db

S = Task.Status
SS = Session.Status


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def start(agent=None, workflow_id=None) -> Session:
    workflow_id = workflow_id or f"wf-{uuid.uuid4().hex[:8]}"
    definition = WorkflowDefinitionFactory(id=workflow_id, spec=two_step_spec(workflow_id))
    return engine.session_start(definition=definition, agent=agent or AgentFactory(), by=By.system())


def dead_task(agentkit_stub, *, agent=None, workflow_id=None, detail="Agent with ID 'x' not found.") -> Task:
    """A session whose first task went dead on a permanent AgentKit answer (the session failed)."""
    agentkit_stub.respond(404, {"detail": detail})
    session = start(agent, workflow_id)
    agentkit_stub.answer = agentkit_stub.accept
    task = session.tasks.get()
    assert task.status == S.DEAD
    return task


# --------------------------------------------------------------------------- opscore_retry


def test_retry_dry_run_counts_and_lists_but_changes_nothing(q_sync, agentkit_stub):
    task = dead_task(agentkit_stub, workflow_id="billing")
    dead_task(agentkit_stub, workflow_id="other")
    out, _ = run("opscore_retry", "--workflow", "billing", "--dry-run")
    assert out.startswith("1 task(s) match\n")
    assert str(task.pk) in out and "billing/step_1" in out and "dry run: nothing retried" in out
    task.refresh_from_db()
    assert task.status == S.DEAD


def test_retry_with_filters_and_yes_retries_through_the_engine(q_sync, agentkit_stub, operator):
    agent = AgentFactory()
    wanted = dead_task(agentkit_stub, agent=agent, detail="gone away")
    dead_task(agentkit_stub, detail="something else")  # another agent and another error
    out, _ = run("opscore_retry", "--agent", agent.pk, "--error-contains", "GONE", "--since", "1h",
                 "--user", operator.username, "--yes")
    assert out.startswith("1 task(s) match") and "retried 1, skipped 0" in out
    wanted.refresh_from_db()
    assert wanted.status == S.DISPATCHED and wanted.attempt == 2
    assert Session.objects.get(pk=wanted.session_id).status == SS.RUNNING
    event = TaskEvent.objects.filter(task=wanted, new_status=S.QUEUED).latest("id")
    assert event.old_status == S.DEAD and event.reason == "opscore_retry" and event.actor == Actor.OPERATOR and event.actor_user == operator
    assert Task.objects.filter(status=S.DEAD).count() == 1


def test_retry_leaves_out_a_task_whose_fallback_took_over(q_sync, agentkit_stub):
    spec = two_step_spec("with-fallback", fallbackTaskId="step_2")
    agentkit_stub.respond(404)
    session = engine.session_start(definition=WorkflowDefinitionFactory(id=spec["id"], spec=spec),
                                   agent=AgentFactory(), by=By.system())
    agentkit_stub.answer = agentkit_stub.accept
    first, fallback = session.tasks.order_by("sequence")
    assert (first.status, fallback.status) == (S.DEAD, S.DEAD)
    out, _ = run("opscore_retry", "--yes")
    assert "1 task(s) match" in out and str(first.pk) not in out  # the engine would refuse it
    assert "retried 1, skipped 0" in out
    fallback.refresh_from_db()
    assert fallback.status == S.DISPATCHED


def test_retry_time_window_and_status_filters(q_sync, agentkit_stub):
    dead_task(agentkit_stub)
    assert run("opscore_retry", "--until", "1h", "--dry-run")[0].startswith("0 task(s) match")
    assert run("opscore_retry", "--since", (timezone.now() - timedelta(minutes=5)).isoformat(),
               "--dry-run")[0].startswith("1 task(s) match")
    assert run("opscore_retry", "--status", "failed", "--dry-run")[0].startswith("0 task(s) match")


def test_retry_refuses_bad_input_and_acting_without_confirmation(q_sync, agentkit_stub):
    task = dead_task(agentkit_stub)
    with pytest.raises(CommandError, match="--since: 'yesterday' is neither a duration"):
        run("opscore_retry", "--since", "yesterday")
    with pytest.raises(CommandError, match="--until: '999999999d' is longer than 36500d"):
        run("opscore_retry", "--until", "999999999d", "--yes")
    with pytest.raises(CommandError, match="--user: no user named 'nobody'"):
        run("opscore_retry", "--user", "nobody", "--yes")
    with pytest.raises(CommandError, match="pass --yes"):
        run("opscore_retry")  # stdin is not a terminal under pytest
    task.refresh_from_db()
    assert task.status == S.DEAD


# --------------------------------------------------------------------------- opscore_prune


def old(days: int):
    return timezone.now() - timedelta(days=days)


@pytest.fixture
def history(q_sync, agentkit_stub, operator):
    agent = AgentFactory()
    AgentStateFactory.create_batch(3, agent=agent, received_at=old(40))
    recent_state = AgentStateFactory(agent=agent, received_at=old(1))
    finished = dead_task(agentkit_stub, agent=agent).session  # failed
    cancelled = start(AgentFactory(state=Agent.State.ACTIVE))
    engine.session_cancel(session=cancelled, by=By.operator(operator))
    Session.objects.filter(pk__in=[finished.pk, cancelled.pk]).update(ended_at=old(40))
    recent = dead_task(agentkit_stub).session  # ended just now
    running = start(AgentFactory(state=Agent.State.ACTIVE))  # queued, pending: never pruned
    Session.objects.filter(pk=running.pk).update(created_at=old(60), updated_at=old(60))
    for n, stopped in enumerate([old(40), old(40), old(1)]):
        QTask.objects.create(id=f"job{n}", name=f"job{n}", func="sessions.tasks.noop_job",
                             started=stopped, stopped=stopped, success=True)
    QTask.objects.create(id="fail", name="fail", func="x", started=old(40), stopped=old(40), success=False)
    return {"agent": agent, "recent_state": recent_state, "finished": finished, "cancelled": cancelled,
            "recent": recent, "running": running}


def test_prune_deletes_old_history_in_batches_and_never_unfinished_sessions(history):
    out, err = run("opscore_prune", "--older-than", "30d", "--batch-size", "2")
    assert "agent state reports: 3 deleted" in out
    assert "finished sessions: 2 deleted" in out
    assert "django-q2 successes: 2 deleted" in out
    assert "[" + "#" * 30 + "] 3/3" in err and "] 2/3" in err  # two batches of agent states
    assert list(AgentState.objects.values_list("pk", flat=True)) == [history["recent_state"].pk]
    assert set(Session.objects.values_list("pk", flat=True)) == {history["recent"].pk, history["running"].pk}
    assert not Task.objects.filter(session_id__in=[history["finished"].pk, history["cancelled"].pk]).exists()
    assert not TaskEvent.objects.filter(session_id=history["finished"].pk).exists()
    assert Agent.objects.filter(pk=history["agent"].pk).exists()
    assert list(Success.objects.filter(id__startswith="job").values_list("id", flat=True)) == ["job2"]
    assert QTask.objects.filter(id="fail").exists()  # failures are kept for operators


def test_prune_dry_run_counts_only(history):
    out, _ = run("opscore_prune", "--older-than", "30d", "--dry-run")
    assert "agent state reports: 3 would be deleted" in out and "finished sessions: 2 would be deleted" in out
    assert "django-q2 successes: 2 would be deleted" in out and "dry run: nothing deleted" in out
    assert AgentState.objects.count() == 4 and Session.objects.count() == 4
    assert Success.objects.filter(id__startswith="job").count() == 3


def test_prune_deletes_the_throttle_counters_at_rest(db):
    import time

    from opscore_site.throttle import throttle_hit, throttle_prune
    from tests.site.test_throttle import empty_table

    empty_table()
    throttle_hit("at-rest", num_requests=10, duration=60, now=time.time() - 3600)  # full again long ago
    throttle_hit("counting", num_requests=10, duration=3600, now=time.time())
    out, _ = run("opscore_prune", "--dry-run")
    assert "throttle counters at rest: 1 would be deleted" in out
    out, _ = run("opscore_prune")
    assert "throttle counters at rest: 1 deleted" in out
    assert throttle_prune(now=time.time() + 3600, dry_run=True) == 1  # "counting" is still there


def test_prune_defaults_to_the_retention_setting(history, settings):
    settings.OPSCORE_RETENTION_DAYS = 50
    out, _ = run("opscore_prune", "--dry-run")
    assert "older than 50d" in out and "agent state reports: 0 would be deleted" in out


@pytest.mark.parametrize("args,message", [
    (["--older-than", "30"], "--older-than: '30' is not a duration"),
    (["--older-than", "0d"], "not a positive duration"),
    (["--older-than", "3w"], "is not a duration"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--batch-size", "99999999999999999999"], "--batch-size must be at least 1 and at most 100000"),
    (["--older-than", "99999999999d"], "--older-than: '99999999999d' is longer than 36500d"),
    (["--older-than", "999999999d"], "is longer than 36500d"),
])
def test_prune_refuses_bad_input(args, message):
    AgentStateFactory(received_at=old(400))
    with pytest.raises(CommandError, match=message):
        run("opscore_prune", *args)
    assert AgentState.objects.count() == 1


# --------------------------------------------------------------------------- opscore_requeue_stuck


def test_requeue_stuck_times_out_overdue_attempts_and_reenqueues_lost_jobs(q_sync, agentkit_stub, settings):
    overdue = start().tasks.get()
    assert overdue.status == S.DISPATCHED
    Task.objects.filter(pk=overdue.pk).update(timeout_at=timezone.now() - timedelta(seconds=5))
    q_sync.SYNC = False  # the next job stays in the broker: a "lost" one
    waiting_agent = AgentFactory(state=Agent.State.ACTIVE)
    lost = start(waiting_agent).tasks.get()
    Task.objects.filter(pk=lost.pk).update(enqueued_at=timezone.now() - timedelta(hours=1))
    Agent.objects.filter(pk=waiting_agent.pk).update(state=Agent.State.IDLE)
    jobs_before = OrmQ.objects.count()

    dry, _ = run("opscore_requeue_stuck", "--dry-run")
    assert "0 due retry(s), 1 overdue attempt(s), 1 queued task(s) with a lost job" in dry
    assert f"overdue  {overdue.pk}" in dry and f"lost     {lost.pk}" in dry and "dry run" in dry
    assert OrmQ.objects.count() == jobs_before and Task.objects.get(pk=overdue.pk).status == S.DISPATCHED

    out, _ = run("opscore_requeue_stuck")
    assert "retried 0, timed out 1, re-enqueued 1" in out
    overdue.refresh_from_db()
    lost.refresh_from_db()
    assert overdue.status == S.RETRY_SCHEDULED and "no outcome within" in overdue.last_error
    assert lost.enqueued_at > timezone.now() - timedelta(minutes=1)
    assert OrmQ.objects.count() == jobs_before + 1


def test_requeue_stuck_with_nothing_stuck_and_bad_input(q_sync, agentkit_stub):
    start()
    out, _ = run("opscore_requeue_stuck")
    assert "0 due retry(s), 0 overdue attempt(s), 0 queued task(s)" in out
    assert "retried 0, timed out 0, re-enqueued 0" in out
    with pytest.raises(CommandError, match="--limit must be at least 1"):
        run("opscore_requeue_stuck", "--limit", "0")
    with pytest.raises(CommandError, match="--limit must be at least 1 and at most 100000"):
        run("opscore_requeue_stuck", "--limit", "99999999999999999999")


# --------------------------------------------------------------------------- opscore_status


def alive_cluster() -> None:
    """What a running qcluster leaves in the shared cache (django-q2's own stat record)."""
    status = Status(pid=4242, cluster_id="test-cluster")
    status.status, status.workers = "Idle", [1, 2]
    get_broker().set_stat(Stat.get_key("test-cluster"), SignedPackage.dumps(status, True), 30)


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


def test_status_is_healthy_with_a_fresh_heartbeat_and_a_live_cluster(q_sync, agentkit_stub):
    dead_task(agentkit_stub)
    AgentFactory(state=Agent.State.ACTIVE, last_seen_at=timezone.now() - timedelta(days=1))
    cache.set(HEARTBEAT_KEY, timezone.now().isoformat(), timeout=None)
    alive_cluster()
    out, _ = run("opscore_status")
    assert "health     OK" in out and "1 alive" in out and "failures waiting 1" in out
    assert "stale 1" in out and "failed 1" in out

    data = json.loads(run("opscore_status", "--json")[0])
    assert data["healthy"] is True and data["problems"] == []
    assert data["agents"]["by_state"] == {"active": 1, "idle": 1} and data["agents"]["stale"] == 1
    assert data["sessions"]["last_24h_by_status"] == {"failed": 1}
    assert data["tasks"]["failures_waiting"] == 1 and data["cluster"]["alive"] == 1
    assert data["scheduler"]["heartbeat_age_seconds"] < 5


def test_status_exits_2_and_names_every_problem_when_unhealthy():
    out = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("opscore_status", stdout=out)
    assert exit_.value.code == 2
    assert "UNHEALTHY" in out.getvalue()
    assert "the scheduler has never reported" in out.getvalue() and "no django-q2 cluster is alive" in out.getvalue()


def test_status_flags_an_old_heartbeat_and_a_job_waiting_too_long():
    cache.set(HEARTBEAT_KEY, (timezone.now() - timedelta(seconds=90)).isoformat(), timeout=None)
    alive_cluster()
    OrmQ.objects.create(key="opscore", payload="x", lock=timezone.now() - timedelta(seconds=600))
    out = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("opscore_status", "--json", "--max-queue-age", "120", stdout=out)
    assert exit_.value.code == 2
    data = json.loads(out.getvalue())
    assert data["queue"]["depth"] == 1 and data["queue"]["oldest_waiting_seconds"] >= 600
    assert any("last pass was 90s ago" in p for p in data["problems"])
    assert any("oldest queued job has waited 600s (limit 120s)" in p for p in data["problems"])
    # A longer limit makes the same system healthy again (for the queue); the heartbeat still fails.
    with pytest.raises(SystemExit):
        call_command("opscore_status", "--max-queue-age", "900", stdout=StringIO())
    call_command("opscore_status", "--max-queue-age", "900", "--max-heartbeat-age", "120", stdout=StringIO())


@pytest.mark.parametrize("args", [["--max-queue-age", "0"], ["--max-queue-age", "nan"], ["--max-queue-age", "inf"],
                                  ["--max-heartbeat-age", "-1"], ["--max-heartbeat-age", "nan"]])
def test_status_refuses_bad_thresholds(args):
    """nan compares false with every age: a monitor that could never alert."""
    with pytest.raises(CommandError, match=f"{args[0]} must be a positive number of seconds"):
        run("opscore_status", *args)


# --------------------------------------------------------------------------- opscore_scheduler


@pytest.fixture
def stuck(q_sync, agentkit_stub):
    """A retry that is due and an attempt past its deadline."""
    agentkit_stub.respond(503)
    retry = start().tasks.get()
    agentkit_stub.answer = agentkit_stub.accept
    assert retry.status == S.RETRY_SCHEDULED
    Task.objects.filter(pk=retry.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    overdue = start().tasks.get()
    assert overdue.status == S.DISPATCHED
    Task.objects.filter(pk=overdue.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))
    return retry, overdue


def test_scheduler_once_runs_one_pass_and_writes_the_heartbeat(stuck):
    retry, overdue = stuck
    out, _ = run("opscore_scheduler", "--once")
    assert out.startswith("retries_due=1 timed_out=1 queue_timeouts=0 requeued=0")
    retry.refresh_from_db()
    overdue.refresh_from_db()
    assert retry.status == S.DISPATCHED and retry.attempt == 2  # re-queued, then dispatched (sync jobs)
    assert overdue.status == S.RETRY_SCHEDULED and "no outcome within" in overdue.last_error
    assert cache.get(HEARTBEAT_KEY)


def test_requeue_stuck_also_requeues_due_retries(stuck):
    """With the scheduler down, a due retry would otherwise wait for ever."""
    retry, overdue = stuck
    dry, _ = run("opscore_requeue_stuck", "--dry-run")
    assert dry.startswith("1 due retry(s), 1 overdue attempt(s)") and f"retry    {retry.pk}" in dry
    assert Task.objects.get(pk=retry.pk).status == S.RETRY_SCHEDULED
    out, _ = run("opscore_requeue_stuck")
    assert "retried 1, timed out 1, re-enqueued 0" in out
    retry.refresh_from_db()
    assert retry.status == S.DISPATCHED and retry.attempt == 2


def test_a_scheduler_pass_with_a_failed_sweep_writes_no_heartbeat(stuck, monkeypatch):
    """opscore_status must not call a scheduler healthy while a sweep keeps failing (a defect in one here)."""
    def broken(**kwargs):
        raise ValueError("a snapshot the engine cannot read")

    monkeypatch.setattr(sweeps, "sweep_timeouts", broken)
    with pytest.raises(CommandError, match="timed_out: ValueError: a snapshot the engine cannot read"):
        run("opscore_scheduler", "--once")
    assert cache.get(HEARTBEAT_KEY) is None
    assert Task.objects.get(pk=stuck[0].pk).status == S.DISPATCHED  # the retry sweep still ran


def test_scheduler_dry_run_counts_one_pass_and_changes_nothing(stuck):
    retry, overdue = stuck
    jobs = OrmQ.objects.count()
    out, _ = run("opscore_scheduler", "--dry-run")
    assert out == "dry run, nothing changed: would be retries_due=1 timed_out=1 queue_timeouts=0 requeued=0 approvals_timed_out=0\n"
    assert Task.objects.get(pk=retry.pk).status == S.RETRY_SCHEDULED
    assert Task.objects.get(pk=overdue.pk).status == S.DISPATCHED
    assert OrmQ.objects.count() == jobs and cache.get(HEARTBEAT_KEY) is None


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "3601"])
def test_scheduler_refuses_a_bad_interval(stuck, value):
    retry, _ = stuck
    with pytest.raises(CommandError, match="--interval must be a positive number of seconds, at most 3600"):
        run("opscore_scheduler", "--once", f"--interval={value}")
    assert Task.objects.get(pk=retry.pk).status == S.RETRY_SCHEDULED


# --------------------------------------------------------------------------- opscore_demo_traffic


def test_demo_traffic_starts_one_session_per_idle_free_agent(q_sync, agentkit_stub, settings):
    settings.DEBUG = True
    idle = AgentFactory()
    AgentFactory(state=Agent.State.ACTIVE)
    AgentFactory(deregistered_at=timezone.now())
    WorkflowDefinitionFactory(id="demo", spec=two_step_spec("demo"))
    out, _ = run("opscore_demo_traffic", "--once")
    assert "started 1 session(s)" in out
    assert list(Session.objects.values_list("agent_id", "workflow_id")) == [(idle.pk, "demo")]
    assert "started 0 session(s)" in run("opscore_demo_traffic", "--once")[0]  # it has one unfinished


def test_demo_traffic_dry_run_lists_the_agents_and_starts_nothing(q_sync, agentkit_stub, settings):
    settings.DEBUG = True
    idle = AgentFactory()
    AgentFactory(state=Agent.State.ACTIVE)
    WorkflowDefinitionFactory(id="demo", spec=two_step_spec("demo"))
    jobs = OrmQ.objects.count()
    out, _ = run("opscore_demo_traffic", "--dry-run")  # one round, even without --once
    assert out == f"  would start demo for {idle.pk}\ndemo traffic: dry run, nothing started: would start 1 session(s)\n"
    assert not Session.objects.exists() and OrmQ.objects.count() == jobs and agentkit_stub.requests == []


def test_demo_traffic_refuses_production_and_unknown_workflows(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="needs DEBUG=1"):
        run("opscore_demo_traffic", "--once")
    with pytest.raises(CommandError, match="no workflow definition with id: nope"):
        run("opscore_demo_traffic", "--once", "--force", "--workflow", "nope")


@pytest.mark.parametrize("args,message", [
    (["--interval", "nan"], "--interval must be a positive number of seconds"),  # a loop without a pause
    (["--interval", "0"], "--interval must be a positive number of seconds"),
    (["--max-per-round", "0"], "--max-per-round must be at least 1"),
    (["--max-per-round", "99999999999999999999"], "--max-per-round must be at least 1 and at most 1000"),
])
def test_demo_traffic_refuses_bad_numbers(settings, args, message):
    settings.DEBUG = True
    AgentFactory()
    WorkflowDefinitionFactory(id="demo", spec=two_step_spec("demo"))
    with pytest.raises(CommandError, match=message):
        run("opscore_demo_traffic", "--once", *args)
    assert not Session.objects.exists()


@pytest.mark.django_db(transaction=True)  # the command runs in a subprocess: the rows must be committed
@pytest.mark.parametrize("keys", [b"\x04", b"n\n"], ids=["ctrl-d", "no"])
def test_retry_prompt_on_a_terminal_takes_ctrl_d_as_no(keys):
    expected = "cancelled: nothing retried"
    import os
    import pty
    import select
    import subprocess
    import sys
    import time
    from pathlib import Path

    from django.db import connection

    from tests.e2e.harness import database_url
    from tests.sessions.factories import TaskFactory

    task = TaskFactory(status=S.DEAD, last_error="gone")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "opscore_retry"], cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "DATABASE_URL": database_url(connection.settings_dict["NAME"])},
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    output, deadline, sent = b"", time.monotonic() + 60, False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if not sent and b"[y/N]" in output:
                os.write(master, keys)
                sent = True
            if proc.poll() is not None and not ready:
                break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = output.decode(errors="replace")
    assert sent, text
    assert proc.returncode == 1 and expected in text and "Traceback" not in text, text
    task.refresh_from_db()
    assert task.status == S.DEAD
