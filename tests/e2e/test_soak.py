"""The soak's CI version (bench/soak.py for the long one): three minutes of steady mixed load on 200
agents, and every process's RSS stays within 15% of its size after the first minute, with no error
anywhere. The p99 latencies are printed, not asserted: timings belong to the benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import soak  # noqa: E402 (bench/ is no package)
import stacklib  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_three_minutes_of_mixed_load_keep_memory_flat_with_no_error(stack):
    agents = stacklib.start_stack(stack, agents=200, work_time="0.2-1")
    assert len(agents) == 200
    operator = soak.create_operator()
    stack.secrets["operator password"] = operator[1]  # the fixture scans the logs for it
    result = soak.soak(stack, seconds=180, agents=agents, operator=operator, rate=3,
                       sample_seconds=30, warmup_seconds=60)
    print(result.table())
    print(result.verdict())
    assert len(result.samples) == 6 and all(s.requests > 0 for s in result.samples)
    assert result.errors == []
    assert result.rss_problems == []
    assert result.sessions.get("completed", 0) > 300 and set(result.sessions) == {"completed"}
