"""The figures behind the UI's charts, from our own tables with bucketed aggregate queries.

Dashboard: tasks completed and dead (failed for good) per minute and schedule-to-start p50/p95
of first attempts, all from finished tasks on the (status, finished_at) index; sessions started
and ended, on the created_at and ended_at indexes. One GROUP BY per figure, bucketed by minute
(last hour) or hour (24 h, 7 days). Percentiles use PostgreSQL's `percentile_cont`; the demo's
SQLite computes them in Python from at most PERCENTILE_SAMPLE rows. On PostgreSQL the dashboard
costs two queries: the tasks' (counts and percentiles together) and the sessions' (a UNION ALL).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Value
from django.db.models.functions import TruncHour, TruncMinute

from sessions.models import Session, Task
from ui.svg import Bar, Row, Series, line_chart, timeline

WINDOWS = {"1h": (timedelta(hours=1), timedelta(minutes=1)),
           "24h": (timedelta(hours=24), timedelta(hours=1)),
           "7d": (timedelta(days=7), timedelta(hours=1))}
DEFAULT_WINDOW = "1h"
PERCENTILE_SAMPLE = 20_000


def window_of(value: str | None) -> str:
    """The window a `?window=` asks for; anything unknown is the default (never an error)."""
    return value if value in WINDOWS else DEFAULT_WINDOW


def _buckets(now: datetime, window: str) -> tuple[list[datetime], timedelta, type]:
    span, step = WINDOWS[window]
    trunc = TruncMinute if step == timedelta(minutes=1) else TruncHour
    last = now.replace(second=0, microsecond=0)
    if step == timedelta(hours=1):
        last = last.replace(minute=0)
    count = int(span / step)
    return [last - step * (count - 1 - i) for i in range(count)], step, trunc


def _finished_postgres(since: datetime, step: timedelta) -> tuple[dict, dict]:
    """Completed and dead tasks per bucket, and schedule-to-start p50/p95 of first attempts: one query."""
    unit = "minute" if step == timedelta(minutes=1) else "hour"
    delay = "extract(epoch FROM dispatched_at - created_at)"
    first = "status = %s AND attempt = 1 AND dispatched_at IS NOT NULL"
    sql = f"""
        SELECT date_trunc('{unit}', finished_at) AS bucket, status, count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY {delay}) FILTER (WHERE {first}),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY {delay}) FILTER (WHERE {first})
        FROM {Task._meta.db_table}
        WHERE status IN (%s, %s) AND finished_at >= %s
        GROUP BY 1, 2"""
    done = Task.Status.COMPLETED
    counts: dict[str, dict[datetime, int]] = defaultdict(dict)
    percentiles = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [done, done, done, Task.Status.DEAD, since])
        for bucket, status, n, p50, p95 in cursor.fetchall():
            counts[status][bucket] = n
            if p50 is not None:
                percentiles[bucket] = (p50, p95)
    return counts, percentiles


def _percentiles_python(since: datetime, trunc) -> dict[datetime, tuple[float, float]]:
    delays: dict[datetime, list[float]] = defaultdict(list)
    rows = (Task.objects.filter(status=Task.Status.COMPLETED, finished_at__gte=since, attempt=1,
                                dispatched_at__isnull=False)
            .annotate(bucket=trunc("finished_at"),
                      delay=ExpressionWrapper(F("dispatched_at") - F("created_at"), output_field=DurationField()))
            .order_by("-finished_at").values_list("bucket", "delay")[:PERCENTILE_SAMPLE])
    for bucket, delay in rows:
        delays[bucket].append(delay.total_seconds())
    out = {}
    for bucket, values in delays.items():
        values.sort()
        out[bucket] = (_quantile(values, 0.5), _quantile(values, 0.95))
    return out


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation, as PostgreSQL's percentile_cont."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _sessions_started_and_ended(trunc, since: datetime) -> tuple[dict, dict]:
    """Sessions started and ended per bucket, in one query (a UNION ALL of two GROUP BYs on indexes)."""
    def per_bucket(field: str, kind: str):
        return (Session.objects.filter(**{f"{field}__gte": since}).annotate(bucket=trunc(field), kind=Value(kind))
                .order_by().values_list("kind", "bucket").annotate(n=Count("pk")))

    out: dict[str, dict[datetime, int]] = {"started": {}, "ended": {}}
    both = per_bucket("created_at", "started").union(per_bucket("ended_at", "ended"), all=True).order_by()
    for kind, bucket, n in both:
        out[kind][bucket] = n
    return out["started"], out["ended"]


def dashboard_charts(*, now: datetime, window: str) -> dict[str, object]:
    """The dashboard's three charts for `window` (`1h`, `24h`, `7d`)."""
    buckets, step, trunc = _buckets(now, window)
    since = buckets[0]
    per_minute = step / timedelta(minutes=1)
    if connection.vendor == "postgresql":
        by_status, percentiles = _finished_postgres(since, step)
    else:
        by_status = defaultdict(dict)
        for bucket, status, n in (Task.objects.filter(status__in=[Task.Status.COMPLETED, Task.Status.DEAD],
                                                      finished_at__gte=since)
                                  .annotate(bucket=trunc("finished_at")).order_by().values_list("bucket", "status")
                                  .annotate(n=Count("pk"))):
            by_status[status][bucket] = n
        percentiles = _percentiles_python(since, trunc)
    started, ended = _sessions_started_and_ended(trunc, since)
    fmt = "%H:%M" if step < timedelta(days=1) and window != "7d" else "%m-%d %H:%M"
    labels = [b.strftime(fmt) for b in buckets]

    def rate(counts: dict[datetime, int]) -> list[float]:
        return [counts.get(b, 0) / per_minute for b in buckets]

    tasks = line_chart(labels=labels, title="Tasks per minute", testid="chart-tasks", series=[
        Series("completed", rate(by_status[Task.Status.COMPLETED])),
        Series("failed (dead)", rate(by_status[Task.Status.DEAD]))])
    latency = line_chart(labels=labels, title="Schedule-to-start, first attempts", unit=" s",
                         testid="chart-latency", series=[
                             Series("p50", [percentiles[b][0] if b in percentiles else None for b in buckets]),
                             Series("p95", [percentiles[b][1] if b in percentiles else None for b in buckets])])
    sessions = line_chart(labels=labels, title="Sessions per minute", testid="chart-sessions", series=[
        Series("started", rate(started)), Series("ended", rate(ended))])
    return {"charts": [tasks, latency, sessions], "window": window, "windows": list(WINDOWS),
            "totals": {"completed": sum(by_status[Task.Status.COMPLETED].values()),
                       "dead": sum(by_status[Task.Status.DEAD].values()),
                       "started": sum(started.values()), "ended": sum(ended.values())}}


