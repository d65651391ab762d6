"""The v1 API, mounted at /v1/opscore/. No trailing slashes anywhere (AGENTKIT.md section 2:
the SDK does not follow redirects), so each path is exact. Each app declares its own routes."""

from django.conf import settings
from django.urls import include, path
from django.views.decorators.csp import csp_override
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

urlpatterns = [
    path("", include("agents.api.urls")),
    path("", include("workflows.api.urls")),
    path("", include("sessions.api.urls")),
    # OpenAPI schema and interactive docs (assets served locally by drf-spectacular-sidecar).
    path("schema", SpectacularAPIView.as_view(), name="api-schema"),
    # Each with its own Content-Security-Policy (settings.py): the viewers start from an inline script.
    path("docs", csp_override(settings.OPSCORE_SWAGGER_CSP)(SpectacularSwaggerView.as_view(url_name="api-schema")),
         name="api-docs"),
    path("redoc", csp_override(settings.OPSCORE_REDOC_CSP)(SpectacularRedocView.as_view(url_name="api-schema")),
         name="api-redoc"),
]
