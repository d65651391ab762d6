"""Writes to workflow definitions. Every caller (API, admin, UI, import) goes through here."""

from __future__ import annotations

from typing import Literal

from django.db import IntegrityError, transaction
from django.utils import timezone

from opscore_site.errors import ApplicationError
from workflows.models import WorkflowDefinition, WorkflowDefinitionRevision
from workflows.schema import WorkflowSpec

SaveOutcome = Literal["created", "updated", "unchanged"]


class DefinitionConflict(ApplicationError):
    """A definition with this id exists with other content, and overwriting was not allowed."""

    code = "definition_conflict"
    http_status = 409


def _locked(definition_id: str) -> WorkflowDefinition | None:
    return WorkflowDefinition.objects.select_for_update().filter(pk=definition_id).first()


def workflow_save(
    *, spec: WorkflowSpec, by=None, allow_update: bool = True
) -> tuple[WorkflowDefinition, SaveOutcome]:
    """Create or update the definition `spec.id` from a validated spec.

    Returns the definition and what happened. An identical spec is "unchanged" (no new
    revision). With `allow_update=False` a different spec under an existing id raises
    DefinitionConflict (the inline-definition rule of the trigger endpoint). Safe under
    concurrent saves of the same new id: the one that loses the insert sees the winner's row.
    """
    document = spec.to_document()
    with transaction.atomic():
        existing = _locked(spec.id)
        if existing is None:
            try:
                with transaction.atomic():
                    definition = WorkflowDefinition.objects.create(
                        id=spec.id,
                        name=spec.name,
                        description=spec.description,
                        version=spec.version,
                        spec=document,
                        updated_by=by,
                    )
                    WorkflowDefinitionRevision.objects.create(
                        definition=definition, revision=definition.revision, spec=document, created_by=by
                    )
                return definition, "created"
            except IntegrityError:
                # Another save inserted this id after our read: treat its row as the existing one.
                existing = _locked(spec.id)
                if existing is None:
                    raise
        if existing.spec == document:
            return existing, "unchanged"
        if not allow_update:
            raise DefinitionConflict(f"workflow definition '{spec.id}' already exists with different content")
        existing.spec = document
        existing.name = spec.name
        existing.description = spec.description
        existing.version = spec.version
        existing.revision += 1
        existing.updated_at = timezone.now()
        existing.updated_by = by
        existing.save()
        WorkflowDefinitionRevision.objects.create(
            definition=existing, revision=existing.revision, spec=document, created_by=by
        )
    return existing, "updated"
