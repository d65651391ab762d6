"""Agent actions and API key pages. sessions/agent_urls.py adds the agent list and detail (from sessions.views)."""

from django.urls import path

from agents import views

urlpatterns = [
    path("agents/<opsid:agent_id>/drain/", views.agent_drain_view, name="agent-drain"),
    path("agents/<opsid:agent_id>/undrain/", views.agent_undrain_view, name="agent-undrain"),
    path("api-keys/", views.apikey_list, name="apikey-list"),
    path("api-keys/new/", views.apikey_create, name="apikey-create"),
    path("api-keys/<int:key_id>/revoke/", views.apikey_revoke, name="apikey-revoke"),
]
