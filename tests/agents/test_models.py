from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent, ApiKey
from agents.services import api_key_bootstrap, api_key_create, api_key_lookup, api_key_revoke
from tests.agents.factories import AgentFactory


def test_with_capability_matches_whole_names_even_with_quotes_and_accents(db):
    cafe = AgentFactory(capabilities=["café", 'say "hi"'])
    AgentFactory(capabilities=["cafés"])
    assert list(Agent.objects.with_capability("café")) == [cafe]
    assert list(Agent.objects.with_capability('say "hi"')) == [cafe]
    assert not Agent.objects.with_capability("caf").exists()


def test_an_agent_is_stale_after_the_window(db, settings):
    settings.OPSCORE_AGENT_STALE_SECONDS = 60
    now = timezone.now()
    fresh = AgentFactory(last_seen_at=now - timedelta(seconds=10))
    old = AgentFactory(last_seen_at=now - timedelta(seconds=61))
    never = AgentFactory(last_seen_at=None)
    gone = AgentFactory(last_seen_at=now - timedelta(days=1), deregistered_at=now)
    assert not fresh.is_stale(now=now) and old.is_stale(now=now) and never.is_stale(now=now)
    assert set(Agent.objects.stale(now=now)) == {old, never}
    assert not gone.is_stale(now=now)  # one rule for a row and for the queryset: deregistered is not stale
    assert gone not in Agent.objects.active()
    # "Not stale" is the complement, for the API's stale=false and the page's "fresh" alike.
    assert set(Agent.objects.not_stale(now=now)) == {fresh, gone}
    assert {a for a in Agent.objects.all() if not a.is_stale(now=now)} == {fresh, gone}


def test_a_key_is_stored_hashed_and_found_by_its_secret(db):
    key, raw = api_key_create(name="fleet")
    assert raw.startswith("opk_") and raw not in (key.key_hash, key.prefix)
    assert key.kind == ApiKey.Kind.SERVICE
    assert api_key_lookup(raw) == key
    assert api_key_lookup(raw[:-1] + ("x" if raw[-1] != "x" else "y")) is None


def test_a_revoked_key_is_not_found(db):
    key, raw = api_key_create(name="agent-7", agent_id="agent-7")
    assert key.kind == ApiKey.Kind.AGENT
    api_key_revoke(key=key)
    assert api_key_lookup(raw) is None


def test_an_agent_bound_key_needs_its_agent(db):
    with pytest.raises(IntegrityError, match="apikey_agent_bound_has_agent"), transaction.atomic():
        ApiKey.objects.create(name="x", kind=ApiKey.Kind.AGENT, agent_id="", prefix="p" * 12, key_hash="0" * 64)


def test_the_environment_key_bootstraps_one_service_key(db, settings):
    settings.OPSCORE_API_KEY = "fleet-wide-key-0123456789"
    first = api_key_bootstrap()
    assert api_key_bootstrap() == first
    assert api_key_lookup("fleet-wide-key-0123456789") == first
    settings.OPSCORE_API_KEY = "another-fleet-key-987654321"
    second = api_key_bootstrap()
    first.refresh_from_db()
    assert second != first and first.revoked_at is not None
    assert api_key_lookup("fleet-wide-key-0123456789") is None


def test_a_revoked_environment_key_is_not_reinstalled(db, settings):
    settings.OPSCORE_API_KEY = "fleet-wide-key-0123456789"
    api_key_revoke(key=api_key_bootstrap())
    with pytest.raises(ValueError, match="OPSCORE_API_KEY was revoked: rotate it"):
        api_key_bootstrap()
    assert not ApiKey.objects.filter(revoked_at__isnull=True).exists()
    settings.OPSCORE_API_KEY = "rotated-fleet-key-987654321"
    rotated = api_key_bootstrap()
    assert rotated is not None and api_key_lookup("rotated-fleet-key-987654321") == rotated


def test_a_short_environment_key_is_refused(db, settings):
    settings.OPSCORE_API_KEY = "short"
    with pytest.raises(ValueError, match="at least 16 characters"):
        api_key_bootstrap()
    assert not ApiKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_uses_of_the_environment_key_install_it_once(settings):
    """The fleet's first reports arrive together: every one must authenticate, none may fail."""
    import threading

    from django.db import connection

    settings.OPSCORE_API_KEY = "fleet-wide-key-concurrent-0001"
    barrier = threading.Barrier(8)
    results, errors = [], []

    def first_use() -> None:
        try:
            barrier.wait()
            results.append(api_key_bootstrap())
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({key.pk for key in results}) == 1
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1
