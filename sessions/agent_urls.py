"""The "agents" namespace of the operator pages: the agent list and detail, which show tasks and
sessions (so their views are in sessions/views.py: agents know nothing of sessions), plus the
agents' own actions and API key pages from agents/urls.py."""

from django.urls import path

from agents import urls as agent_urls
from sessions import attention_views, views

app_name = "agents"

urlpatterns = [
    path("agents/", views.agent_list, name="agent-list"),
    path("agents/<opsid:agent_id>/", views.agent_detail, name="agent-detail"),
    path("agents/<opsid:agent_id>/quarantine/", attention_views.agent_quarantine_view, name="agent-quarantine"),
    path("agents/<opsid:agent_id>/release/", attention_views.agent_release_view, name="agent-release"),
    *agent_urls.urlpatterns,
]
