"""What the benchmark scripts share: a fresh database beside DATABASE_URL's, percentiles, and
timing a set of client threads."""

from __future__ import annotations

import os
import threading
import time
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


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process tree in `roots` (name -> pid),
    by PostgreSQL's processes ("postgres": every process named postgres on this machine) and by
    this process ("bench"). Children that ended and were reaped count in their parent's totals, so
    two readings subtract: `cpu_delta`."""
    hz = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, name, seconds incl. reaped children)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                head, tail = fh.read().rsplit(")", 1)
            fields = tail.split()
            table[int(entry)] = (int(fields[1]), head.split("(", 1)[1],
                                 sum(int(value) for value in fields[11:15]) / hz)
        except (OSError, IndexError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> float:
        total, frontier = 0.0, [pid] if pid in table else []
        while frontier:
            current = frontier.pop()
            total += table[current][2]
            frontier.extend(children.get(current, []))
        return total

    totals = {name: tree(pid) for name, pid in roots.items()}
    totals["postgres"] = sum(seconds for _, name, seconds in table.values() if name == "postgres")
    totals["bench"] = table.get(os.getpid(), (0, "", 0.0))[2]
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each group used between two `cpu_seconds` readings (a tree that went away counts 0)."""
    return {name: max(0.0, after.get(name, 0.0) - seconds) for name, seconds in before.items()}
