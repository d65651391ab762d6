"""scripts/run's set-up half (OPSCORE_RUN_SETUP_ONLY=1): what it prints is what works."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def setup_only(tmp_path: Path, env_file: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPSCORE_", "AGENTKIT_", "Q_", "DJANGO_")) and k not in {"DATABASE_URL", "DEBUG",
                                                                                        "SECRET_KEY", "PORT"}}
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}", "OPSCORE_RUN_SETUP_ONLY": "1",
                "OPSCORE_DEMO_ENV_FILE": str(tmp_path / env_file), "LOG_LEVEL": "WARNING"})
    result = subprocess.run([str(ROOT / "scripts" / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def password_in(path: Path) -> str:
    return re.search(r"^OPSCORE_DEMO_PASSWORD=(.*)$", path.read_text(), re.M).group(1)


def test_the_printed_login_is_never_a_password_that_fails(tmp_path):
    first = setup_only(tmp_path, "one.env")
    assert f"log in as:             operator / {password_in(tmp_path / 'one.env')}\n" in first
    assert "4 created" in first  # the example workflows
    again = setup_only(tmp_path, "one.env")  # a second start: same operator, same password
    assert f"log in as:             operator / {password_in(tmp_path / 'one.env')}\n" in again
    assert "4 unchanged" in again

    other = setup_only(tmp_path, "two.env")  # new secrets, the same database: its operator keeps its password
    assert password_in(tmp_path / "two.env") not in other
    assert "operator, whose password this database already had" in other
    assert "manage.py changepassword operator" in other
