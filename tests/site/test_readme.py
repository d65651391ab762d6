"""README.md tells the truth about the commands, their options and the settings."""

from __future__ import annotations

import re
from pathlib import Path

from django.core.management import get_commands, load_command_class

from opscore_site.env import OpscoreEnv

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DJANGO_OPTIONS = {"-h", "--help", "--version", "-v", "--verbosity", "--settings", "--pythonpath", "--traceback",
                  "--no-color", "--force-color", "--skip-checks"}


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def command_rows() -> dict[str, set[str]]:
    rows = {}
    for line in section("Maintenance commands").splitlines():
        if match := re.match(r"^\| `(opscore_\w+)([^`]*)`", line):
            rows[match.group(1)] = set(re.findall(r"--[a-z][a-z-]*", match.group(2)))
    return rows


def own_options(name: str) -> set[str]:
    parser = load_command_class(get_commands()[name], name).create_parser("manage.py", name)
    return {option for action in parser._actions for option in action.option_strings} - DJANGO_OPTIONS


def test_the_first_screen_holds_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:25])
    assert re.search(r"^scripts/run\s+#", first_screen, re.M) and re.search(r"^scripts/test\s+#", first_screen, re.M)
    assert (ROOT / "scripts" / "run").exists() and (ROOT / "scripts" / "test").exists()


def test_every_command_and_each_of_its_options_is_in_the_table_as_it_is():
    rows = command_rows()
    ours = sorted(name for name in get_commands() if name.startswith("opscore_"))
    assert sorted(rows) == ours
    for name in ours:
        assert rows[name] == own_options(name), name


def test_every_command_that_changes_data_has_a_dry_run():
    read_only = {"opscore_export_workflows", "opscore_status"}
    for name in command_rows():
        assert ("--dry-run" in own_options(name)) != (name in read_only), name


def test_every_setting_in_the_configuration_table_exists():
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section("Configuration")))
    assert named and named <= set(OpscoreEnv.model_fields), named - set(OpscoreEnv.model_fields)


def test_the_quickstart_overrides_and_processes_are_real():
    run = (ROOT / "scripts" / "run").read_text()
    for variable in ("PORT", "AGENTKIT_PORT", "OPSCORE_DEMO_AGENTS", "OPSCORE_DEMO_ENV_FILE"):
        assert f"${{{variable}:-" in run, variable
    procfile = (ROOT / "Procfile.dev").read_text()
    for process in ("web: .venv/bin/gunicorn", "worker: .venv/bin/python manage.py qcluster",
                    "scheduler: .venv/bin/python manage.py opscore_scheduler", "agentkit: .venv/bin/python -m agentkit_standin",
                    "traffic: .venv/bin/python manage.py opscore_demo_traffic --interval 3"):
        assert process in procfile
    assert 'PORT:-8000' in run and 'AGENTKIT_PORT:-8001' in run and 'OPSCORE_DEMO_AGENTS:-4' in run
    assert "http://127.0.0.1:8000/" in README and "port 8001 with 4 simulated agents" in README
