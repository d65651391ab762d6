from django.urls import path

from agents import views

app_name = "agents"

urlpatterns = [
    path("agents/", views.agent_list, name="agent-list"),
    path("agents/<str:agent_id>/", views.agent_detail, name="agent-detail"),
    path("agents/<str:agent_id>/drain/", views.agent_drain_view, name="agent-drain"),
    path("agents/<str:agent_id>/undrain/", views.agent_undrain_view, name="agent-undrain"),
    path("api-keys/", views.apikey_list, name="apikey-list"),
    path("api-keys/new/", views.apikey_create, name="apikey-create"),
    path("api-keys/<int:key_id>/revoke/", views.apikey_revoke, name="apikey-revoke"),
]
