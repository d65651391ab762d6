"""What json (and YAML) readers accept but a JSON document here may not hold: one rule for the
API's strict reader (`opscore_site.parsers`) and the workflow validator (`workflows.schema`)."""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64  # nested objects/arrays in new input; far beyond any real report or workflow


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` (NUL, lone surrogates), or None."""
    if "\x00" in text:
        return "text may not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text may not contain lone surrogates (they cannot be stored as UTF-8)"
    return None


def reject_constant(name: str) -> Any:
    """json.loads(parse_constant=...): NaN and Infinity are not JSON numbers."""
    raise ValueError(f"{name} is not a valid JSON number")
