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
