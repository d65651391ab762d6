"""Run the whole product over real sockets: gunicorn, qcluster(s), the scheduler loop and
the AgentKit stand-in, each a subprocess against the test database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
API_KEY = "opk_e2e_fleet_key_0123456789abcdef"
WEBHOOK_SECRET = "e2e-webhook-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError) as exc:
            last_exc, value = exc, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}" +
                         (f" (last error: {last_exc})" if last_exc else ""))


def database_url(name: str) -> str:
    """DATABASE_URL (server, user, password) with database `name`: the test database the suite made."""
    parts = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/opscore"))
    return urlunparse(parts._replace(path=f"/{name}"))


@dataclass
class Stack:
    database_name: str
    log_dir: Path
    web_port: int = field(default_factory=free_port)
    agentkit_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # extra environment for every process
    secrets: dict[str, str] = field(default_factory=dict)  # name -> value that no log line may hold

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def agentkit_url(self) -> str:
        return f"http://127.0.0.1:{self.agentkit_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSCORE_", "AGENTKIT_", "Q_"))}
        env.update({
            "DJANGO_SETTINGS_MODULE": "opscore_site.settings_test",
            "DATABASE_URL": database_url(self.database_name),
            "AGENTKIT_API_URL": self.agentkit_url,
            "AGENTKIT_TIMEOUT_SECONDS": "3",
            "OPSCORE_API_KEY": API_KEY,
            "OPSCORE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "OPSCORE_URL": self.web_url,
            "OPSCORE_LOST_JOB_SECONDS": "3",
            "OPSCORE_SCHEDULER_INTERVAL_SECONDS": "0.5",
            "OPSCORE_THROTTLE_RATE": "1000000/min",
            "Q_WORKERS": "2",
            "Q_TIMEOUT": "20",
            "Q_RETRY": "90",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.settings)
        env.update(extra)
        return env

    def start(self, name: str, argv: list[str], **extra_env: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env(**extra_env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.processes[name] = proc
        return proc

    def start_web(self, *, extra: list[str] | None = None) -> None:
        # --keep-alive above the stand-in's idle-connection expiry (httpx: 5 s): with gthread's
        # default of 2 s, a report sent on a pooled connection just as the worker closed it was
        # reset, and a report is never sent twice (AGENTKIT.md section 2), so its task waited for
        # its 30 s timeout (seen in bench/engine_throughput.py: one such report made the p99).
        self.start("web", [str(BIN / "gunicorn"), "opscore_site.wsgi", "--bind", f"127.0.0.1:{self.web_port}",
                           "--workers", "2", "--threads", "4", "--timeout", "30", "--keep-alive", "10",
                           "--no-control-socket", *(extra or [])])
        wait_until(lambda: httpx.get(f"{self.web_url}/ready", timeout=2).status_code == 200, timeout=30,
                   what="gunicorn /ready")

    def start_cluster(self, name: str = "qcluster") -> subprocess.Popen:
        return self.start(name, [sys.executable, "manage.py", "qcluster"])

    def start_scheduler(self) -> None:
        self.start("scheduler", [sys.executable, "manage.py", "opscore_scheduler"])

    def start_agentkit(self, *, agents: int = 0, work_time: str = "0", failure_rate: float = 0.0,
                       extra: list[str] | None = None, known_agents: list[dict] | None = None) -> None:
        """Start the stand-in with `agents` new agents, or with `known_agents` (AgentKit back from a
        restart: registered before it serves its first request)."""
        argv = [sys.executable, "-m", "agentkit_standin", "--host", "127.0.0.1", "--port", str(self.agentkit_port),
                "--opscore-url", self.web_url, "--api-key", API_KEY, "--webhook-secret", WEBHOOK_SECRET,
                "--agents", str(agents), "--work-time", work_time, "--failure-rate", str(failure_rate),
                *(extra or [])]
        if known_agents:
            path = self.log_dir / "agentkit-known-agents.json"
            path.write_text(json.dumps({"agents": known_agents, "initial_idle": True}))
            argv += ["--known-agents", str(path)]
        self.start("agentkit", argv)
        wait_until(lambda: httpx.get(f"{self.agentkit_url}/", timeout=2).status_code == 200, timeout=20,
                   what="AgentKit stand-in")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
        """Signal `name` and wait up to `timeout` s for it, then SIGKILL what is left of its group."""
        proc = self.processes.pop(name, None)
        if proc is not None and self._signal(proc, sig):
            self._reap(proc, timeout)

    def stop_all(self, timeout: float = 5) -> None:
        """Every process at once, so a teardown takes the slowest stop, not the sum of them."""
        procs = [proc for proc in (self.processes.pop(name) for name in list(self.processes))
                 if self._signal(proc, signal.SIGTERM)]
        deadline = time.monotonic() + timeout
        for proc in procs:
            self._reap(proc, max(deadline - time.monotonic(), 0.1))

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> bool:
        """SIGTERM goes to the main process only, as the README's deployment notes say: gunicorn's
        master and the qcluster's main process stop their children, and a qcluster whose children
        all get the SIGTERM never finishes stopping. Any other signal goes to the whole group.
        False if the process was already gone."""
        if proc.poll() is not None:
            return False
        try:
            if sig == signal.SIGTERM:
                os.kill(proc.pid, sig)
            else:
                os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    @staticmethod
    def _reap(proc: subprocess.Popen, timeout: float) -> None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a process that did not stop in time, and any stragglers
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    # API helpers -------------------------------------------------------------------

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.web_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)

    def standin(self, path: str, body: dict | None = None) -> Any:
        url = f"{self.agentkit_url}{path}"
        response = httpx.post(url, json=body or {}, timeout=10) if body is not None else httpx.get(url, timeout=10)
        response.raise_for_status()
        return response.json()

    def logs(self) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"----- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:3000]


class ProcessWatch:
    """Every live process of one run: those that inherited `NAME=value` and all in their sessions.

    The variable alone is not enough: setproctitle (gunicorn, the qcluster and its workers)
    rewrites the memory that /proc/<pid>/environ shows, so those processes lose the marker.
    Their session does not change (supervisors start each process in its own session and
    nothing here calls setsid again), so sessions seen with a marked member are remembered
    and every process in them counts, even after the marked one has gone.
    """

    def __init__(self, name: str, value: str) -> None:
        self.needle = f"{name}={value}".encode()
        self.sessions: set[int] = set()
        self._own_session = os.getsid(0)

    def pids(self) -> list[int]:
        found: list[tuple[int, int]] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                state, session = fields[0], int(fields[3])
                if state == "Z":
                    continue
                if self.needle in (entry / "environ").read_bytes().split(b"\0") and session != self._own_session:
                    self.sessions.add(session)
            except OSError:
                continue  # gone meanwhile, or not ours
            found.append((int(entry.name), session))
        return sorted(pid for pid, session in found if session in self.sessions)


def secrets_in(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """`where: which secret` for every line of `texts` (name -> text) that holds one of `secrets`
    (name -> value); empty values are skipped."""
    found = []
    for where, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{where}:{number}: {name}" for name, value in secrets.items() if value and value in line]
    return found
