"""The workflow definitions list filter: one FilterSet for the API list and the page."""

from __future__ import annotations

import django_filters

from opscore_site.filters import search_filter
from workflows.models import WorkflowDefinition


class WorkflowFilter(django_filters.FilterSet):
    """A substring of the id or the name: `search` in the API, `q` on the page."""

    q = search_filter("id", "name", help_text="the operator page's name for `search`")
    search = search_filter("id", "name", help_text="substring of id or name")

    class Meta:
        model = WorkflowDefinition
        fields: list[str] = []
