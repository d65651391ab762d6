"""The v1 API, mounted at /v1/opscore/. No trailing slashes anywhere (AGENTKIT.md section 2:
the SDK does not follow redirects), so each path below is exact."""

from django.urls import path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from agents.api.views import AgentNotifyView, AgentStateView
from opscore_site.api import IdConverter
from sessions.api.views import AgentFleetViewSet, SessionViewSet, TaskViewSet, WorkflowTriggerView
from workflows.api.views import WorkflowDefinitionViewSet

register_converter(IdConverter, "agentid")

router = SimpleRouter(trailing_slash="")
router.register("agents", AgentFleetViewSet, basename="agent")
router.register("workflows", WorkflowDefinitionViewSet, basename="workflow")
router.register("sessions", SessionViewSet, basename="session")
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = [
    # Upstream-compatible (AgentKit SDK and AgentKit itself).
    path("agent/<agentid:agent_id>/state", AgentStateView.as_view(), name="agent-state"),
    path("agent/<agentid:agent_id>/workflow", WorkflowTriggerView.as_view(), name="agent-workflow"),
    path("internal/agent/notify", AgentNotifyView.as_view(), name="agentkit-notify"),
    # OpenAPI schema and interactive docs (assets served locally by drf-spectacular-sidecar).
    path("schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    *router.urls,
]
