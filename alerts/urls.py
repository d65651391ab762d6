from django.urls import path

from alerts import views

app_name = "alerts"

urlpatterns = [
    path("alerts/", views.rule_list, name="rule-list"),
    path("alerts/new/", views.rule_create, name="rule-create"),
    path("alerts/<int:rule_id>/", views.rule_detail, name="rule-detail"),
    path("alerts/<int:rule_id>/edit/", views.rule_edit, name="rule-edit"),
    path("alerts/<int:rule_id>/test/", views.rule_test, name="rule-test"),
]
