"""Rendering helpers shared by the operator pages: partial-or-full pages and pagination."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

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
