import factory

from alerts.models import AlertRule


class AlertRuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AlertRule

    name = factory.Sequence(lambda n: f"rule-{n}")
    kind = AlertRule.Kind.SESSION_FAILED
    channel = AlertRule.Channel.WEBHOOK
    target = "http://127.0.0.1:9/hook"
    interval_minutes = 5
