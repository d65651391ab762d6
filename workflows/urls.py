from django.urls import path

from workflows import views

app_name = "workflows"

urlpatterns = [
    path("workflows/", views.workflow_list, name="workflow-list"),
    path("workflows/new/", views.workflow_create, name="workflow-create"),
    path("workflows/import/", views.workflow_import, name="workflow-import"),
    path("workflows/<opsid:workflow_id>/", views.workflow_detail, name="workflow-detail"),
    path("workflows/<opsid:workflow_id>/edit/", views.workflow_edit, name="workflow-edit"),
    path("workflows/<opsid:workflow_id>/export.<str:fmt>", views.workflow_export, name="workflow-export"),
]
