"""The sessions' API routes (mounted under /v1/opscore/ by opscore_site/api_urls.py)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from sessions.api.views import (
    AgentFleetViewSet,
    ApprovalViewSet,
    FleetViewSet,
    SessionViewSet,
    TaskViewSet,
    WorkflowPauseViewSet,
    WorkflowTriggerView,
)

router = SimpleRouter(trailing_slash="")
# The agents resource with the engine's actions on an agent (quarantine, release): agents know
# nothing of sessions, so its viewset is here, and agents/api/urls.py serves only the agent endpoints.
router.register("agents", AgentFleetViewSet, basename="agent")
router.register("sessions", SessionViewSet, basename="session")
router.register("tasks", TaskViewSet, basename="task")
router.register("approvals", ApprovalViewSet, basename="approval")
router.register("fleet", FleetViewSet, basename="fleet")
# workflows/{id}/pause and /resume (the definitions' own routes are in workflows/api/urls.py).
router.register("workflows", WorkflowPauseViewSet, basename="workflow-pause")

urlpatterns = [
    # Upstream-compatible (AgentKit SDK).
    path("agent/<opsid:agent_id>/workflow", WorkflowTriggerView.as_view(), name="agent-workflow"),
    *router.urls,
]
