"""The agents' API routes (mounted under /v1/opscore/ by opscore_site/api_urls.py)."""

from django.urls import path

from agents.api.state_views import AgentStateView
from agents.api.views import AgentNotifyView

urlpatterns = [
    # Upstream-compatible (AgentKit SDK and AgentKit itself).
    path("agent/<opsid:agent_id>/state", AgentStateView.as_view(), name="agent-state"),
    path("internal/agent/notify", AgentNotifyView.as_view(), name="agentkit-notify"),
]
