"""Writes to workflow definitions. Every caller (API, admin, UI, import) goes through here."""

from __future__ import annotations

from typing import Literal

from django.db import transaction
from django.utils import timezone

from workflows.models import WorkflowDefinition, WorkflowDefinitionRevision
from workflows.schema import WorkflowSpec

SaveOutcome = Literal["created", "updated", "unchanged"]


class DefinitionConflict(Exception):
    """A definition with this id exists with other content, and overwriting was not allowed."""


def workflow_save(
    *, spec: WorkflowSpec, by=None, allow_update: bool = True
) -> tuple[WorkflowDefinition, SaveOutcome]:
    """Create or update the definition `spec.id` from a validated spec.

    Returns the definition and what happened. An identical spec is "unchanged" (no new
    revision). With `allow_update=False` a different spec under an existing id raises
    DefinitionConflict (the inline-definition rule of the trigger endpoint).
    """
    document = spec.to_document()
    with transaction.atomic():
        existing = WorkflowDefinition.objects.select_for_update().filter(pk=spec.id).first()
        if existing is not None:
            if existing.spec == document:
                return existing, "unchanged"
            if not allow_update:
                raise DefinitionConflict(
                    f"workflow definition '{spec.id}' already exists with different content"
                )
            existing.spec = document
            existing.name = spec.name
            existing.description = spec.description
            existing.version = spec.version
            existing.revision += 1
            existing.updated_at = timezone.now()
            existing.updated_by = by
            existing.save()
            definition, outcome = existing, "updated"
        else:
            definition = WorkflowDefinition.objects.create(
                id=spec.id,
                name=spec.name,
                description=spec.description,
                version=spec.version,
                spec=document,
                updated_by=by,
            )
            outcome = "created"
        WorkflowDefinitionRevision.objects.create(
            definition=definition, revision=definition.revision, spec=document, created_by=by
        )
    return definition, outcome
