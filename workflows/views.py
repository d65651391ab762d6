"""Operator pages for workflow definitions: list, detail, create/edit, import/export."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from ui.permissions import actor_required, viewer_required
from ui.rendering import paginate, query_without_page, render_page
from opscore_site.filters import page_filter
from workflows import figures
from workflows.filters import WorkflowFilter
from workflows.forms import SpecForm
from workflows.models import WorkflowDefinition
from workflows.services import DefinitionConflict, workflow_save

EXAMPLE = """{
  "id": "my-workflow",
  "name": "My workflow",
  "description": "",
  "version": "1.0",
  "tasks": [
    {"taskId": "step_1", "name": "First step", "parameters": {}, "nextTaskId": null}
  ]
}
"""


@viewer_required
def workflow_list(request: HttpRequest) -> HttpResponse:
    filters = page_filter(WorkflowFilter, request.GET, WorkflowDefinition.objects.select_related("updated_by"))
    context = {"page": paginate(request, filters.qs.order_by("id")), "query": query_without_page(request),
               "form": filters.form}
    return render_page(request, "workflows/workflowdefinition_list.html", "workflows/_workflowdefinition_rows.html",
                       context)


@viewer_required
def workflow_detail(request: HttpRequest, workflow_id: str) -> HttpResponse:
    definition = get_object_or_404(WorkflowDefinition.objects.select_related("updated_by"), pk=workflow_id)
    spec = definition.parsed
    context = {
        "definition": definition,
        "spec": spec,
        "steps": spec.ordered_steps(),
        "graph": figures.step_graph(spec=spec),
        "revisions": definition.revisions.select_related("created_by")[:10],
    }
    return render(request, "workflows/workflowdefinition_detail.html", context)


def _form_page(request, form, *, definition=None, status=200) -> HttpResponse:
    return render(request, "workflows/workflowdefinition_form.html",
                  {"form": form, "definition": definition}, status=status)


@viewer_required
def workflow_create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _workflow_create_post(request)
    return _form_page(request, SpecForm(initial={"document": EXAMPLE}))


@actor_required
def _workflow_create_post(request: HttpRequest) -> HttpResponse:
    form = SpecForm(request.POST, request.FILES)
    if not form.is_valid():
        return _form_page(request, form, status=400)
    try:
        definition, outcome = workflow_save(spec=form.spec, by=request.user, allow_update=False)
    except DefinitionConflict:
        outcome = "conflict"
    if outcome != "created":  # the id is taken (maybe by a save that won the race a moment ago)
        form.spec_errors = {"id": [f"a definition '{form.spec.id}' already exists; edit it instead"]}
        form.add_error(None, "this id is taken")
        return _form_page(request, form, status=400)
    messages.success(request, f"Workflow definition '{definition.pk}' created.")
    return redirect("workflows:workflow-detail", workflow_id=definition.pk)


@viewer_required
def workflow_edit(request: HttpRequest, workflow_id: str) -> HttpResponse:
    definition = get_object_or_404(WorkflowDefinition, pk=workflow_id)
    if request.method == "POST":
        return _workflow_edit_post(request, definition)
    return _form_page(request, SpecForm(initial={"document": definition.parsed.to_json()}), definition=definition)


@actor_required
def _workflow_edit_post(request: HttpRequest, definition: WorkflowDefinition) -> HttpResponse:
    form = SpecForm(request.POST, request.FILES, expected_id=definition.pk)
    if not form.is_valid():
        return _form_page(request, form, definition=definition, status=400)
    definition, outcome = workflow_save(spec=form.spec, by=request.user)
    if outcome == "unchanged":
        messages.info(request, "No changes: the definition is the same as before.")
    else:
        messages.success(request, f"Saved revision {definition.revision} of '{definition.pk}'.")
    return redirect("workflows:workflow-detail", workflow_id=definition.pk)


@viewer_required
def workflow_import(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _workflow_import_post(request)
    return render(request, "workflows/workflowdefinition_import.html", {"form": SpecForm()})


@actor_required
def _workflow_import_post(request: HttpRequest) -> HttpResponse:
    form = SpecForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "workflows/workflowdefinition_import.html", {"form": form}, status=400)
    definition, outcome = workflow_save(spec=form.spec, by=request.user)
    messages.success(request, f"Imported '{definition.pk}': {outcome} (revision {definition.revision}).")
    return redirect("workflows:workflow-detail", workflow_id=definition.pk)


@viewer_required
def workflow_export(request: HttpRequest, workflow_id: str, fmt: str) -> HttpResponse:
    definition = get_object_or_404(WorkflowDefinition, pk=workflow_id)
    spec = definition.parsed
    if fmt == "json":
        body, content_type = spec.to_json(), "application/json"
    elif fmt == "yaml":
        body, content_type = spec.to_yaml(), "application/yaml"
    else:
        raise Http404("export as json or yaml")
    response = HttpResponse(body, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{definition.pk}.{fmt}"'
    return response
