"""Demo only: the example alert rule of the quickstart, posting to a receiver the demo runs."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from alerts.models import AlertRule
from alerts.services import alert_rule_save
from opscore_site.httpurl import http_url_problem

NAME = "Demo: failing steps"


class Command(BaseCommand):
    help = ("Demo only (needs DEBUG=1, or --force): create or update the example alert rule "
            f"'{NAME}' (a step failed in the last 5 minutes; at most one alert a minute) as a signed webhook to --url.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--url", required=True, help="the receiver, e.g. http://127.0.0.1:8001/_standin/alerts")
        parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
        parser.add_argument("--force", action="store_true", help="run without DEBUG")

    def handle(self, *args, url: str, dry_run: bool, force: bool, **options) -> None:
        if not (settings.DEBUG or force):
            raise CommandError("demo only: set DEBUG=1 or pass --force")
        if problem := http_url_problem(url):
            raise CommandError(f"--url {problem}")
        rule = AlertRule.objects.filter(name=NAME).first()
        action = "updated" if rule else "created"
        if dry_run:
            self.stdout.write(f"would have {action} the alert rule '{NAME}' -> {url}")
            return
        rule = rule or AlertRule(name=NAME)
        rule.kind, rule.threshold, rule.window_minutes, rule.interval_minutes = AlertRule.Kind.STEP_FAILURES, 0, 5, 1
        rule.channel, rule.target, rule.enabled = AlertRule.Channel.WEBHOOK, url, True
        alert_rule_save(rule=rule)
        self.stdout.write(f"{action} the alert rule '{NAME}' -> {url}")
