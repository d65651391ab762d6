"""The agents list filter: one FilterSet for `GET /v1/opscore/agents` and the agents page."""

from __future__ import annotations

import django_filters

from agents.models import Agent
from opscore_site.filters import ALL, ChoiceListFilter, YesNoFilter, search_filter, text_filter


class AgentFilter(django_filters.FilterSet):
    """state (`a,b`), capability, stale, drained, deregistered (yes, no or all), search (`q` on the page).

    Without an answer to `deregistered` the API lists every agent, the page only registered
    ones (`registered_by_default=True`).
    """

    q = search_filter("id", "name", help_text="the operator page's name for `search`")
    search = search_filter("id", "name", help_text="substring of id or name")
    state = ChoiceListFilter(field_name="state", label="State", choices=Agent.State.choices, empty_label="any state",
                             help_text="comma-separated states")
    capability = text_filter(label="Capability", method="filter_capability", help_text="a capability it lists")
    stale = YesNoFilter(label="Stale", method="filter_stale", help_text="no report within OPSCORE_AGENT_STALE_SECONDS "
                        "(a deregistered agent is never stale)",
                        choices=[("", "stale or not"), ("yes", "stale"), ("no", "fresh")])
    drained = YesNoFilter(label="Drained", method="filter_drained", help_text="drained (no new dispatch)",
                          choices=[("", "drained or not"), ("yes", "drained"), ("no", "not drained")])
    deregistered = YesNoFilter(label="Deregistered", method="filter_deregistered", allow_all=True,
                               help_text="yes, no, or all (the default in the API; the page shows registered ones)",
                               choices=[("", "registered"), ("yes", "deregistered"), ("all", "all")])

    class Meta:
        model = Agent
        fields: list[str] = []

    def __init__(self, *args, registered_by_default: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.registered_by_default = registered_by_default

    def filter_capability(self, queryset, name, value):
        return queryset.with_capability(value)

    def filter_stale(self, queryset, name, value: bool):
        return queryset.stale() if value else queryset.not_stale()

    def filter_drained(self, queryset, name, value: bool):
        return queryset.filter(drained_at__isnull=not value)

    def filter_deregistered(self, queryset, name, value):
        return queryset if value == ALL else queryset.filter(deregistered_at__isnull=not value)

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        if self.registered_by_default and self.form.cleaned_data.get("deregistered") is None:
            queryset = queryset.filter(deregistered_at__isnull=True)
        return queryset
