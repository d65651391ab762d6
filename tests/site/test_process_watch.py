"""The quickstart test's leftover-process finder (tests/e2e/harness.py), on processes of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.e2e.harness import ProcessWatch, wait_until

# A marked parent whose child renames itself like gunicorn and the qcluster do.
PARENT = """
import subprocess, sys
subprocess.run([sys.executable, "-c",
                "import setproctitle, time; setproctitle.setproctitle('fake qcluster worker'); time.sleep(60)"])
"""


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_it_finds_renamed_processes_and_orphans_left_in_a_watched_session():
    run_id = uuid.uuid4().hex
    watch = ProcessWatch("OPSCORE_WATCH_TEST", run_id)
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env={**os.environ, "OPSCORE_WATCH_TEST": run_id},
                              start_new_session=True)
    try:
        child = wait_until(lambda: (c := children_of(parent.pid)) and (Path("/proc") / str(c[0]) / "cmdline")
                           .read_bytes().startswith(b"fake qcluster worker") and c[0], timeout=20, what="the child")
        # setproctitle wiped the child's environ: the marker alone would miss it.
        assert f"OPSCORE_WATCH_TEST={run_id}".encode() not in (Path("/proc") / str(child) / "environ").read_bytes()
        assert watch.pids() == sorted([parent.pid, child])

        os.kill(parent.pid, signal.SIGKILL)  # the supervised process dies, its worker lingers
        parent.wait(timeout=10)
        assert watch.pids() == [child]
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the session's group: the child, whatever happened
    deadline = time.monotonic() + 10
    while watch.pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watch.pids() == []
