"""OpenAPI components generated from pydantic models (the webhook body), in the schema's OpenAPI 3.0.

drf-spectacular's own pydantic support writes `X | None` as `anyOf: [X, {type: null}]`, which is
OpenAPI 3.1; this extension writes `nullable: true` instead. Registered on import (opscore_site/api.py).
"""

from __future__ import annotations

from drf_spectacular.contrib.pydantic import PydanticExtension
from drf_spectacular.plumbing import ResolvedComponent
from pydantic.json_schema import GenerateJsonSchema, model_json_schema


class OpenApi30JsonSchema(GenerateJsonSchema):
    def nullable_schema(self, schema):
        inner = self.generate_inner(schema["schema"])
        if "$ref" in inner:
            return {"allOf": [inner], "nullable": True}
        return {**inner, "nullable": True}


class Pydantic30Extension(PydanticExtension):
    """`@extend_schema(request=SomePydanticModel)`: the model's JSON schema as a component."""

    priority = 1  # over drf-spectacular's own PydanticExtension

    def map_serializer(self, auto_schema, direction):
        schema = model_json_schema(self.target, ref_template="#/components/schemas/{model}", mode="validation",
                                   schema_generator=OpenApi30JsonSchema)
        for name, sub_schema in schema.pop("$defs", {}).items():
            auto_schema.registry.register_on_missing(
                ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name, schema=sub_schema))
        return schema
