"""Login throttling (django-axes) for the operator login and the admin login.

Failures are counted per account *and* address: a lockout never locks the same
account out from another address, nor another account from the same address.
The API's Bearer keys never pass through Django's `authenticate()`, so they are
not counted here (the API has its own throttles).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.throttling import BaseThrottle


def client_ip(request: HttpRequest) -> str:
    """AXES_CLIENT_IP_CALLABLE: the caller's address as the API throttles see it.

    The socket address, or the address OPSCORE_NUM_PROXIES hops back in X-Forwarded-For
    (REST_FRAMEWORK["NUM_PROXIES"]): one rule for who a caller is, spoof-proof by default.
    """
    return BaseThrottle().get_ident(request) or ""


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict | None = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the "locked out" page, 429, saying for how long and why."""
    from axes.helpers import get_client_username

    return render(request, "registration/locked_out.html", {
        "username": get_client_username(request, credentials) or "",
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cooloff_minutes": settings.OPSCORE_LOGIN_COOLOFF_MINUTES,
    }, status=429)
