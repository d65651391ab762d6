"""The path converter of every id that sits in one URL segment (agents, workflows), pages and API alike.

Registered once, as `<opsid:...>`, by the URL composition in opscore_site/urls.py.
"""

from __future__ import annotations

import re

# Never in an id that is one path segment: '/', NUL (PostgreSQL refuses it in a query: it was a
# 500) and the other control characters (CR/LF and the like: an id is shown, logged and sent on).
FORBIDDEN_IN_SEGMENT = r"/\x00-\x1f\x7f"
_FORBIDDEN = re.compile(f"[{FORBIDDEN_IN_SEGMENT}]")


def has_forbidden_characters(value: str) -> bool:
    """Whether `value` holds a character that no path-segment id may hold (the converter's rule)."""
    return _FORBIDDEN.search(value) is not None


class PathIdConverter:
    """An id in a path segment: none of FORBIDDEN_IN_SEGMENT, at most 255 characters.
    Anything else does not match: 404."""

    regex = f"[^{FORBIDDEN_IN_SEGMENT}]{{1,255}}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value
