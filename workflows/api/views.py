"""Workflow definitions: list, detail, create and update. Bodies are upstream spec documents."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from agents.api.auth import ApiKeyUser, OperatorOrServiceKey
from opscore_site.filters import api_filter, openapi_parameters
from workflows.api.serializers import WorkflowDefinitionOut
from workflows.filters import WorkflowFilter
from workflows.models import WorkflowDefinition
from workflows.schema import ID_PATTERN, validate_definition
from workflows.services import workflow_save


def _user(request):
    return None if isinstance(request.user, ApiKeyUser) else request.user


@extend_schema(parameters=openapi_parameters(WorkflowFilter))
class WorkflowDefinitionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Definitions are validated by the WorkflowSpec; errors come back per field path."""

    permission_classes = [OperatorOrServiceKey]
    serializer_class = WorkflowDefinitionOut
    lookup_url_kwarg = "workflow_id"
    lookup_value_regex = ID_PATTERN.strip("^$")

    def get_queryset(self):
        queryset = WorkflowDefinition.objects.order_by("id")
        return api_filter(WorkflowFilter, self.request, queryset) if self.action == "list" else queryset

    @extend_schema(request=OpenApiTypes.OBJECT, responses={201: WorkflowDefinitionOut, 200: WorkflowDefinitionOut})
    def create(self, request) -> Response:
        """Create a definition; the same document again is a 200, other content under its id a 409."""
        spec = validate_definition(request.data)
        definition, outcome = workflow_save(spec=spec, by=_user(request), allow_update=False)
        return Response(WorkflowDefinitionOut(definition).data,
                        status=status.HTTP_201_CREATED if outcome == "created" else status.HTTP_200_OK)

    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: WorkflowDefinitionOut, 201: WorkflowDefinitionOut})
    def update(self, request, workflow_id: str) -> Response:
        """Create or replace the definition `workflow_id` (a new revision when the content changes)."""
        document = request.data
        if isinstance(document, dict):
            document = {"id": workflow_id, **document}  # the URL names the id a body may leave out
        spec = validate_definition(document, definition_id=workflow_id)
        definition, outcome = workflow_save(spec=spec, by=_user(request), allow_update=True)
        return Response(WorkflowDefinitionOut(definition).data,
                        status=status.HTTP_201_CREATED if outcome == "created" else status.HTTP_200_OK)
