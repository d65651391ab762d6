"""opscore_pause, opscore_resume, opscore_fleet and opscore_approve: each calls the engine, says who,
has a --dry-run, and refuses bad input with a CommandError."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError

from sessions.models import ControlEvent, FleetDispatch, Session, Task, TaskEvent
from tests.sessions.test_approvals import review_spec, waiting
from tests.sessions.test_commands import run
from tests.sessions.test_engine import start, task_of
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db

SS = Session.Status


def test_pause_and_resume_sessions_by_id(agentkit_stub, operator):
    first, second = start(), start()
    out, _ = run("opscore_pause", str(first.pk), str(second.pk), "--reason", "deploy", "--user", "alice")
    assert out == "paused 2, skipped 0\n"
    assert set(Session.objects.values_list("status", flat=True)) == {SS.PAUSED}
    assert TaskEvent.objects.filter(new_status=SS.PAUSED, actor_user=operator, reason="deploy").count() == 2
    out, _ = run("opscore_pause", str(first.pk))
    assert out.startswith(f"  skipped {first.pk}: session {first.pk} is paused") and out.endswith(
        "paused 0, skipped 1\n")
    out, _ = run("opscore_resume", str(first.pk), "--dry-run")
    assert out == "resumed 1, skipped 0\ndry run: nothing changed\n"
    assert Session.objects.get(pk=first.pk).status == SS.PAUSED
    out, _ = run("opscore_resume", str(first.pk), str(second.pk))
    assert out == "resumed 2, skipped 0\n"
    assert TaskEvent.objects.filter(old_status=SS.PAUSED, reason="opscore_resume").count() == 2


def test_pause_and_resume_a_workflow_definition(agentkit_stub):
    definition = WorkflowDefinitionFactory(id="cmd-wf")
    from sessions.engine import By, session_start
    from tests.agents.factories import AgentFactory

    session = session_start(definition=definition, agent=AgentFactory(), by=By.system())
    out, _ = run("opscore_pause", "--workflow", "cmd-wf", "--sessions", "--reason", "bad prompt")
    assert out == "workflow 'cmd-wf' paused; 1 session(s) paused\n"
    assert Session.objects.get(pk=session.pk).status == SS.PAUSED
    with pytest.raises(CommandError, match="already paused"):
        run("opscore_pause", "--workflow", "cmd-wf")
    out, _ = run("opscore_resume", "--workflow", "cmd-wf", "--sessions")
    assert out == "workflow 'cmd-wf' resumed; 1 session(s) released or resumed\n"
    assert ControlEvent.objects.filter(target="cmd-wf").count() == 2


@pytest.mark.parametrize("args, message", [
    ((), "give one or more session ids"),
    (("not-a-uuid",), "no session 'not-a-uuid'"),
    (("00000000-0000-0000-0000-000000000000",), "no session"),
    (("--workflow", "nope"), "no workflow definition 'nope'"),
    (("--sessions",), "--sessions goes with --workflow"),
    (("--user", "nobody", "--workflow", "x"), "no user named 'nobody'"),
])
def test_pause_refuses_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        run("opscore_pause", *args)


def test_the_fleet_switch_command(agentkit_stub, operator):
    assert run("opscore_fleet")[0] == "dispatch is on\n"
    out, _ = run("opscore_fleet", "off", "--reason", "db upgrade", "--user", "alice")
    assert out.startswith("dispatch is OFF since ") and "by alice: db upgrade" in out
    assert FleetDispatch.current().is_off
    with pytest.raises(CommandError, match="already paused"):
        run("opscore_fleet", "off")
    out, _ = run("opscore_fleet", "on", "--dry-run")
    assert "dry run: nothing changed" in out and FleetDispatch.current().is_off
    out, _ = run("opscore_fleet", "on")
    assert out.startswith("held work kicked for 0 agent(s)\ndispatch is on\n")
    assert not FleetDispatch.current().is_off


def test_approve_lists_and_decides(q_sync, agentkit_stub):
    session, review = waiting(review_spec("cmd-review"))
    out, _ = run("opscore_approve")
    assert out.startswith("1 approval(s) waiting\n") and f"{review.pk}  cmd-review/review  approvers any operator" in out
    out, _ = run("opscore_approve", str(review.pk), "--reject", "--comment", "not now")
    assert out == f"rejected {review.pk} by system\n"
    review.refresh_from_db()
    assert review.status == Task.Status.REJECTED and review.result["comment"] == "not now"
    assert task_of(session, 3).step_id == "rework"
    with pytest.raises(CommandError, match="not an approval waiting"):
        run("opscore_approve", str(review.pk))
    with pytest.raises(CommandError, match="no task 'x'"):
        run("opscore_approve", "x")


def test_approve_as_an_operator_outside_the_group_is_refused(q_sync, agentkit_stub):
    from django.contrib.auth.models import User

    User.objects.create_user("bob", is_staff=True)
    _, review = waiting(review_spec("cmd-leads", approvers="leads"))
    with pytest.raises(CommandError, match="group 'leads'"):
        run("opscore_approve", str(review.pk), "--user", "bob")


# --------------------------------------------------------------------------- the demo's approvals


def test_demo_traffic_frees_an_agent_waiting_at_an_approval_and_caps_the_inbox(q_sync, agentkit_stub, settings,
                                                                               monkeypatch):
    import json
    from pathlib import Path

    from sessions.management.commands import opscore_demo_traffic
    from tests.sessions.test_engine import report

    settings.DEBUG = True
    example = json.loads((Path(__file__).resolve().parents[2] / "examples" / "workflows"
                          / "reviewed_summary.json").read_text())
    WorkflowDefinitionFactory(id=example["id"], spec=example)
    from tests.agents.factories import AgentFactory

    agent = AgentFactory()
    run("opscore_demo_traffic", "--once")
    report(agent.pk, "idle", {"result": "draft"})  # the draft is done: the session waits for a person
    assert Task.objects.filter(status=Task.Status.WAITING_APPROVAL).count() == 1
    assert "started 1 session(s)" in run("opscore_demo_traffic", "--once")[0]  # the agent is free again
    report(agent.pk, "idle")
    assert Task.objects.filter(status=Task.Status.WAITING_APPROVAL).count() == 2
    monkeypatch.setattr(opscore_demo_traffic, "APPROVALS_WAITING_MAX", 2)  # full: no approval workflow is picked
    assert "started 0 session(s)" in run("opscore_demo_traffic", "--once")[0]
