"""HTML forms for agents."""

from __future__ import annotations

from django import forms
from django.db.models import Q

from agents.models import Agent


class AgentFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search")
    state = forms.ChoiceField(required=False, choices=[("", "any state"), *Agent.State.choices])
    capability = forms.CharField(required=False)
    stale = forms.ChoiceField(required=False, choices=[("", "stale or not"), ("yes", "stale"), ("no", "fresh")])
    drained = forms.ChoiceField(required=False, choices=[("", "drained or not"), ("yes", "drained"),
                                                         ("no", "not drained")])
    deregistered = forms.ChoiceField(required=False, choices=[("", "registered"), ("yes", "deregistered"),
                                                              ("all", "all")])

    def filter(self, queryset):
        self.is_valid()  # a bad value is shown and ignored; the other filters still apply
        data = self.cleaned_data
        if query := data.get("q"):
            queryset = queryset.filter(Q(id__icontains=query) | Q(name__icontains=query))
        if state := data.get("state"):
            queryset = queryset.filter(state=state)
        if capability := data.get("capability"):
            queryset = queryset.with_capability(capability.strip())
        deregistered = data.get("deregistered")
        if deregistered == "yes":
            queryset = queryset.filter(deregistered_at__isnull=False)
        elif deregistered != "all":
            queryset = queryset.filter(deregistered_at__isnull=True)
        if data.get("stale") == "yes":
            queryset = queryset.filter(pk__in=Agent.objects.stale().values("pk"))
        elif data.get("stale") == "no":
            queryset = queryset.filter(pk__in=Agent.objects.fresh().values("pk"))
        if data.get("drained") == "yes":
            queryset = queryset.filter(drained_at__isnull=False)
        elif data.get("drained") == "no":
            queryset = queryset.filter(drained_at__isnull=True)
        return queryset
