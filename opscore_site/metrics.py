"""Prometheus metrics: every metric Ops-Core exports, the hooks that move them, and `GET /metrics`.

Counters and histograms live in the process that sees the event (gunicorn workers, qcluster
workers, the scheduler). With `PROMETHEUS_MULTIPROC_DIR` set (before Python starts: the
client library reads it at import) each process writes its own files there and a scrape of
any web worker sums them all; unset, each process exports only its own numbers (fine for one
process, a test, `runserver`). Gauges read from the database are computed at scrape time by
the apps' registered collectors (`sessions.gauges`) with a few cheap indexed queries, never per request.

Labels are bounded: states, statuses, outcomes, HTTP codes and URL route patterns, never an
agent, session or task id. The hooks count on commit: a transition rolled back never counted.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import prometheus_client
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

# One series per metric, not two: `_created` series double the scrape for nothing here.
prometheus_client.disable_created_metrics()

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Seconds: from a few ms (an idle fleet, woken by NOTIFY) to the default step timeout and beyond.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

STATE_REPORTS = Counter("opscore_state_reports_total", "Agent state reports recorded, by reported state.",
                        ["state"])
HTTP_DURATION = Histogram("opscore_http_request_duration_seconds",
                          "Time to answer an HTTP request, by URL route pattern, method and status.",
                          ["endpoint", "method", "status"], buckets=HTTP_BUCKETS)
TASKS = Counter("opscore_tasks_total",
                "Task outcomes: completed, failed (an attempt failed), retried (a retry was scheduled), dead, "
                "cancelled, timed_out (an attempt failed for having no outcome within its timeout).",
                ["outcome"])
SCHEDULE_TO_START = Histogram("opscore_task_schedule_to_start_seconds",
                              "From a task entering `queued` to its attempt being dispatched.",
                              buckets=LATENCY_BUCKETS)
TASK_DURATION = Histogram("opscore_task_duration_seconds",
                          "From an attempt's dispatch to its end (completed, or failed by the agent, a timeout "
                          "or AgentKit).", ["outcome"], buckets=LATENCY_BUCKETS)
SESSIONS_FINISHED = Counter("opscore_sessions_finished_total", "Sessions that ended, by final status.",
                            ["status"])
AGENTKIT_REQUESTS = Counter("opscore_agentkit_requests_total",
                            "Requests to AgentKit by answer: the HTTP status, or `timeout` / `error` (no answer).",
                            ["code"])
AGENTKIT_DURATION = Histogram("opscore_agentkit_request_duration_seconds", "Time of a request to AgentKit.",
                              buckets=HTTP_BUCKETS)

TASK_OUTCOMES = ("completed", "failed", "retried", "dead", "cancelled", "timed_out")
_OUTCOME_OF_STATUS = {"completed": "completed", "failed": "failed", "retry_scheduled": "retried",
                      "dead": "dead", "cancelled": "cancelled"}
_SESSION_FINAL = ("completed", "failed", "cancelled")

# Every metric name this module exports (the deploy/ files are checked against it).
DATABASE_GAUGES = ("opscore_queue_depth", "opscore_agents", "opscore_agents_stale", "opscore_sessions",
                   "opscore_scheduler_last_pass_timestamp_seconds")
HISTOGRAM_NAMES = frozenset(h._name for h in (HTTP_DURATION, SCHEDULE_TO_START, TASK_DURATION, AGENTKIT_DURATION))
METRIC_NAMES = frozenset({
    "opscore_state_reports_total", "opscore_http_request_duration_seconds", "opscore_tasks_total",
    "opscore_task_schedule_to_start_seconds", "opscore_task_duration_seconds", "opscore_sessions_finished_total",
    "opscore_agentkit_requests_total", "opscore_agentkit_request_duration_seconds", *DATABASE_GAUGES,
})


def _on_commit(action: Callable[[], None]) -> None:
    # robust: a metric must never break the transaction it describes.
    if not transaction.get_connection().in_atomic_block:  # autocommit (a common state report): committed
        try:
            action()
        except Exception:
            logger.exception("a metric could not be recorded")
        return
    transaction.on_commit(action, robust=True)


# --------------------------------------------------------------------------- hooks


def state_report(state: str) -> None:
    """Count one recorded agent state report (call it once the report is recorded)."""
    _on_commit(lambda: STATE_REPORTS.labels(state=state).inc())


def task_moved(*, task: Any, old: str, to: str, now: datetime, queued_since: datetime | None = None) -> None:
    """Called by `engine.task_transition` after each move of a task (`queued_since`: when a task
    moving to `dispatched` last entered `queued`)."""
    outcome = _OUTCOME_OF_STATUS.get(to)
    if to == "dispatched":
        started = queued_since
        if started is not None:
            delay = max((now - started).total_seconds(), 0.0)
            _on_commit(lambda: SCHEDULE_TO_START.observe(delay))
        return
    if outcome is None:
        return
    duration = None
    if to in ("completed", "failed") and old in ("dispatched", "running"):
        dispatched_at = None if "dispatched_at" in task.get_deferred_fields() else task.dispatched_at
        if dispatched_at is not None:
            duration = max((now - dispatched_at).total_seconds(), 0.0)

    def count() -> None:
        TASKS.labels(outcome=outcome).inc()
        if duration is not None:
            TASK_DURATION.labels(outcome=outcome).observe(duration)

    _on_commit(count)


def task_timed_out() -> None:
    """Called by the timeout sweep for an attempt it failed (it is also counted as `failed`)."""
    _on_commit(lambda: TASKS.labels(outcome="timed_out").inc())


def session_moved(*, to: str) -> None:
    """Called by `engine.session_transition` after each move of a session."""
    if to in _SESSION_FINAL:
        _on_commit(lambda: SESSIONS_FINISHED.labels(status=to).inc())


def agentkit_request(*, code: str, seconds: float) -> None:
    """Called by `agents/agentkit.py` for every request it made (an answer, a timeout or an error)."""
    AGENTKIT_REQUESTS.labels(code=code).inc()
    AGENTKIT_DURATION.observe(seconds)


# --------------------------------------------------------------------------- HTTP timing


class MetricsMiddleware:
    """Times every request into `opscore_http_request_duration_seconds`.

    `endpoint` is the route pattern that matched (`v1/opscore/agent/<str:agent_id>/state`), or
    `unmatched` for a 404 no pattern matched or a request refused before URL resolution.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        endpoint = _endpoint(match.route) if match is not None and match.route else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        HTTP_DURATION.labels(endpoint=endpoint, method=method, status=str(response.status_code)).observe(
            time.perf_counter() - started)
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REGEX_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\)")


