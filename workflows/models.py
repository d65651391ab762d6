"""Workflow definitions: a validated spec document, with every revision kept."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from workflows.schema import SpecError, WorkflowSpec, validate_definition


class WorkflowDefinition(models.Model):
    """A workflow, stored as its upstream JSON document (`spec`).

    `id`, `name`, `description` and `version` are copied out of the spec for lists and
    filters; the spec is the truth. `revision` counts saved changes; each one is kept
    in WorkflowDefinitionRevision. Sessions keep their own snapshot of the spec.
    """

    id = models.CharField(primary_key=True, max_length=100)
    name = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    version = models.CharField(max_length=50, blank=True)
    spec = models.JSONField()
    revision = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Paused: new triggers are accepted and held `pending` until it is resumed. Written only by the
    # session engine (sessions/engine.py `definition_pause` / `definition_resume`).
    paused_at = models.DateTimeField(null=True, blank=True, editable=False)
    paused_by_label = models.CharField(max_length=255, blank=True, editable=False)
    pause_reason = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["-updated_at"], name="workflow_updated_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def clean(self) -> None:
        try:
            validate_definition(self.spec, definition_id=self.id or None)
        except SpecError as exc:
            raise ValidationError({"spec": exc.lines()}) from None

    @property
    def parsed(self) -> WorkflowSpec:
        return validate_definition(self.spec)


class WorkflowDefinitionRevision(models.Model):
    """One saved revision of a definition's spec. Append-only."""

    definition = models.ForeignKey(WorkflowDefinition, on_delete=models.CASCADE, related_name="revisions")
    revision = models.PositiveIntegerField()
    spec = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["definition", "-revision"]
        constraints = [
            models.UniqueConstraint(fields=["definition", "revision"], name="workflow_revision_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.definition_id} r{self.revision}"
