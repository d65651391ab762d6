"""Top-level URLs: the one place that composes the apps' URLs (by include strings).

The agent API is served at the root of the host (AGENTKIT.md section 2); the operator UI at
the site root (DESIGN.md "Operator UI").
"""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from opscore_site import metrics, views
from opscore_site.converters import PathIdConverter

# Before any include below: every app's patterns use <opsid:...> for an id in one path segment.
register_converter(PathIdConverter, "opsid")

urlpatterns = [
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("v1/opscore/", include("opscore_site.api_urls")),
    path("", include("sessions.urls")),
    path("", include("sessions.agent_urls")),
    path("", include("workflows.urls")),
    path("", include("alerts.urls")),
]

# JSON errors under /v1/ (opscore_site/api.py); Django's own pages elsewhere.
handler400 = "opscore_site.api.handler400"
handler403 = "opscore_site.api.handler403"
handler404 = "opscore_site.api.handler404"
handler500 = "opscore_site.api.handler500"
