"""The stand-in itself: AgentKit's registry and /run, plus the simulated agents behind it."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import httpx

from . import wire
from .config import OUTCOMES, Config, ConfigError, parse_range

logger = logging.getLogger("agentkit_standin")

# The per-run list in the stats: the last RUNS_KEPT runs, so a long soak does not grow the stand-in
# (10,000 runs were ~6 MB, +15% of its RSS). Counters (runs_by_attempt, ~100 bytes a run) are never truncated.
RUNS_KEPT = 1_000


@dataclass
class Agent:
    """One registered agent, simulated by the stand-in."""

    agent_id: str
    name: str
    version: str
    capabilities: list[str]
    contact_endpoint: str
    metadata: dict[str, Any] | None
    registered_at: str
    in_flight: list[str] = field(default_factory=list)  # run keys being worked on now
    outcome: str | None = None  # every run's fate (complete | fail | lose) unless the task forces one

    def details(self) -> dict[str, Any]:
        """`agent_details` of the webhook, in AgentKit's field order."""
        return {
            "agentId": self.agent_id,
            "agentName": self.name,
            "version": self.version,
            "capabilities": list(self.capabilities),
            "contactEndpoint": self.contact_endpoint,
            "metadata": {},
        }

    def public(self) -> dict[str, Any]:
        return {**self.details(), "metadata": self.metadata, "registeredAt": self.registered_at,
                "inFlight": list(self.in_flight), "outcome": self.outcome}


@dataclass
class Run:
    """One accepted `/run`: what was asked and what the simulated agent did with it."""

    seq: int
    agent_id: str
    key: str  # "<opscore_task_id>#<attempt>"
    opscore_task_id: str | None
    opscore_session_id: str | None
    attempt: Any
    task_name: str | None
    task_parameters: Any
    outcome: str  # complete | fail | lose (decided on acceptance)
    work_time: float
    accepted_at: str
    status: str = "accepted"  # accepted -> working -> completed | failed | lost | aborted

    def public(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "agentId": self.agent_id, "key": self.key, "opscore_task_id": self.opscore_task_id,
            "opscore_session_id": self.opscore_session_id, "attempt": self.attempt, "task_name": self.task_name,
            "outcome": self.outcome, "work_time": self.work_time, "accepted_at": self.accepted_at,
            "status": self.status,
        }


class Stats:
    """Counters the end-to-end tests assert on; every method holds the stand-in's lock."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.runs: deque[Run] = deque(maxlen=RUNS_KEPT)
        self.runs_accepted = 0
        self.statuses: Counter[str] = Counter()
        self.runs_by_agent: Counter[str] = Counter()
        self.runs_by_attempt: Counter[str] = Counter()
        self.max_concurrent_by_agent: dict[str, int] = {}
        self.overlaps: list[dict[str, Any]] = []
        self.responses: Counter[str] = Counter()
        self.reports_sent: Counter[str] = Counter()
        self.reports_failed: Counter[str] = Counter()
        self.webhooks_sent: Counter[str] = Counter()
        self.webhooks_failed: Counter[str] = Counter()
        self.webhooks_skipped = 0
        self.lost_forwards = 0

    def snapshot(self, agents: dict[str, Agent]) -> dict[str, Any]:
        return {
            "agents_registered": len(agents),
            "runs_accepted": self.runs_accepted,
            "runs_by_agent": dict(self.runs_by_agent),
            "runs_by_attempt": dict(self.runs_by_attempt),
            "duplicate_attempts": sorted(key for key, n in self.runs_by_attempt.items() if n > 1),
            "max_concurrent_by_agent": dict(self.max_concurrent_by_agent),
            "in_flight_by_agent": {a.agent_id: len(a.in_flight) for a in agents.values() if a.in_flight},
            "overlaps": list(self.overlaps),
            "lost_forwards": self.lost_forwards,
            "outcomes": {status: self.statuses[status] for status in ("completed", "failed", "lost", "aborted")},
            "reports_sent": dict(self.reports_sent),
            "reports_failed": dict(self.reports_failed),
            "webhooks_sent": dict(self.webhooks_sent),
            "webhooks_failed": dict(self.webhooks_failed),
            "webhooks_skipped": self.webhooks_skipped,
            "responses": dict(self.responses),
            "runs": [run.public() for run in self.runs],
        }

    def settle(self, run: Run, status: str) -> None:
        """Record a run's final status (completed, failed, lost or aborted)."""
        run.status = status
        self.statuses[status] += 1


