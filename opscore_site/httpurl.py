"""One rule for "an http(s) URL Ops-Core may call or show": the AgentKit API URL and agents' endpoints."""

from __future__ import annotations

import httpx


def http_url_problem(value: str) -> str | None:
    """Why `value` is not an absolute http:// or https:// URL with a host, or None.

    Refuses other schemes (`javascript:`, `data:`, `file:`), whitespace and control characters.
    """
    if not value.isprintable() or any(char.isspace() for char in value):
        return "must not contain whitespace or control characters"
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        return f"is not a valid URL ({exc})"
    if url.scheme not in ("http", "https") or not url.host:
        return "must be an http:// or https:// URL with a host"
    return None
