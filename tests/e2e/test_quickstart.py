"""The README's quickstart (`scripts/run`) on a fresh SQLite file, headless and bounded.

It must bring up the whole demo, complete sessions (checked through the API), and leave
no process behind when its supervisor is told to stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.crawl import Crawl
from tests.e2e.harness import ROOT, ProcessWatch, free_port, wait_until

pytestmark = pytest.mark.e2e

MARKER = "OPSCORE_QUICKSTART_RUN"


def title(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return b""


def demo_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def crawl_every_operator_page(base: str, password: str, logs) -> None:
    """Every operator page answers 200 on the SQLite demo while its traffic runs (issue: the agents
    page was a 500 there whenever a task was in flight); the failure names each page that did not."""
    crawl = Crawl(base)
    crawl.login("operator", password)
    found = crawl.everything()
    failed = crawl.failed()
    assert not failed, "operator pages that did not answer 200:\n" + "\n".join(failed) + f"\n--- log:\n{logs()}"
    # The crawl reached what it must have: an agent with a task in flight, sessions running and done,
    # a workflow, and a change form of every admin changelist that has rows.
    missing = [what for what in ("agent in flight", "running session", "completed session", "workflow", "agent",
                                 "alert rule")
               if not found[what]]
    assert not missing, f"the demo never showed: {missing}"
    admin_forms = [page for page in crawl.seen if page.endswith("/change/")]
    assert len(admin_forms) >= 6, f"admin change forms crawled: {admin_forms}"
    assert len(crawl.seen) >= 60, f"only {len(crawl.seen)} pages crawled: {sorted(crawl.seen)}"


def alert_arrives(standin: str, logs) -> None:
    """The demo's example alert rule (a step failed; the stand-in fails 10% of tasks) reaches the
    receiver the demo runs, signed, within a minute or so of the first failure."""
    def received():
        return httpx.get(f"{standin}/_standin/alerts", timeout=5).json()["alerts"]

    try:
        alerts = wait_until(received, timeout=90, interval=2, what="an alert at the stand-in's receiver")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log:\n{logs()}") from None
    assert alerts[0]["body"]["title"].startswith("[Ops-Core] Demo: failing steps: step ")
    assert alerts[0]["signature"]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_quickstart_completes_sessions_and_stops_cleanly(tmp_path, stop_signal):
    run_id = uuid.uuid4().hex
    watch = ProcessWatch(MARKER, run_id)
    port, agentkit_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPSCORE_", "AGENTKIT_", "Q_", "DJANGO_")) and k not in {"DATABASE_URL", "DEBUG",
                                                                                        "SECRET_KEY", "PORT"}}
    env.update({
        MARKER: run_id,
        "PORT": str(port),
        "AGENTKIT_PORT": str(agentkit_port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "OPSCORE_DEMO_ENV_FILE": str(tmp_path / "demo.env"),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    })
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(ROOT / "scripts" / "run")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def logs() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    last: dict[str, str] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            def healthy():
                assert proc.poll() is None, "the quickstart exited on its own"
                return httpx.get(f"{base}/health", timeout=2).status_code == 200

            wait_until(healthy, timeout=120, what="the quickstart's /health")
            key = demo_env(tmp_path / "demo.env")["OPSCORE_API_KEY"]
            api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10)

            def completed():
                assert proc.poll() is None, "the quickstart exited on its own"
                response = api.get("/v1/opscore/sessions", params={"status": "completed"})
                last["answer"] = f"{response.status_code} {response.text[:300]}"
                return response.status_code == 200 and response.json()["count"] >= 1 and response.json()

            body = wait_until(completed, timeout=120, interval=2, what="a completed session")

            def flaky_agent_quarantined():
                agents = api.get("/v1/opscore/agents", params={"limit": 50}).json()["results"]
                return [a for a in agents if a["quarantineState"] and a["name"].startswith("forgotten-agent")]

            # The simulated fleet's flaky agent (AgentKit forgot it: every dispatch is a 404).
            quarantined = wait_until(flaky_agent_quarantined, timeout=60, interval=2, what="the flaky agent quarantined")
            assert "failures in a row" in quarantined[0]["quarantineReason"]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast API answer: {last.get('answer')}\n--- scripts/run output:\n{logs()}") from None
        assert {s["status"] for s in body["results"]} == {"completed"}
        printed = log_path.read_text(errors="replace")
        password = demo_env(tmp_path / "demo.env")["OPSCORE_DEMO_PASSWORD"]
        if stop_signal == signal.SIGINT:  # once is enough: the demo is the same for both signals
            crawl_every_operator_page(base, password, logs)
            alert_arrives(f"http://127.0.0.1:{agentkit_port}", logs)
        assert f"log in as:             operator / {password}" in printed
        assert f"http://127.0.0.1:{port}/" in printed
        running = watch.pids()
        assert len(watch.sessions) >= 6, f"honcho and its five processes, each in its own session: {watch.sessions}"
        titles = {title(pid) for pid in running}
        assert any(t.startswith(b"gunicorn: worker") for t in titles) and any(b"qcluster" in t for t in titles), titles
    finally:
        watch.pids()  # learn every session while its processes are all still there
        if proc.poll() is None:
            # Ctrl-C reaches the whole foreground group; SIGTERM (a service manager) only honcho.
            if stop_signal == signal.SIGINT:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        # honcho starts each process in its own session: look in every one of them, not one group.
        deadline = time.monotonic() + 15
        while watch.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = watch.pids()
        for pid in left:  # never leak into the rest of the suite, even when failing
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode is not None, f"honcho did not exit on {stop_signal.name}"
    assert left == [], f"processes left after {stop_signal.name}: {left}\n{logs()}"
