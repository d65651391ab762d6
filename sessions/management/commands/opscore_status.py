"""One screen of health: agents, sessions, the job queue, the scheduler and the qcluster."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from django.db.models import Count, Min
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.status import Stat

from opscore_site.commands import OpsCommand, check_seconds, database_problem
from sessions.management.commands.opscore_scheduler import HEARTBEAT_KEY
from sessions.models import Session, Task
from sessions.overview import fleet_counts

UNHEALTHY_EXIT = 2


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round(max((now - moment).total_seconds(), 0.0), 1)


def snapshot(*, now: datetime) -> dict[str, Any]:
    """Everything the screen shows, as plain data (the --json output)."""
    counts = fleet_counts(now=now)
    by_state = {state or "unknown": n for state, n in
                sorted(counts["agents_by_state"].items(), key=lambda item: item[0] or "unknown")}
    sessions_24h = dict(sorted(counts["sessions_24h_by_status"].items()))
    # A job row's `lock` is its enqueue time until a worker leases it (then it moves into the
    # future); so rows with lock <= now are waiting, and the smallest lock is the oldest wait.
    waiting = OrmQ.objects.filter(key=Conf.CLUSTER_NAME, lock__lte=now)
    queue = waiting.aggregate(depth=Count("pk"), oldest=Min("lock"))
    leased = OrmQ.objects.filter(key=Conf.CLUSTER_NAME, lock__gt=now).count()
    beat_text = cache.get(HEARTBEAT_KEY)
    beat = parse_datetime(beat_text) if isinstance(beat_text, str) else None
    clusters = [stat for stat in Stat.get_all() if stat.status != Conf.STOPPED]
    return {
        "time": now.isoformat(),
        "agents": {
            "by_state": by_state,
            "total": sum(by_state.values()),
            "stale": counts["agents_stale"],
            "drained": counts["agents_drained"],
            "deregistered": counts["agents_deregistered"],
        },
        "sessions": {
            "last_24h_by_status": sessions_24h,
            "running": Session.objects.filter(status=Session.Status.RUNNING).count(),
            "pending": Session.objects.filter(status=Session.Status.PENDING).count(),
        },
        "tasks": {
            "queued": Task.objects.filter(status=Task.Status.QUEUED).count(),
            "in_flight": Task.objects.filter(status__in=Task.IN_FLIGHT).count(),
            "retry_scheduled": Task.objects.filter(status=Task.Status.RETRY_SCHEDULED).count(),
            "failures_waiting": sum(counts["failures_by_status"].values()),
        },
        "queue": {"depth": queue["depth"], "leased": leased,
                  "oldest_waiting_seconds": _age(queue["oldest"], now)},
        "scheduler": {"heartbeat": beat.isoformat() if beat else None, "heartbeat_age_seconds": _age(beat, now)},
        "cluster": {"alive": len(clusters),
                    "clusters": [{"id": str(s.cluster_id), "host": s.host, "status": str(s.status),
                                  "workers": len(s.workers)} for s in clusters]},
    }


def problems(data: dict[str, Any], *, max_heartbeat_age: float, max_queue_age: float) -> list[str]:
    found = []
    beat_age = data["scheduler"]["heartbeat_age_seconds"]
    if beat_age is None:
        found.append("the scheduler has never reported (is `manage.py opscore_scheduler` running?)")
    elif beat_age > max_heartbeat_age:
        found.append(f"the scheduler's last pass was {beat_age:.0f}s ago (limit {max_heartbeat_age:.0f}s)")
    if data["cluster"]["alive"] == 0:
        found.append("no django-q2 cluster is alive (is `manage.py qcluster` running?)")
    queue_age = data["queue"]["oldest_waiting_seconds"]
    if queue_age is not None and queue_age > max_queue_age:
        found.append(f"the oldest queued job has waited {queue_age:.0f}s (limit {max_queue_age:.0f}s)")
    return found


def _counts(mapping: dict[str, int]) -> str:
    return "  ".join(f"{key} {value}" for key, value in mapping.items()) or "none"


class Command(OpsCommand):
    help = (
        "Show Ops-Core's health on one screen: agents by state, sessions by status, the job queue, "
        "the scheduler and the qcluster. Exits 2 when unhealthy (database unreachable, scheduler heartbeat missing or old, "
        "no cluster alive, a queued job waiting too long), so cron and monitors can call it. --json for scripts."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print one JSON object.")
        parser.add_argument("--max-heartbeat-age", type=float, default=30.0, metavar="SECONDS",
                            help="Unhealthy when the scheduler's last pass is older (default 30).")
        parser.add_argument("--max-queue-age", type=float, default=300.0, metavar="SECONDS",
                            help="Unhealthy when the oldest queued job has waited longer (default 300).")

    def handle(self, *args, as_json: bool, max_heartbeat_age: float, max_queue_age: float, **options) -> None:
        check_seconds("--max-heartbeat-age", max_heartbeat_age)
        check_seconds("--max-queue-age", max_queue_age)
        now = timezone.now()
        try:
            data = snapshot(now=now)
        except (OperationalError, InterfaceError) as exc:
            # The one thing a monitor must hear about: unhealthy (exit 2), not a traceback.
            problem = database_problem(exc)
            if as_json:
                self.stdout.write(json.dumps({"time": now.isoformat(), "healthy": False, "problems": [problem]},
                                             indent=2))
            else:
                self.stdout.write(f"Ops-Core status at {now.isoformat()}\n  health     UNHEALTHY\n    - {problem}")
            raise SystemExit(UNHEALTHY_EXIT) from None
        found = problems(data, max_heartbeat_age=max_heartbeat_age, max_queue_age=max_queue_age)
        data["healthy"], data["problems"] = not found, found
        if as_json:
            self.stdout.write(json.dumps(data, indent=2, default=str))
        else:
            self._screen(data)
        if found:
            raise SystemExit(UNHEALTHY_EXIT)

    def _screen(self, data: dict[str, Any]) -> None:
        a, s, t, q = data["agents"], data["sessions"], data["tasks"], data["queue"]
        beat, cluster = data["scheduler"], data["cluster"]
        oldest = "-" if q["oldest_waiting_seconds"] is None else f"{q['oldest_waiting_seconds']:.0f}s"
        beat_age = "never" if beat["heartbeat_age_seconds"] is None else f"{beat['heartbeat_age_seconds']:.0f}s ago"
        lines = [
            f"Ops-Core status at {data['time']}",
            f"  agents     {a['total']} registered: {_counts(a['by_state'])}",
            f"             stale {a['stale']}  drained {a['drained']}  deregistered {a['deregistered']}",
            f"  sessions   running {s['running']}  pending {s['pending']}  "
            f"last 24h: {_counts(s['last_24h_by_status'])}",
            f"  tasks      queued {t['queued']}  in flight {t['in_flight']}  retry scheduled "
            f"{t['retry_scheduled']}  failures waiting {t['failures_waiting']}",
            f"  job queue  depth {q['depth']}  leased {q['leased']}  oldest waiting {oldest}",
            f"  scheduler  last pass {beat_age}",
            f"  cluster    {cluster['alive']} alive"
            + "".join(f"  [{c['host']} {c['status']}, {c['workers']} workers]" for c in cluster["clusters"]),
            "  health     " + ("OK" if data["healthy"] else "UNHEALTHY"),
        ]
        lines += [f"    - {problem}" for problem in data["problems"]]
        self.stdout.write("\n".join(lines))
