import pytest
from django.core.management import CommandError, call_command

from alerts.management.commands.opscore_demo_alerts import NAME
from alerts.models import AlertRule

pytestmark = pytest.mark.django_db
URL = "http://127.0.0.1:8001/_standin/alerts"


def test_it_creates_the_demo_rule_once(capsys):
    call_command("opscore_demo_alerts", "--url", URL, "--force")
    call_command("opscore_demo_alerts", "--url", URL, "--force")
    rule = AlertRule.objects.get()
    assert (rule.name, rule.kind, rule.channel, rule.target, rule.interval_minutes) == (
        NAME, "step_failures", "webhook", URL, 1)
    assert "updated" in capsys.readouterr().out


def test_dry_run_changes_nothing_and_it_refuses_without_debug_or_a_bad_url(capsys):
    call_command("opscore_demo_alerts", "--url", URL, "--force", "--dry-run")
    assert "would have created" in capsys.readouterr().out and not AlertRule.objects.exists()
    with pytest.raises(CommandError, match="demo only"):
        call_command("opscore_demo_alerts", "--url", URL)
    with pytest.raises(CommandError, match="--url must be an http"):
        call_command("opscore_demo_alerts", "--url", "ftp://x", "--force")
