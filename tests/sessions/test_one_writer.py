"""Only sessions/engine.py writes Task.status, Session.status, TaskAttempt.outcome and Agent.quarantine_state.

The scan reads the source of every app package (and opscore_site) with `ast` and lists each
write of a `status`, `outcome` or `quarantine_state` field outside the engine: `.update(status=...)`, a
`create`-like call or a model constructor given one, `.save(update_fields=[..."status"...])`,
`bulk_update(..., ["status"])`, `setattr(x, "status", ...)` and `x.status = ...`. Migrations
are left out (they define the fields); tests and factories live outside the packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.apps import apps

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "sessions" / "engine.py"
FIELDS = {"status", "outcome", "quarantine_state"}
MODELS = {"Task", "Session", "TaskAttempt"}
KWARG_WRITES = {"update", "create", "get_or_create", "update_or_create"}
FIELD_LIST_WRITES = {"save", "bulk_update"}


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _dict_keys(node: ast.AST | None) -> set[str]:
    if not isinstance(node, ast.Dict):
        return set()
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _written_by_call(call: ast.Call) -> set[str]:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in KWARG_WRITES or name in MODELS:
        fields = {kw.arg for kw in call.keywords if kw.arg}
        for kw in call.keywords:
            if kw.arg is None or kw.arg in {"defaults", "create_defaults"}:  # **{"status": ...}, defaults={...}
                fields |= _dict_keys(kw.value)
        return fields & FIELDS
    if name in FIELD_LIST_WRITES:
        lists = [kw.value for kw in call.keywords if kw.arg in {"update_fields", "fields"}] + call.args[1:]
        return set().union(*(_strings(node) for node in lists)) & FIELDS
    if name == "setattr" and len(call.args) >= 2:
        return _strings(call.args[1]) & FIELDS
    return set()


def _assigned(target: ast.AST) -> set[str]:
    if isinstance(target, ast.Attribute):
        return {target.attr} & FIELDS
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_assigned(elt) for elt in target.elts))
    return set()


def writes_in(source: str) -> list[tuple[int, str]]:
    """(line, field) of each write of `status` or `outcome` in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            fields = _written_by_call(node)
        elif isinstance(node, ast.Assign):
            fields = set().union(*(_assigned(t) for t in node.targets))
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            fields = _assigned(node.target)
        else:
            continue
        found += [(node.lineno, field) for field in sorted(fields)]
    return sorted(found)


def app_sources() -> list[Path]:
    """Every .py file of the project's own apps and of opscore_site, without migrations."""
    packages = {Path(config.path) for config in apps.get_app_configs() if Path(config.path).parent == ROOT}
    packages.add(ROOT / "opscore_site")
    return sorted(path for package in packages for path in package.rglob("*.py") if "migrations" not in path.parts)


def test_the_scan_covers_the_apps_and_the_engine():
    sources = app_sources()
    assert ENGINE in sources
    assert {path.relative_to(ROOT).parts[0] for path in sources} >= {"agents", "workflows", "sessions", "ui",
                                                                      "opscore_site"}
    assert writes_in(ENGINE.read_text()), "the engine's own writes must be found, or the scan finds nothing"


def test_nothing_but_the_engine_writes_a_status_or_an_outcome():
    offenders = [f"{path.relative_to(ROOT)}:{line}: {field}"
                 for path in app_sources() if path != ENGINE
                 for line, field in writes_in(path.read_text())]
    assert offenders == [], "status/outcome/quarantine_state written outside sessions/engine.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("line", [
    "Task.objects.filter(pk=1).update(status='queued')",
    "TaskAttempt.objects.filter(pk=1).update(http_status=200, outcome='accepted')",
    "qs.update(**{'status': 'dead'})",
    "Session.objects.create(agent=a, status='pending')",
    "Task.objects.update_or_create(pk=1, defaults={'status': 'dead'})",
    "Task(session=s, status='queued').save()",
    "task.save(update_fields=['status', 'updated_at'])",
    "Task.objects.bulk_update(tasks, ['outcome'])",
    "setattr(task, 'status', 'dead')",
    "task.status = 'dead'",
    "attempt.outcome: str = 'failed'",
    "task.status, task.updated_at = to, now",
    "Agent.objects.filter(pk=1).update(quarantine_state='quarantined')",
    "agent.quarantine_state = ''",
])
def test_the_scan_finds_each_kind_of_write(line):
    assert writes_in(f"def f():\n    {line}\n") != []


@pytest.mark.parametrize("line", [
    "Task.objects.filter(status='queued').exclude(session__status__in=done).count()",
    "TaskAttempt.objects.filter(outcome='cancelled').update(http_status=404, error='gone')",
    "ok = task.status == 'dead'",
    "response.status_code = 200",
    "task.save(update_fields=['last_error'])",
])
def test_the_scan_leaves_reads_and_other_fields_alone(line):
    assert writes_in(f"def f():\n    {line}\n") == []