class StandIn:
    """AgentKit stand-in: an HTTP server plus simulated agents reporting to Ops-Core.

    `StandIn(opscore_url=..., api_key=..., webhook_secret=...).start()` serves on `.url`
    (port 0 picks a free one); `.stop()` ends it. Settings are those of `Config`.
    """

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        self.config = config or Config(**settings)
        self._lock = threading.RLock()
        self._agents: dict[str, Agent] = {}
        self._registered = 0  # numbers agent names; never reused
        self._stats = Stats()
        self._alerts: list[dict[str, Any]] = []  # the demo's alert receiver (POST /_standin/alerts), newest last
        self._rng = random.Random(self.config.seed)
        self._stopping = threading.Event()
        self._jobs: set[threading.Thread] = set()
        self._quiet = threading.Condition(self._lock)
        self._server: Any = None
        self._serve_thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, known_agents: list[dict[str, Any]] | None = None) -> StandIn:
        """Bind and serve in a background thread; returns self.

        `known_agents` (keyword arguments of `register`) are registered after the port is bound
        and before the first request is served: AgentKit back from a restart with its registry,
        so a dispatch that reaches it early finds its agent instead of a 404.
        """
        from .server import make_server

        self._client = httpx.Client(follow_redirects=False, timeout=self.config.report_timeout)
        self._server = make_server(self, self.config.host, self.config.port)
        for spec in known_agents or []:
            self.register(**spec)
        self._serve_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                              name="standin-http", daemon=True)
        self._serve_thread.start()
        logger.info("listening on %s (Ops-Core at %s)", self.url, self.config.opscore_url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, abandon pending work (no further reports) and close connections."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_all()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout)
        deadline = time.monotonic() + timeout
        for job in list(self._jobs):
            job.join(max(0.0, deadline - time.monotonic()))
        if self._client is not None:
            self._client.close()
        logger.info("stopped")

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    # --- registry ----------------------------------------------------------------------------------

    def register(self, *, agent_id: str | None = None, name: str | None = None, version: str = "1.0.0",
                 capabilities: list[str] | None = None, contact_endpoint: str | None = None,
                 metadata: dict[str, Any] | None = None, webhook: bool | None = None,
                 initial_idle: bool | None = None, outcome: str | None = None) -> Agent:
        """Add an agent; then (in the background) its first `idle` report and, 50-80 ms later, the webhook.

        Like AgentKit, an agent registered with metadata never gets a webhook. `outcome` fixes the
        fate of each of its runs (an agent that always loses its tasks, or always fails them).
        """
        if self._server is None:
            raise RuntimeError("start() the stand-in before registering agents")
        if outcome is not None and outcome not in OUTCOMES:
            raise ConfigError(f"outcome: expected one of {', '.join(OUTCOMES)} or null, got {outcome!r}")
        agent_id = agent_id or str(uuid.uuid4())
        with self._lock:
            if agent_id in self._agents:
                raise ConfigError(f"agent {agent_id} is already registered")
            self._registered += 1
            number = self._registered
            agent = Agent(
                agent_id=agent_id,
                name=name or f"standin-agent-{number}",
                version=version,
                capabilities=list(self.config.capabilities if capabilities is None else capabilities),
                contact_endpoint=contact_endpoint or f"{self.url}/_standin/agents/{quote(agent_id, safe='')}",
                metadata=metadata,
                registered_at=wire.report_timestamp(),
                outcome=outcome,
            )
            self._agents[agent_id] = agent
            send_idle = self.config.initial_idle if initial_idle is None else initial_idle
            send_webhook = (self.config.webhook if webhook is None else webhook) and metadata is None
        logger.info("register agent=%s name=%s idle=%s webhook=%s", agent_id, agent.name,
                    "yes" if send_idle else "no", "yes" if send_webhook else "no")
        self._spawn(self._announce, agent, send_idle, send_webhook)
        return agent

    def deregister(self, agent_id: str, *, webhook: bool | None = None) -> bool:
        """Forget an agent (later /run answers 404); send a DEREGISTER webhook unless told not to."""
        with self._lock:
            agent = self._agents.pop(agent_id, None)
            send_webhook = self.config.webhook if webhook is None else webhook
        if agent is None:
            return False
        logger.info("deregister agent=%s webhook=%s", agent_id, "yes" if send_webhook else "no")
        if send_webhook:
            self._spawn(self._send_webhook, "DEREGISTER", agent)
        return True

    def set_agent_outcome(self, agent_id: str, outcome: str | None) -> bool:
        """Fix (or with None, free) the fate of an agent's next runs; False for an unknown agent."""
        if outcome is not None and outcome not in OUTCOMES:
            raise ConfigError(f"outcome: expected one of {', '.join(OUTCOMES)} or null, got {outcome!r}")
        with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None:
                return False
            agent.outcome = outcome
        logger.info("agent=%s outcome=%s", agent_id, outcome or "random")
        return True

    def agents(self) -> list[dict[str, Any]]:
        with self._lock:
            return [agent.public() for agent in self._agents.values()]

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        with self._lock:
            agent = self._agents.get(agent_id)
            return agent.public() if agent else None

    def agent_ids(self) -> list[str]:
        with self._lock:
            return list(self._agents)

    # --- control -----------------------------------------------------------------------------------

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change runtime settings (Config.RUNTIME); raises ConfigError on a bad key or value."""
        with self._lock:
            self.config.update(changes)
            if changes:
                logger.info("config %s", " ".join(f"{k}={v}" for k, v in changes.items()))
            return self.config.public()

    def pause(self) -> None:
        """Answer 503 to every /run, as an AgentKit that is down behind a proxy."""
        self.configure(paused=True)

    def resume(self) -> None:
        self.configure(paused=False)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats.snapshot(self._agents)

    def receive_alert(self, body: Any, headers: dict[str, str]) -> None:
        """Keep (the last 100) and log an alert Ops-Core sent: the demo's example rule points here."""
        title = body.get("title") if isinstance(body, dict) else None
        with self._lock:
            self._alerts = [*self._alerts[-99:], {"body": body, "signature": headers.get("X-Opscore-Signature")}]
        logger.info("ALERT received: %s", title or body)

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._alerts)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.reset()
        logger.info("stats reset")

    def wait_quiet(self, timeout: float = 10.0) -> bool:
        """Block until no registration, forward or report is pending; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._quiet:
            while self._jobs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._quiet.wait(remaining)
        return True

    def report(self, agent_id: str, state: str, details: dict[str, Any] | None = None) -> int | None:
        """Send one state report now, as the agent; returns Ops-Core's HTTP status (None if unreachable)."""
        return self._send_report(agent_id, state, details)

    # --- AgentKit's /run ---------------------------------------------------------------------------

    def accept_run(self, agent_id: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Answer `POST /v1/agents/{agent_id}/run` and schedule the forward, as AgentKit does."""
        with self._lock:
            if self.config.paused:
                self._stats.responses["503"] += 1
                logger.info("run agent=%s -> 503 (paused)", agent_id)
                return 503, {"detail": "AgentKit is unavailable (stand-in paused)."}
            message, errors = wire.validate_run_body(raw)
            if errors:
                self._stats.responses["422"] += 1
                logger.info("run agent=%s -> 422 %s", agent_id, "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
                return 422, {"detail": errors}
            agent = self._agents.get(agent_id)
            if agent is None:
                self._stats.responses["404"] += 1
                logger.info("run agent=%s -> 404", agent_id)
                return 404, wire.not_found_body(agent_id)
            run = self._new_run(agent_id, message, agent.outcome)
            self._stats.responses["202"] += 1
            if run.outcome == "lose":
                self._stats.settle(run, "lost")
                self._stats.lost_forwards += 1
            else:
                self._begin(agent, run)
            logger.info("run agent=%s task=%s -> 202 outcome=%s work=%.3fs", agent_id, run.key, run.outcome,
                        run.work_time)
        if run.outcome != "lose":
            self._spawn(self._work, agent, run)
        low, high = self.config.answer_delay
        if high > 0:  # a slow AgentKit: the forward is scheduled, the answer comes late
            time.sleep(self._rng.uniform(low, high) if high > low else low)
        return 202, wire.accepted_body(agent_id)

    def _new_run(self, agent_id: str, message: dict[str, Any], agent_outcome: str | None = None) -> Run:
        payload = message["payload"]
        task_id = payload.get("opscore_task_id", message.get("opscore_task_id"))
        attempt = payload.get("attempt")
        parameters = payload.get("task_parameters")
        outcome, work_time = self._decide(parameters, agent_outcome)
        self._stats.runs_accepted += 1
        run = Run(
            seq=self._stats.runs_accepted,
            agent_id=agent_id,
            key=f"{task_id}#{attempt}",
            opscore_task_id=task_id,
            opscore_session_id=payload.get("opscore_session_id", message.get("opscore_session_id")),
            attempt=attempt,
            task_name=payload.get("task_name", message.get("task_name")),
            task_parameters=parameters,
            outcome=outcome,
            work_time=work_time,
            accepted_at=wire.report_timestamp(),
        )
        self._stats.runs.append(run)
        self._stats.runs_by_agent[agent_id] += 1
        self._stats.runs_by_attempt[run.key] += 1
        return run

    def _decide(self, parameters: Any, agent_outcome: str | None = None) -> tuple[str, float]:
        """Outcome and work time: per-task `_standin` overrides in task_parameters, else the agent's
        fixed outcome, else the dice."""
        override = parameters.get("_standin") if isinstance(parameters, dict) else None
        override = override if isinstance(override, dict) else {}
        low, high = self.config.work_time
        work_time = self._rng.uniform(low, high) if high > low else low
        if "work_time" in override:
            try:
                work_time = self._rng.uniform(*parse_range(override["work_time"], name="_standin.work_time"))
            except ConfigError as exc:
                logger.warning("ignoring %s", exc)
        lost = self._rng.random() < self.config.lost_rate
        failed = self._rng.random() < self.config.failure_rate
        outcome = agent_outcome or ("lose" if lost else "fail" if failed else "complete")
        if override.get("outcome") in OUTCOMES:
            outcome = override["outcome"]
        elif "outcome" in override:
            logger.warning("ignoring _standin.outcome=%r (expected one of %s)", override["outcome"], OUTCOMES)
        return outcome, work_time

    # --- background jobs ---------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        def job() -> None:
            try:
                target(*args)
            except Exception:  # a bug here must not kill the server; log it loudly
                logger.exception("background job %s failed", target.__name__)
            finally:
                with self._quiet:
                    self._jobs.discard(threading.current_thread())
                    self._quiet.notify_all()

        thread = threading.Thread(target=job, name=f"standin-{target.__name__}", daemon=True)
        with self._quiet:
            self._jobs.add(thread)
        thread.start()

    def _sleep(self, seconds: float) -> bool:
        """Sleep; False when the stand-in is stopping (the job must then send nothing more)."""
        return not self._stopping.wait(seconds) if seconds > 0 else not self._stopping.is_set()

    def _announce(self, agent: Agent, send_idle: bool, send_webhook: bool) -> None:
        started = time.monotonic()
        if send_idle:
            self._send_report(agent.agent_id, "idle", {})
        if send_webhook:
            # Measured on the real AgentKit: the first report goes out 50-80 ms before the webhook.
            delay = self._rng.uniform(0.05, 0.08) if send_idle else 0.0
            if not self._sleep(started + delay - time.monotonic()):
                return
            self._send_webhook("REGISTER", agent)

    def _begin(self, agent: Agent, run: Run) -> None:
        """Mark `run` in flight on `agent` from the moment it is accepted; record any overlap. Holds the lock."""
        if agent.in_flight:
            self._stats.overlaps.append({"agentId": agent.agent_id, "run": run.key, "busy_with": list(agent.in_flight)})
            logger.warning("overlap agent=%s task=%s while busy with %s", agent.agent_id, run.key,
                           ",".join(agent.in_flight))
        agent.in_flight.append(run.key)
        most = self._stats.max_concurrent_by_agent.get(agent.agent_id, 0)
        self._stats.max_concurrent_by_agent[agent.agent_id] = max(most, len(agent.in_flight))

    def _work(self, agent: Agent, run: Run) -> None:
        with self._lock:
            run.status = "working"
        recovery = self.config.error_recovery
        # The agent works, answers AgentKit, and only then reports `active`, then its outcome.
        if not self._sleep(run.work_time):
            return self._finish(agent, run, "aborted")
        self._send_report(run.agent_id, "active", {})
        if not self._sleep(self._rng.uniform(0.003, 0.010)):
            return self._finish(agent, run, "aborted")
        if run.outcome == "complete":
            # Free the agent before `idle` goes out: Ops-Core may dispatch the next task the
            # moment it has processed that report, before our request even returns.
            self._finish(agent, run, "completed")
            self._send_report(run.agent_id, "idle", self._result(run))
            return
        details = {"error_code": "SIMULATED_FAILURE",
                   "message": f"simulated failure of task {run.task_name} (attempt {run.attempt})"}
        if recovery is None:
            self._finish(agent, run, "failed")
            self._send_report(run.agent_id, "error", details)
            return
        self._send_report(run.agent_id, "error", details)
        if not self._sleep(self._rng.uniform(*recovery)):
            return self._finish(agent, run, "failed")
        self._finish(agent, run, "failed")
        self._send_report(run.agent_id, "idle", {})

    def _finish(self, agent: Agent, run: Run, status: str) -> None:
        with self._lock:
            self._stats.settle(run, status)
            if run.key in agent.in_flight:
                agent.in_flight.remove(run.key)

    def _result(self, run: Run) -> dict[str, Any]:
        if not self.config.with_result:
            return {}  # the real SDK reports no result
        return {"result": {"echo": run.task_parameters, "agent": run.agent_id, "task_name": run.task_name,
                           "attempt": run.attempt}}

    # --- HTTP to Ops-Core --------------------------------------------------------------------------

    def _send_report(self, agent_id: str, state: str, details: dict[str, Any] | None) -> int | None:
        """One POST, never retried (like the SDK); failures are counted and logged."""
        url = f"{self.config.opscore_url}/v1/opscore/agent/{quote(agent_id, safe='')}/state"
        body = wire.state_report(agent_id, state, details)
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        with self._lock:
            self._stats.reports_sent[state] += 1
        status, problem = self._post(url, json.dumps(body).encode(), headers)
        if problem:
            with self._lock:
                self._stats.reports_failed[state] += 1
        logger.info("report agent=%s state=%s -> %s%s", agent_id, state, status or "unsent",
                    f" ({problem})" if problem else "")
        return status

    def _send_webhook(self, event_type: str, agent: Agent) -> None:
        if not self.config.webhook_secret:
            # AgentKit skips the webhook when its URL or secret is not configured.
            with self._lock:
                self._stats.webhooks_skipped += 1
            logger.info("webhook %s agent=%s skipped: no webhook secret", event_type, agent.agent_id)
            return
        body = wire.webhook_body(event_type, agent.details())
        headers = wire.webhook_headers(body, self.config.webhook_secret)
        status, problem = self._post(self.config.notify_url, body, headers)
        with self._lock:
            if problem:
                self._stats.webhooks_failed[event_type] += 1
            else:
                self._stats.webhooks_sent[event_type] += 1
        logger.info("webhook %s agent=%s -> %s%s", event_type, agent.agent_id, status or "unsent",
                    f" ({problem})" if problem else "")

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
        """POST once, no redirects followed: (HTTP status or None if unsent, why it failed or "")."""
        if self._client is None or self._stopping.is_set():
            return None, "stand-in stopping"
        try:
            response = self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{exc.__class__.__name__}: {exc}"
        except RuntimeError:  # the client was closed by stop() mid-flight
            return None, "stand-in stopping"
        if not 200 <= response.status_code < 300:
            return response.status_code, _detail(response) or "refused without a detail"
        return response.status_code, ""


def _detail(response: httpx.Response) -> str:
    """What the SDK logs of a refusal: the JSON `detail`, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:200]