def session_timeline(*, session: Session, tasks: list[Task], now: datetime):
    """A Gantt-like chart of a session: per task, its wait (queued) and each attempt (by outcome)."""
    start = session.created_at
    end = session.ended_at or now
    rows = []
    for task in tasks:
        bars = []
        attempts = list(task.attempts.all())
        first = attempts[0].started_at if attempts else (task.finished_at or now)
        bars.append(Bar(task.created_at, first, "wait", f"{task.step_id}: waiting {_seconds(task.created_at, first)}"))
        for attempt in attempts:
            stop = attempt.ended_at or (task.finished_at if attempt.number == task.attempt else None) or now
            end = max(end, stop)
            bars.append(Bar(attempt.started_at, stop, attempt.outcome,
                            f"{task.step_id} attempt {attempt.number}: {attempt.outcome}, "
                            f"{_seconds(attempt.started_at, stop)}"))
        rows.append(Row(f"{task.sequence}. {task.step_id}", bars))
    return timeline(rows=rows, start=start, end=max(end, start + timedelta(seconds=1)),
                    title="Timeline: waiting, then each attempt", testid="session-timeline")


def _seconds(start: datetime, end: datetime) -> str:
    return f"{max((end - start).total_seconds(), 0):.2f} s"


AGENT_TIMELINE_TASKS = 200


