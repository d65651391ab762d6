"""The operator UI, mounted at the site root. This app composes the others' pages.

The "agents" namespace mixes agents.views (actions, API keys) with the agent list and
detail from sessions.views, which show tasks (agents know nothing of sessions).
"""

from django.urls import include, path

from agents import urls as agent_urls
from sessions import attention_views
from sessions import views as session_views
from ui import converters  # noqa: F401 (registers <opsid:...>)

agent_pages = [
    path("agents/", session_views.agent_list, name="agent-list"),
    path("agents/<opsid:agent_id>/", session_views.agent_detail, name="agent-detail"),
    path("agents/<opsid:agent_id>/quarantine/", attention_views.agent_quarantine_view, name="agent-quarantine"),
    path("agents/<opsid:agent_id>/release/", attention_views.agent_release_view, name="agent-release"),
    *agent_urls.urlpatterns,
]

urlpatterns = [
    path("", include("sessions.urls")),
    path("", include((agent_pages, "agents"))),
    path("", include("workflows.urls")),
]
