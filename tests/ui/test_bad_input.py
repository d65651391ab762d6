"""Bad input on the operator pages: a clear message or a 404, never a 500 or lost data."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.agents.factories import AgentFactory
from tests.workflows.factories import WorkflowDefinitionFactory

pytestmark = pytest.mark.django_db


def test_ids_with_nul_in_the_path_are_404(staff_client):
    """PostgreSQL refuses NUL in a query: such an id must not reach the database (it was a 500)."""
    AgentFactory(id="a1")
    WorkflowDefinitionFactory(id="wf")
    for url in ["/agents/a%00/", "/workflows/w%00f/", "/workflows/%00/edit/", "/workflows/%00/export.json",
                "/workflows/%00/start/"]:
        assert staff_client.get(url).status_code == 404, url
    for url in ["/agents/a%00/drain/", "/agents/a%00/undrain/"]:
        assert staff_client.post(url, {"reason": "x"}).status_code == 404, url
