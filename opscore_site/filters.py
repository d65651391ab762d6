"""Building blocks of the list filters (django-filter), shared by the API lists and the operator pages.

Each app declares one FilterSet per resource in its `filters.py` and both its list endpoint and its
list page use it: `api_filter()` answers 400 on a bad value, a page shows the message and ignores
the value (the other filters still apply: django-filter filters with the fields that are valid).
"""

from __future__ import annotations

from datetime import timedelta

import django_filters
from django import forms
from django.core.validators import MaxLengthValidator
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions

TEXT_MAX = 255
YES, NO, ALL = {"yes", "true", "1"}, {"no", "false", "0"}, "all"


class ChoiceListField(forms.CharField):
    """`a` or `a,b`: values out of `choices`, as a list ('' is no filter). A select on a page."""

    def __init__(self, *, choices, empty_label: str, **kwargs) -> None:
        self.allowed = [str(value) for value, _ in choices]
        kwargs.setdefault("widget", forms.Select(choices=[("", empty_label), *choices]))
        kwargs["required"] = False
        super().__init__(**kwargs)

    def clean(self, value):
        text = super().clean(value)
        values = [part.strip() for part in text.split(",") if part.strip()]
        wrong = [v for v in values if v not in self.allowed]
        if wrong:
            raise forms.ValidationError(f"'{wrong[0]}' is not one of: {', '.join(self.allowed)}")
        return values


class ChoiceListFilter(django_filters.Filter):
    field_class = ChoiceListField

    def __init__(self, *, field_name: str, choices, empty_label: str, **kwargs) -> None:
        super().__init__(field_name=field_name, lookup_expr="in", choices=choices, empty_label=empty_label,
                         **kwargs)


class YesNoField(forms.CharField):
    """yes/no (also true/false, 1/0) as True/False, '' as None; with `allow_all`, 'all' as ALL.
    A select with `choices` on a page."""

    def __init__(self, *, choices, allow_all: bool = False, **kwargs) -> None:
        kwargs.setdefault("widget", forms.Select(choices=choices))
        self.allow_all = allow_all
        kwargs["required"] = False
        super().__init__(**kwargs)

    def clean(self, value):
        text = super().clean(value).lower()
        if text == "":
            return None
        if text in YES:
            return True
        if text in NO:
            return False
        if self.allow_all and text == ALL:
            return ALL
        raise forms.ValidationError(f"'{value}' must be yes or no (true or false){' or all' if self.allow_all else ''}")


class YesNoFilter(django_filters.Filter):
    """A yes/no question answered by its `method(queryset, name, value)`; unanswered (None), no filter."""

    field_class = YesNoField


def text_filter(*, label: str, **kwargs) -> django_filters.CharFilter:
    """Free text up to TEXT_MAX characters, stripped (NUL is refused: PostgreSQL cannot compare it)."""
    return django_filters.CharFilter(label=label, validators=[MaxLengthValidator(TEXT_MAX)], **kwargs)


SINCE_CHOICES = [("", "any time"), ("1h", "last hour"), ("24h", "last 24 h"), ("7d", "last 7 days")]
SINCE_DELTAS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DATETIME_INPUT = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


def _datetime_filter(*, field_name: str, lookup_expr: str, label: str) -> django_filters.DateTimeFilter:
    return django_filters.DateTimeFilter(
        field_name=field_name, lookup_expr=lookup_expr, label=label, input_formats=DATETIME_INPUT,
        help_text=f"{field_name} {'at or after' if lookup_expr == 'gte' else 'before'} this time (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_INPUT[0]))


def date_range_filters(field_name: str, *, noun: str) -> tuple[django_filters.Filter, ...]:
    """The date range of a list, defined once: `since` (1h, 24h, 7d), `after` and `before` on `field_name`.

    In a FilterSet: `since, after, before = date_range_filters("created_at", noun="Started")`.
    """

    def since(queryset, name, value):
        return queryset.filter(**{f"{field_name}__gte": timezone.now() - SINCE_DELTAS[value]})

    return (
        django_filters.ChoiceFilter(label="Since", choices=SINCE_CHOICES[1:], empty_label=SINCE_CHOICES[0][1],
                                    method=since, help_text=f"{field_name} in the last 1h, 24h or 7d"),
        _datetime_filter(field_name=field_name, lookup_expr="gte", label=f"{noun} after"),
        _datetime_filter(field_name=field_name, lookup_expr="lt", label=f"{noun} before"),
    )


def search_filter(*fields: str, help_text: str) -> django_filters.CharFilter:
    """A substring of any of `fields` (case-insensitive): the lists' `search` / `q`."""

    def search(queryset, name, value):
        match = Q()
        for field in fields:
            match |= Q(**{f"{field}__icontains": value})
        return queryset.filter(match)

    return text_filter(label="Search", method=search, help_text=help_text)


def api_filter(filterset_class, request, queryset):
    """`queryset` filtered by the request's query parameters; a bad value is a 400 naming the field."""
    filterset = filterset_class(request.query_params, queryset=queryset, request=request)
    if not filterset.is_valid():
        raise exceptions.ValidationError(filterset.errors)
    return filterset.qs


def page_filter(filterset_class, params, queryset, **kwargs):
    """The filter set of a list page (`params`: request.GET, or a form's POST): `.qs` ignores a bad
    value, `.form` shows its message."""
    return filterset_class(params, queryset=queryset, **kwargs)


def openapi_parameters(filterset_class) -> list[OpenApiParameter]:
    """The query parameters of an API list, for its schema: one per filter of its FilterSet."""
    parameters = []
    for name, filter_ in filterset_class.base_filters.items():
        if isinstance(filter_, YesNoFilter) and not filter_.extra.get("allow_all"):
            kind = OpenApiTypes.BOOL
        elif isinstance(filter_, django_filters.DateTimeFilter):
            kind = OpenApiTypes.DATETIME
        else:
            kind = getattr(filter_, "api_type", OpenApiTypes.STR)
        parameters.append(OpenApiParameter(name, kind, description=filter_.extra.get("help_text") or ""))
    return parameters
