from django.urls import path

from sessions import attention_views, operator_views, views

app_name = "sessions"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("sessions/", views.session_list, name="session-list"),
    path("sessions/<uuid:session_id>/", views.session_detail, name="session-detail"),
    path("sessions/<uuid:session_id>/cancel/", views.session_cancel, name="session-cancel"),
    path("sessions/<uuid:session_id>/retry/", views.session_retry, name="session-retry"),
    path("tasks/<uuid:task_id>/retry/", views.task_retry, name="task-retry"),
    path("failures/", views.failure_list, name="failure-list"),
    path("failures/retry/", views.failure_retry, name="failure-retry"),
    path("failures/groups/<slug:fingerprint>/<slug:action>/", attention_views.failure_group_action,
         name="failure-group-action"),
    path("attention/", attention_views.attention_list, name="attention"),
    path("workflows/<opsid:workflow_id>/start/", views.session_start, name="session-start"),
    # Operators in the loop: pause and resume, the fleet switch, the approvals inbox.
    path("sessions/<uuid:session_id>/pause/", operator_views.session_pause, name="session-pause"),
    path("sessions/<uuid:session_id>/resume/", operator_views.session_resume, name="session-resume"),
    path("sessions/bulk/<str:verb>/", operator_views.session_bulk, name="session-bulk"),
    path("workflows/<opsid:workflow_id>/pause/", operator_views.definition_pause, name="workflow-pause"),
    path("workflows/<opsid:workflow_id>/resume/", operator_views.definition_resume, name="workflow-resume"),
    path("fleet/pause/", operator_views.fleet_pause, name="fleet-pause"),
    path("fleet/resume/", operator_views.fleet_resume, name="fleet-resume"),
    path("approvals/", operator_views.approval_list, name="approval-list"),
    path("approvals/<uuid:task_id>/decide/", operator_views.approval_decide, name="approval-decide"),
]
