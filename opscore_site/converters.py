"""The path converter of every id that sits in one URL segment (agents, workflows), pages and API alike.

Registered once, as `<opsid:...>`, by the URL composition in opscore_site/urls.py.
"""

from __future__ import annotations


class PathIdConverter:
    """An id in a path segment: no '/', no NUL (PostgreSQL refuses NUL in a query: it was a 500),
    at most 255 characters. Anything else does not match: 404."""

    regex = r"[^/\x00]{1,255}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value
