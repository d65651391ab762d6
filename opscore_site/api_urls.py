"""The v1 API, mounted at /v1/opscore/. No trailing slashes anywhere (AGENTKIT.md section 2:
the SDK does not follow redirects), so each path is exact. Each app declares its own routes."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

urlpatterns = [
    path("", include("agents.api.urls")),
    path("", include("workflows.api.urls")),
    path("", include("sessions.api.urls")),
    # OpenAPI schema and interactive docs (assets served locally by drf-spectacular-sidecar).
    path("schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