def agent_timeline(*, agent, history: list, now: datetime):
    """The agent's state strip (from its reports, by server receive time) over the span the shown history
    covers, with the tasks it ran in that span on a second row; and the time spent in each state."""
    reports = sorted(history, key=lambda r: r.received_at)
    if not reports:
        return None, []
    start = max(reports[0].received_at, now - timedelta(days=7))
    bars, spent = [], defaultdict(float)
    for report, following in zip(reports, [*reports[1:], None]):
        stop = following.received_at if following else now
        if stop <= start:
            continue
        begin = max(report.received_at, start)
        spent[report.state] += (stop - begin).total_seconds()
        bars.append(Bar(begin, stop, report.state, f"{report.state} from {begin:%H:%M:%S}, {_seconds(begin, stop)}"))
    tasks = list(Task.objects.filter(agent=agent, dispatched_at__isnull=False, dispatched_at__lte=now)
                 .exclude(finished_at__lt=start).order_by("-dispatched_at")
                 .only("id", "step_id", "status", "dispatched_at", "finished_at", "session_id")[:AGENT_TIMELINE_TASKS])
    task_bars = [Bar(t.dispatched_at, t.finished_at or now, t.status,
                     f"{t.step_id} ({t.status}) of session {t.session_id}, {_seconds(t.dispatched_at, t.finished_at or now)}")
                 for t in reversed(tasks)]
    total = sum(spent.values()) or 1.0
    shares = [(state, seconds, 100 * seconds / total) for state, seconds in sorted(spent.items(), key=lambda i: -i[1])]
    chart = timeline(rows=[Row("state", bars), Row(f"tasks ({len(tasks)})", task_bars)], start=start,
                     end=max(now, start + timedelta(seconds=1)), title="State timeline and the tasks it ran",
                     testid="agent-timeline")
    return chart, shares


WORKFLOW_FIGURES_TASKS = 2000


def _p(values: list[float], q: float) -> str:
    return f"{_quantile(sorted(values), q):.2f} s" if values else "—"


def workflow_step_graph(*, spec) -> object:
    """The workflow's steps as a graph (next and fallback edges) with per-step figures from the latest
    WORKFLOW_FIGURES_TASKS tasks of its sessions: runs, failure rate, retries, duration p50/p95."""
    from ui.svg import Edge, Node, step_graph

    rows = (Task.objects.filter(session__workflow_id=spec.id).order_by("-created_at")
            .values_list("step_id", "status", "attempt", "dispatched_at", "finished_at")[:WORKFLOW_FIGURES_TASKS])
    stats: dict[str, dict] = defaultdict(lambda: {"runs": 0, "ended": 0, "dead": 0, "retries": 0, "durations": []})
    for step_id, status, attempt, dispatched_at, finished_at in rows:
        s = stats[step_id]
        s["runs"] += 1
        s["retries"] += max(attempt - 1, 0)
        if status in (Task.Status.COMPLETED, Task.Status.DEAD):
            s["ended"] += 1
            s["dead"] += status == Task.Status.DEAD
        if status == Task.Status.COMPLETED and dispatched_at and finished_at:
            s["durations"].append((finished_at - dispatched_at).total_seconds())
    nodes, edges = [], []
    for step in spec.ordered_steps():
        s = stats.get(step.taskId)
        if s:
            rate = 100 * s["dead"] / s["ended"] if s["ended"] else 0.0
            figures = (f"runs {s['runs']} · failed {rate:.0f}% · retries {s['retries']} · "
                       f"p50 {_p(s['durations'], 0.5)} · p95 {_p(s['durations'], 0.95)}")
            kind = "failing" if rate >= 20 else ""
        else:
            figures, kind = "no runs yet", ""
        nodes.append(Node(step.taskId, f"{step.name or step.taskId} ({step.taskId})", figures, kind))
        if step.nextTaskId:
            edges.append(Edge(step.taskId, step.nextTaskId, "next"))
        if step.fallbackTaskId:
            edges.append(Edge(step.taskId, step.fallbackTaskId, "fallback"))
    return step_graph(nodes=nodes, edges=edges, title="Steps: next and fallback, with figures from recent sessions",
                      testid="workflow-graph")
