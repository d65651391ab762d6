"""The API's one strict JSON reader: what json accepts but PostgreSQL or Python cannot handle is a 400.

Used by the DRF parser (every /v1/ body) and by the webhook (its raw, signed bytes).
A module of its own: DRF imports it (DEFAULT_PARSER_CLASSES) while `rest_framework.views`
is still being imported, so it must not import that module itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rest_framework import exceptions, parsers

from opscore_site.jsontext import MAX_DEPTH, reject_constant, text_problem


def _bad(detail: str) -> exceptions.ParseError:
    return exceptions.ParseError(f"JSON parse error - {detail}", code="parse_error")


def _check_text(value: str) -> None:
    if problem := text_problem(value):
        raise _bad(problem)


def check_json_document(document: Any) -> Any:
    """400 unless every string is storable text, every number finite and nesting at most MAX_DEPTH.

    Iterative, so no document can exhaust the Python stack.
    """
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _bad("numbers must be finite (too large for a float)")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise _bad(f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
    return document


def parse_json_bytes(body: bytes) -> Any:
    """A request body as JSON, or a 400 saying why not."""
    try:
        document = json.loads(body, parse_constant=reject_constant)
    except RecursionError:
        raise _bad(f"nested more than {MAX_DEPTH} levels deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    return check_json_document(document)


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, reading through parse_json_bytes."""

    def parse(self, stream, media_type=None, parser_context=None):
        return parse_json_bytes(stream.read())
