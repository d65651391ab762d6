import os
import signal

import pytest

from agents.models import Agent
from opscore_site.commands import atomic_or_dry_run, run_until_stopped


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_loop_survives_a_failing_step_and_stops_on_a_signal(restore_signals, sig):
    calls, errors = [], []

    def step():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database blip")
        if len(calls) == 3:
            os.kill(os.getpid(), sig)

    run_until_stopped(interval=0.01, step=step, on_error=errors.append)
    assert len(calls) == 3
    assert [str(e) for e in errors] == ["database blip"]


@pytest.mark.django_db
@pytest.mark.parametrize("dry_run,kept", [(True, 0), (False, 1)])
def test_a_dry_run_rolls_the_whole_transaction_back(dry_run, kept):
    with atomic_or_dry_run(dry_run):
        Agent.objects.create(id="a-1")
        assert Agent.objects.count() == 1
    assert Agent.objects.count() == kept
