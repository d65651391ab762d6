"""What the benchmark scripts share: a fresh database beside DATABASE_URL's, percentiles,
timing a set of client threads, and processes read from /proc (trees, RSS, CPU seconds)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def recreate_database(name: str, admin_url: str | None = None) -> str:
    """Drop and create database `name` on DATABASE_URL's server; return its URL."""
    import psycopg

    parts = urlparse(admin_url or os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    with psycopg.connect(urlunparse(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunparse(parts._replace(path=f"/{name}"))


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (fraction 0.99 = p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def run_threads(threads: list[threading.Thread]) -> float:
    """Start every thread, wait for all of them; return the wall seconds that took."""
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


@dataclass(frozen=True)
class ProcStat:
    parent: int
    name: str
    state: str
    rss_kb: int
    cpu_seconds: float  # user + system, with the children it has reaped


def proc_stats() -> dict[int, ProcStat]:
    """pid -> ProcStat of every process in /proc (zombies included: their CPU is not yet reaped)."""
    hz, page_kb = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE") // 1024
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                head, tail = fh.read().rsplit(")", 1)
            fields = tail.split()
            stats[int(entry)] = ProcStat(parent=int(fields[1]), name=head.split("(", 1)[1], state=fields[0],
                                         rss_kb=int(fields[21]) * page_kb,
                                         cpu_seconds=sum(int(value) for value in fields[11:15]) / hz)
        except (OSError, IndexError, ValueError):
            continue
    return stats


def descendants(pid: int, table: Mapping[int, tuple[int, ...]]) -> list[int]:
    """`pid` and every process below it in `table` (pid -> a tuple whose first item is the parent)."""
    found, frontier = [], [pid] if pid in table else []
    while frontier:
        current = frontier.pop()
        found.append(current)
        frontier.extend(child for child, row in table.items() if row[0] == current)
    return found


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process tree in `roots` (name -> pid),
    by PostgreSQL's processes ("postgres": every process named postgres on this machine) and by
    this process ("bench"). Children that ended and were reaped count in their parent's totals, so
    two readings subtract: `cpu_delta`."""
    stats = proc_stats()
    parents = {pid: (stat.parent,) for pid, stat in stats.items()}
    totals = {name: sum(stats[each].cpu_seconds for each in descendants(pid, parents))
              for name, pid in roots.items()}
    totals["postgres"] = sum(stat.cpu_seconds for stat in stats.values() if stat.name == "postgres")
    totals["bench"] = stats[os.getpid()].cpu_seconds if os.getpid() in stats else 0.0
    return totals

def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each group used between two `cpu_seconds` readings (a tree that went away counts 0)."""
    return {name: max(0.0, after.get(name, 0.0) - seconds) for name, seconds in before.items()}
