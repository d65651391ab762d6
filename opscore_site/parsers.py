"""The API's JSON parser: DRF's, plus a 400 for NUL characters PostgreSQL cannot store.

A module of its own: DRF imports it (DEFAULT_PARSER_CLASSES) while `rest_framework.views`
is still being imported, so it must not import that module itself.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework import exceptions, parsers


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def check_json_document(document: Any) -> Any:
    """400 for a NUL character anywhere in a document: PostgreSQL cannot store one."""
    if _has_nul(document):
        raise exceptions.ParseError("JSON strings may not contain NUL (\\u0000) characters", code="parse_error")
    return document


def parse_json_bytes(body: bytes) -> Any:
    """A request body as JSON, or a 400 saying why not."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise exceptions.ParseError(f"JSON parse error - {exc}") from None
    return check_json_document(document)


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser plus the NUL check."""

    def parse(self, stream, media_type=None, parser_context=None):
        return check_json_document(super().parse(stream, media_type, parser_context))
