"""Rendering helpers shared by the operator pages: partial-or-full pages and pagination."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import loader
from django.views import defaults

PAGE_SIZE = 50
PARTIAL_HEADER = "HTTP_X_OPSCORE_PARTIAL"


def render_page(request: HttpRequest, template: str, partial: str, context: dict) -> HttpResponse:
    """Render `partial` alone for the polling script (header X-Opscore-Partial), else the full page."""
    if request.META.get(PARTIAL_HEADER):
        return render(request, partial, context)
    return render(request, template, context)


def paginate(request: HttpRequest, queryset, *, per_page: int = PAGE_SIZE):
    """One page of `queryset` (bad page numbers give the nearest page, never an error)."""
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def query_without_page(request: HttpRequest) -> str:
    """The current filters as a query string, without `page` (for page links)."""
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


def bad_request_page(request: HttpRequest, exception: Exception | None) -> HttpResponse:
    """An operator page's 400 that says why (Django's own page says only 'Bad Request (400)')."""
    if isinstance(exception, RequestDataTooBig):
        reason = (f"The form is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes "
                  "(OPSCORE_MAX_BODY_BYTES); nothing was saved. Make it smaller, or upload a definition as a file.")
    elif isinstance(exception, TooManyFieldsSent):
        reason = (f"The form has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} fields; nothing was done. "
                  "Select fewer rows, or use 'retry all matching' with a filter.")
    elif isinstance(exception, TooManyFilesSent):
        reason = "The form carries too many files; nothing was done."
    else:
        reason = "The request could not be read; nothing was done."
    try:
        body = loader.get_template("400.html").render({"reason": reason}, request)
    except Exception:  # never let the error page fail in turn (a DisallowedHost, a broken request)
        return defaults.bad_request(request, exception)
    return HttpResponse(body, status=400)