@functools.lru_cache(maxsize=1024)
def _endpoint(route: str) -> str:
    """A route as people read it: DRF router regexes (`(?P<pk>[^/.]+)$`) as `<pk>`, no anchors."""
    return _REGEX_GROUP.sub(r"<\1>", route).replace("^", "").replace("$", "")


# --------------------------------------------------------------------------- scrape-time gauges

# The gauges read from the apps' tables at scrape time: each app registers its collector (an
# object with `collect()`) from its AppConfig.ready(), so this module imports no app
# (sessions.gauges.FleetGauges). Never computed per request.
_collectors: list[Any] = []


def register_collector(collector: Any) -> None:
    if all(type(existing) is not type(collector) for existing in _collectors):
        _collectors.append(collector)


class _Scrape:
    """The collectors of one scrape, as a registry `generate_latest` can read."""

    def __init__(self, collectors: Iterable[Any]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition() -> bytes:
    """The text of one scrape: every process's counters (multiprocess mode) plus the database gauges."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        process_metrics: Any = registry
    else:
        process_metrics = prometheus_client.REGISTRY
    return generate_latest(_Scrape([process_metrics, *_collectors]))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- GET /metrics


def scrape_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the caller may scrape, else the refusal (401 or 403).

    Open when neither OPSCORE_METRICS_TOKEN nor OPSCORE_METRICS_ALLOWED_IPS is set. Otherwise the
    right Bearer token or a socket address inside the allowlist lets the caller in.
    """
    token = settings.OPSCORE_METRICS_TOKEN
    networks = settings.OPSCORE_METRICS_ALLOWED_IPS
    if not token and not networks:
        return None
    if networks and _address_allowed(request.META.get("REMOTE_ADDR", ""), networks):
        return None
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = HttpResponse("metrics need the Bearer token (OPSCORE_METRICS_TOKEN)\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse("this address may not read the metrics (OPSCORE_METRICS_ALLOWED_IPS)\n", status=403,
                        content_type="text/plain")


def _address_allowed(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: the Prometheus text format."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    if (refusal := scrape_refusal(request)) is not None:
        return refusal
    return HttpResponse(exposition(), content_type=prometheus_client.CONTENT_TYPE_LATEST)

