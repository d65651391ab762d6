"""When the database is unreachable: a 503 that says so, and one log line per interval instead of a
traceback per request.

Every request that needs the database fails while PostgreSQL is down or restarting. The API answers
503 `{"detail": "the database is unavailable", "code": "database_unavailable", "errors": {}}` with
`Retry-After`, the pages a plain 503 page that needs nothing from the database, and the log gets
one line per failure class (OperationalError, InterfaceError) every LOG_INTERVAL_SECONDS, with the
number of requests it stands for. Two places catch it: `DatabaseUnavailableMiddleware` (an error
in a view, DRF's included: our exception handler leaves database errors to Django) and the site's
`handler500` (an error in another middleware, such as the session or auth lookup), both through
`database_unavailable_response`.

The scheduler, the qcluster and the stand-in keep retrying on their own (each logs one line a
failed pass); a state report refused here is lost (the SDK never retries one), and the tasks it
would have moved recover through their timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_AFTER_SECONDS = 5
LOG_INTERVAL_SECONDS = 30.0
API_PREFIX = "/v1/"
BODY = {"detail": "the database is unavailable", "code": "database_unavailable", "errors": {}}


class _LogLimiter:
    """At most one log line per failure class per interval, counting what it left out."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def note(self, exc: BaseException) -> None:
        name = type(exc).__name__
        now = time.monotonic()
        with self._lock:
            last = self._last.get(name)
            if last is not None and now - last < self.interval:
                self._suppressed[name] = self._suppressed.get(name, 0) + 1
                return
            self._last[name] = now
            left_out = self._suppressed.pop(name, 0)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        more = f" ({left_out} more since the last line)" if left_out else ""
        logger.error("the database is unavailable: %s: %s; requests answer 503%s", name, first_line, more)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()
            self._suppressed.clear()


limiter = _LogLimiter(LOG_INTERVAL_SECONDS)


def is_database_error(exc: BaseException | None) -> bool:
    return isinstance(exc, DATABASE_ERRORS)


def database_unavailable_response(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """The 503 for `request`, logged (at most once an interval) here and not again by Django."""
    limiter.note(exc)
    if request.path.startswith(API_PREFIX):
        response: HttpResponse = JsonResponse(BODY, status=503)
    else:
        response = HttpResponse(render_to_string("503.html"), status=503)  # no request: no database
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response._has_been_logged = True  # Django's request logger would add a line (or a traceback) each
    return response


class DatabaseUnavailableMiddleware:
    """A database error raised by a view becomes the 503 above."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_database_error(exception):
            return database_unavailable_response(request, exception)
        return None
