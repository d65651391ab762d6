"""opscore_import_workflows and opscore_export_workflows, through call_command."""

from __future__ import annotations

import json
from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.workflows.factories import two_step_spec
from workflows.models import WorkflowDefinition
from workflows.schema import validate_definition
from workflows.services import workflow_save

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def saved(workflow_id: str) -> WorkflowDefinition:
    return workflow_save(spec=validate_definition(two_step_spec(workflow_id)))[0]


def write(path, document, fmt="json"):
    path.write_text(json.dumps(document) if fmt == "json" else yaml.safe_dump(document))
    return path


def test_it_imports_a_directory_of_json_and_yaml_and_reports_each_outcome(tmp_path):
    saved("existing")
    saved("same")
    write(tmp_path / "a.json", two_step_spec("brand-new"))
    write(tmp_path / "b.yaml", {**two_step_spec("existing"), "name": "Renamed"}, "yaml")
    write(tmp_path / "c.yml", two_step_spec("same"), "yaml")
    (tmp_path / "notes.txt").write_text("ignored")

    out, _ = run("opscore_import_workflows", str(tmp_path))

    assert f"{tmp_path / 'a.json'}: brand-new created" in out
    assert f"{tmp_path / 'b.yaml'}: existing updated" in out
    assert f"{tmp_path / 'c.yml'}: same unchanged" in out
    assert out.strip().endswith("1 created, 1 updated, 1 unchanged")
    assert WorkflowDefinition.objects.get(pk="existing").name == "Renamed"
    assert WorkflowDefinition.objects.get(pk="existing").revision == 2
    assert WorkflowDefinition.objects.filter(pk="brand-new").exists()


def test_the_shipped_examples_import(settings):
    out, _ = run("opscore_import_workflows", str(settings.BASE_DIR / "examples" / "workflows"))
    assert " 0 updated" in out and WorkflowDefinition.objects.count() >= 3


def test_dry_run_reports_but_writes_nothing(tmp_path):
    write(tmp_path / "a.json", two_step_spec("brand-new"))
    out, _ = run("opscore_import_workflows", str(tmp_path / "a.json"), "--dry-run")
    assert "brand-new created" in out and "dry run, nothing written: would be 1 created" in out
    assert not WorkflowDefinition.objects.exists()


def test_one_bad_file_lists_every_error_and_writes_nothing(tmp_path):
    write(tmp_path / "good.json", two_step_spec("good"))
    bad = two_step_spec("bad")
    bad["tasks"][0]["nextTaskId"] = "nowhere"
    write(tmp_path / "bad.json", bad)
    (tmp_path / "broken.yaml").write_text("id: [unclosed\n")
    err = StringIO()
    with pytest.raises(CommandError, match="2 file\\(s\\) with errors; nothing was imported"):
        call_command("opscore_import_workflows", str(tmp_path), stdout=StringIO(), stderr=err)
    assert f"{tmp_path / 'bad.json'}: tasks.0.nextTaskId: nextTaskId 'nowhere'" in err.getvalue()
    assert f"{tmp_path / 'broken.yaml'}: invalid YAML" in err.getvalue()
    assert not WorkflowDefinition.objects.exists()


def test_duplicate_ids_across_files_and_missing_paths_are_errors(tmp_path):
    write(tmp_path / "one.json", two_step_spec("twice"))
    write(tmp_path / "two.yaml", two_step_spec("twice"), "yaml")
    (tmp_path / "x.txt").write_text("{}")
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("opscore_import_workflows", str(tmp_path / "one.json"), str(tmp_path / "two.yaml"),
                     str(tmp_path / "missing.json"), str(tmp_path / "x.txt"), stdout=StringIO(), stderr=err)
    text = err.getvalue()
    assert f"{tmp_path / 'two.yaml'}: workflow id 'twice' is also defined in {tmp_path / 'one.json'}" in text
    assert f"{tmp_path / 'missing.json'}: no such file or directory" in text
    assert f"{tmp_path / 'x.txt'}: unknown file type '.txt'" in text
    assert not WorkflowDefinition.objects.exists()


def test_export_prints_json_that_imports_back(tmp_path):
    saved("wf-a")
    saved("wf-b")
    out, _ = run("opscore_export_workflows")
    assert [d["id"] for d in json.loads(out)] == ["wf-a", "wf-b"]

    single, _ = run("opscore_export_workflows", "--id", "wf-b")
    assert json.loads(single) == WorkflowDefinition.objects.get(pk="wf-b").spec
    (tmp_path / "wf-b.json").write_text(single)
    again, _ = run("opscore_import_workflows", str(tmp_path / "wf-b.json"))
    assert "wf-b unchanged" in again


def test_export_yaml_to_a_directory(tmp_path):
    saved("wf-a")
    out, _ = run("opscore_export_workflows", "--format", "yaml", "--output", str(tmp_path / "out"))
    assert "1 definition(s) exported" in out
    assert yaml.safe_load((tmp_path / "out" / "wf-a.yaml").read_text()) == WorkflowDefinition.objects.get(
        pk="wf-a").spec


def test_export_of_an_unknown_id_is_an_error():
    saved("wf-a")
    with pytest.raises(CommandError, match="no workflow definition with id: nope"):
        run("opscore_export_workflows", "--id", "wf-a", "--id", "nope")
