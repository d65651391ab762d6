"""Operator pages for alert rules: list, create/edit, detail with its deliveries, send a test."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from alerts.forms import AlertRuleForm
from alerts.models import AlertRule
from alerts.services import alert_rule_save, alert_send_test
from ui.permissions import actor_required, viewer_required
from ui.rendering import paginate, query_without_page, render_page


@viewer_required
def rule_list(request: HttpRequest) -> HttpResponse:
    context = {"page": paginate(request, AlertRule.objects.order_by("name", "id")),
               "query": query_without_page(request)}
    return render_page(request, "alerts/alertrule_list.html", "alerts/_alertrule_rows.html", context)


@viewer_required
def rule_detail(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(AlertRule, pk=rule_id)
    context = {"rule": rule, "page": paginate(request, rule.deliveries.order_by("-created_at", "-id")),
               "query": query_without_page(request)}
    return render_page(request, "alerts/alertrule_detail.html", "alerts/_alertdelivery_rows.html", context)


def _form_page(request: HttpRequest, form: AlertRuleForm, *, rule: AlertRule | None = None,
               status: int = 200) -> HttpResponse:
    return render(request, "alerts/alertrule_form.html", {"form": form, "rule": rule}, status=status)


@viewer_required
def rule_create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _rule_save_post(request, None)
    return _form_page(request, AlertRuleForm())


@viewer_required
def rule_edit(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(AlertRule, pk=rule_id)
    if request.method == "POST":
        return _rule_save_post(request, rule)
    return _form_page(request, AlertRuleForm(instance=rule), rule=rule)


@actor_required
def _rule_save_post(request: HttpRequest, rule: AlertRule | None) -> HttpResponse:
    form = AlertRuleForm(request.POST, instance=rule)
    if not form.is_valid():
        return _form_page(request, form, rule=rule, status=400)
    saved = alert_rule_save(rule=form.save(commit=False), by=request.user)
    messages.success(request, f"Alert rule '{saved.name}' saved.")
    return redirect("alerts:rule-detail", rule_id=saved.pk)


@actor_required
def rule_test(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(AlertRule, pk=rule_id)
    delivery = alert_send_test(rule=rule)
    messages.success(request, f"Test alert queued (delivery {delivery.pk}); its outcome shows below.")
    return redirect("alerts:rule-detail", rule_id=rule.pk)
