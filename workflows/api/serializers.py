"""Workflow definition API shapes. The body of create/update is the upstream spec document itself."""

from __future__ import annotations

from rest_framework import serializers

from workflows.models import WorkflowDefinition


class WorkflowDefinitionOut(serializers.ModelSerializer):
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    definition = serializers.JSONField(source="spec")

    class Meta:
        model = WorkflowDefinition
        fields = ["id", "name", "description", "version", "revision", "createdAt", "updatedAt", "definition"]
