"""Who may see and who may change things in the operator UI: the one place that decides.

Operators are staff users. Members of the "Read-only operators" group (staff or not)
may see every page but change nothing, even when they are staff.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.views.decorators.http import require_POST

READ_ONLY_GROUP = "Read-only operators"


def is_read_only(user) -> bool:
    """Whether `user` is in the read-only group (cached on the user for the request)."""
    cached = getattr(user, "_opscore_read_only", None)
    if cached is None:
        cached = user.groups.filter(name=READ_ONLY_GROUP).exists()
        user._opscore_read_only = cached
    return cached


def may_view(user) -> bool:
    """Staff users and read-only operators see the UI."""
    return bool(user.is_authenticated and user.is_active and (user.is_staff or is_read_only(user)))


def may_act(user) -> bool:
    """Only staff users outside the read-only group change anything."""
    return bool(user.is_authenticated and user.is_active and user.is_staff and not is_read_only(user))


def viewer_required(view):
    """Log-in required; then 403 unless the user may see the operator UI."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not may_view(request.user):
            raise PermissionDenied("operators only")
        return view(request, *args, **kwargs)

    return wrapped


def actor_required(view):
    """POST only, log-in required; then 403 unless the user may act (not read-only)."""

    @require_POST
    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not may_act(request.user):
            raise PermissionDenied("read-only operators cannot change anything")
        return view(request, *args, **kwargs)

    return wrapped


def context(request) -> dict:
    """Template context: whether to show write buttons."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"may_act": False}
    return {"may_act": may_act(user)}


class ReadOnlyGroupAdminMixin:
    """The same rule in the Django admin: a read-only operator may look but never add, change or delete,
    whatever permissions (or superuser flag) the account has. Admin actions need the change permission,
    so they are hidden and refused too.
    """

    def has_add_permission(self, request, *args, **kwargs) -> bool:
        return not is_read_only(request.user) and super().has_add_permission(request, *args, **kwargs)

    def has_change_permission(self, request, obj=None) -> bool:
        return not is_read_only(request.user) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return not is_read_only(request.user) and super().has_delete_permission(request, obj)
