"""The one base class of domain errors: each says its own stable `code` and HTTP status.

Apps raise subclasses (the engine's InvalidTransition, workflows' SpecError...); the API's
exception handler (opscore_site/api.py) turns any of them into the JSON error shape by
these attributes alone, so it needs to import no app (HackSoft's ApplicationError).
"""

from __future__ import annotations


class ApplicationError(Exception):
    """A refused request. `code` is stable for API clients; `http_status` is the API's answer;
    `errors` maps a field path to its messages (an answer of 400 `invalid` lists them)."""

    code = "error"
    http_status = 400

    def __init__(self, detail: str = "", *, code: str | None = None,
                 errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.errors: dict[str, list[str]] = errors or {}
