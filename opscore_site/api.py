"""The API's one error shape, pagination, throttle and body limit.

Every error under /v1/ is JSON `{"detail": "...", "code": "...", "errors": {...}}`:
`detail` is what the AgentKit SDK logs, `code` is stable for clients to branch on,
`errors` maps a field to its messages (empty when the error is not about a field).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from opscore_site import dbdown
from opscore_site import openapi  # noqa: F401 (registers the pydantic schema extension)
from opscore_site.errors import ApplicationError
from opscore_site.throttle import Hit, throttle_hit

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"


def error_body(detail: str, code: str, errors: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"detail": detail, "code": code, "errors": errors or {}}


def _flatten(errors: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested ValidationError detail as {"field.sub": ["message", ...]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(errors, dict):
        for key, value in errors.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for path, messages in _flatten(value, name).items():
                flat.setdefault(path, []).extend(messages)
    elif isinstance(errors, list):
        if all(not isinstance(item, (dict, list)) for item in errors):
            flat[prefix or "non_field_errors"] = [str(item) for item in errors]
        else:
            for index, value in enumerate(errors):
                for path, messages in _flatten(value, f"{prefix}.{index}" if prefix else str(index)).items():
                    flat.setdefault(path, []).extend(messages)
    else:
        flat[prefix or "non_field_errors"] = [str(errors)]
    return flat


def _summary(errors: dict[str, list[str]]) -> str:
    parts = [f"{path}: {' '.join(msgs)}" if path not in ("", "non_field_errors") else " ".join(msgs)
             for path, msgs in errors.items()]
    return "; ".join(parts)[:2000] or "Invalid input."


class Refused(exceptions.APIException):
    """A domain error (`ApplicationError`) as DRF sees it: the status and code the error declares."""

    def __init__(self, error: ApplicationError) -> None:
        super().__init__(str(error) or None, code=error.code)
        self.status_code = error.http_status
        self.error = error


def _translate(exc: Exception) -> Exception:
    """Domain and Django errors as the DRF exception with the right status and code."""
    if isinstance(exc, ApplicationError):
        return Refused(exc)
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        return exceptions.NotFound(str(exc) or None)
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    return exc


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "payload_too_large"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Service unavailable."
    default_code = "unavailable"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """REST_FRAMEWORK["EXCEPTION_HANDLER"]: every API error in one shape."""
    # Imported here: rest_framework.views reads the throttle/parser settings, which name this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    exc = _translate(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's handler500 below answers JSON
    if isinstance(exc, Refused) and exc.error.errors:
        errors = {path or "non_field_errors": list(msgs) for path, msgs in exc.error.errors.items()}
        response.data = error_body(_summary(errors), exc.error.code, errors)
    elif isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        response.data = error_body(_summary(errors), "invalid", errors)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        if isinstance(detail, (dict, list)):
            errors = _flatten(detail)
            response.data = error_body(_summary(errors), "invalid", errors)
        else:
            response.data = error_body(str(detail), codes if isinstance(codes, str) else "error")
    return response


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=`, 50 by default, at most 500 per page."""

    default_limit = 50
    max_limit = 500


class ApiThrottle(SimpleRateThrottle):
    """One rate (OPSCORE_THROTTLE_RATE) per credential, and per agent on the agent endpoints.

    Counters live in the database (`opscore_site.throttle`: one statement per request), so
    every process sees the same numbers. Anonymous callers are told apart by the socket address, or by
    X-Forwarded-For only as far as REST_FRAMEWORK["NUM_PROXIES"] (OPSCORE_NUM_PROXIES) trusts it.
    """

    scope = "api"
    _wait: float | None = None

    def get_rate(self) -> str | None:
        return settings.OPSCORE_THROTTLE_RATE or None

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        return self.count(self.get_cache_key(request, view))

    def count(self, key: str) -> bool:
        """Count one request on the counter `key`: whether it is allowed (else `wait()` says for how long)."""
        self.key = key
        self._wait = throttle_hit(key, num_requests=self.num_requests, duration=self.duration, now=self.timer())
        return self._wait is None

    def hit(self, key: str) -> Hit | None:
        """One request on the counter `key`, for a statement that carries the upsert (`Hit`); None
        when the rate allows nothing ("0/min")."""
        if self.num_requests < 1:
            return None
        return Hit(key=key, num_requests=self.num_requests, duration=self.duration, now=self.timer())

    def wait(self) -> float | None:
        return self._wait

    def get_cache_key(self, request, view) -> str:
        auth = getattr(request, "auth", None)
        agent_id = getattr(view, "kwargs", {}).get("agent_id")
        if getattr(auth, "prefix", None):
            return self.api_key_counter(auth.pk, agent_id=agent_id)
        if request.user and request.user.is_authenticated and getattr(request.user, "pk", None):
            return self._counter(f"user:{request.user.pk}", agent_id=agent_id)
        return self._counter(f"ip:{self.get_ident(request)}", agent_id=agent_id)

    def api_key_counter(self, key_pk: int, *, agent_id: str | None) -> str:
        """The counter of an API key (and agent): what get_cache_key gives a request authenticated by it."""
        return self._counter(f"key:{key_pk}", agent_id=agent_id)

    def _counter(self, ident: str, *, agent_id: str | None) -> str:
        if agent_id:  # hashed: any characters, any length, fits the key column
            ident += ":agent:" + hashlib.sha256(agent_id.encode()).hexdigest()[:24]
        return f"throttle:{self.scope}:{ident}"


class StateReportThrottle(ApiThrottle):
    """State reports: off unless OPSCORE_STATE_THROTTLE_RATE is set, since a 429 is a lost report."""

    scope = "state"

    def get_rate(self) -> str | None:
        return settings.OPSCORE_STATE_THROTTLE_RATE or None


# --------------------------------------------------------------------------- Django level


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def json_error(detail: str, code: str, status_code: int) -> JsonResponse:
    return JsonResponse(error_body(detail, code), status=status_code)


class ApiBodyLimitMiddleware:
    """Refuse an API body over OPSCORE_MAX_BODY_BYTES with 413 before anything reads it.

    DRF's parsers read the request stream directly, so Django's own
    DATA_UPLOAD_MAX_MEMORY_SIZE check would not apply to them.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _is_api(request):
            raw = request.META.get("CONTENT_LENGTH") or "0"
            try:
                length = int(raw)
            except ValueError:
                return json_error("invalid Content-Length header", "invalid_content_length", 400)
            if length < 0:
                return json_error("invalid Content-Length header", "invalid_content_length", 400)
            if length > settings.OPSCORE_MAX_BODY_BYTES:
                return json_error(
                    f"request body is {length} bytes; the limit is {settings.OPSCORE_MAX_BODY_BYTES}",
                    "payload_too_large", 413,
                )
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if _is_api(request) and isinstance(exception, RequestDataTooBig):
            return json_error("request body is too large", "payload_too_large", 413)
        return None


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return json_error("Bad request.", "bad_request", 400)
    from ui.rendering import bad_request_page  # the operator pages' 400, with the reason

    return bad_request_page(request, exception)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return json_error(str(exception or "") or "Permission denied.", "permission_denied", 403)
    return defaults.permission_denied(request, exception)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return json_error(f"no such endpoint: {request.method} {request.path}", "not_found", 404)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    exc = sys.exc_info()[1]  # Django calls this while handling the exception
    if dbdown.is_database_error(exc):
        return dbdown.database_unavailable_response(request, exc)
    if _is_api(request):
        return json_error("Internal server error; the request id is in X-Request-ID.", "server_error", 500)
    return defaults.server_error(request)
