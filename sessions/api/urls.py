"""The sessions' API routes (mounted under /v1/opscore/ by opscore_site/api_urls.py)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from sessions.api.views import SessionViewSet, TaskViewSet, WorkflowTriggerView

router = SimpleRouter(trailing_slash="")
router.register("sessions", SessionViewSet, basename="session")
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = [
    # Upstream-compatible (AgentKit SDK).
    path("agent/<opsid:agent_id>/workflow", WorkflowTriggerView.as_view(), name="agent-workflow"),
    *router.urls,
]
