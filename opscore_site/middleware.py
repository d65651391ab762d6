"""Request ids: one per request, in every log line and in the X-Request-ID response header."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable

from django.contrib.messages import middleware as messages_middleware
from django.http import HttpRequest, HttpResponse

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# An id from upstream (a load balancer) is kept only when it is short and plain.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Take X-Request-ID from the caller when it is sane, else make one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")  # not request.headers: it copies every header
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = _request_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _request_id.reset(token)
        response["X-Request-ID"] = request_id
        return response


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class MessageMiddleware(messages_middleware.MessageMiddleware):
    """Django's flash messages, except under /v1/: the API shows none, and the cookie storage
    costs a signer per request (~5% of a state report's CPU)."""

    API_PREFIX = "/v1/"  # opscore_site.api.API_PREFIX (not imported: logging loads this module early)

    def process_request(self, request: HttpRequest) -> None:
        if not request.path.startswith(self.API_PREFIX):
            super().process_request(request)
