"""Admin for workflow definitions. The spec is validated by the one WorkflowSpec validator."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin

from workflows.models import WorkflowDefinition, WorkflowDefinitionRevision
from workflows.schema import SpecError, WorkflowSpec, validate_definition
from workflows.services import workflow_save
from ui.permissions import ReadOnlyGroupAdminMixin


class WorkflowDefinitionForm(forms.ModelForm):
    class Meta:
        model = WorkflowDefinition
        fields = ("spec",)
        widgets = {"spec": forms.Textarea(attrs={"rows": 30, "cols": 100, "style": "font-family: monospace"})}

    def clean_spec(self):
        document = self.cleaned_data["spec"]
        try:
            spec = validate_definition(document, new_input=True, definition_id=self.instance.pk or None)
        except SpecError as exc:
            raise forms.ValidationError(exc.lines()) from None
        self.parsed_spec: WorkflowSpec = spec
        return spec.to_document()


class RevisionInline(admin.TabularInline):
    model = WorkflowDefinitionRevision
    fields = ("revision", "created_at", "created_by")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WorkflowDefinition)
class WorkflowDefinitionAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    form = WorkflowDefinitionForm
    list_display = ("id", "name", "version", "revision", "updated_at", "updated_by")
    search_fields = ("id", "name", "description")
    list_filter = ("version",)
    readonly_fields = ("id", "name", "description", "version", "revision", "created_at", "updated_at", "updated_by")
    inlines = [RevisionInline]

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def save_model(self, request, obj, form, change) -> None:
        definition, _ = workflow_save(spec=form.parsed_spec, by=request.user)
        obj.pk = definition.pk
        obj.__dict__.update(definition.__dict__)


@admin.register(WorkflowDefinitionRevision)
class WorkflowDefinitionRevisionAdmin(ReadOnlyGroupAdminMixin, admin.ModelAdmin):
    list_display = ("definition", "revision", "created_at", "created_by")
    search_fields = ("definition__id",)
    raw_id_fields = ("definition",)
    readonly_fields = ("definition", "revision", "pretty_spec", "created_at", "created_by")
    exclude = ("spec",)

    @admin.display(description="spec")
    def pretty_spec(self, obj) -> str:
        from django.utils.html import format_html

        return format_html("<pre>{}</pre>", json.dumps(obj.spec, indent=2))

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
