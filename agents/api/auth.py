"""Who may call the API: Bearer API keys (service or agent-bound, `agents.ApiKey`) and operators' sessions.

- Agent endpoints (`agent/{agentId}/...`): a service key for any agent, an agent-bound
  key for its own agent only (another agent is a 403). Logged-in staff operators may
  also read an agent's state and trigger workflows; only keys report state.
- Resource endpoints (`agents`, `workflows`, `sessions`, `tasks`): staff operators
  (Django session, CSRF enforced) and service keys. Agent-bound keys get 403.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from agents.models import ApiKey
from agents.services import ApiKeyExpired, api_key_authenticate
from ui.permissions import may_act, may_view


class ApiKeyUser:
    """request.user for a request authenticated by an API key (not a Django user)."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_active = True
    pk = None
    id = None

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.username = f"apikey:{key.prefix}"

    def __str__(self) -> str:
        return f"API key {key_label(self.key)}"


def key_label(key: ApiKey) -> str:
    return f"'{key.name}' ({key.prefix}…)"


def request_api_key(request, raw: str) -> ApiKey | None:
    """`api_key_authenticate` for this request's Bearer key, at most once per request: the lean
    paths of the state endpoint and DRF's authentication after them share its answer (a bad key
    costs one lookup, and `last_used_at` is written once). Raises ApiKeyExpired."""
    http_request = getattr(request, "_request", request)  # DRF's Request wraps Django's
    memo = getattr(http_request, "_opscore_api_key", None)
    if memo is not None and memo[0] == raw:
        result = memo[1]
    else:
        try:
            result = api_key_authenticate(raw=raw, now=timezone.now())
        except ApiKeyExpired as exc:
            result = exc
        http_request._opscore_api_key = (raw, result)
    if isinstance(result, ApiKeyExpired):
        raise result
    return result


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>`; keys are looked up by prefix and compared by hash."""

    keyword = "bearer"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("malformed Authorization header; use 'Bearer <key>'")
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("the API key contains invalid characters") from None
        try:
            key = request_api_key(request, raw)
        except ApiKeyExpired as exc:
            raise exceptions.AuthenticationFailed(str(exc), code=exc.code) from None
        if key is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API key")
        return ApiKeyUser(key), key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="opscore"'


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "agents.api.auth.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An Ops-Core API key (`opk_...`)."}


def _key(request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


def _is_operator(request) -> bool:
    # The UI's rule (ui/permissions.py): read-only operators may read, never change.
    if _key(request) is not None or not request.user:
        return False
    if request.method in permissions.SAFE_METHODS:
        return may_view(request.user)
    return may_act(request.user)


class AgentEndpoint(permissions.BasePermission):
    """Service keys for any agent; agent-bound keys for theirs; operators where the view allows."""

    def has_permission(self, request, view) -> bool:
        key = _key(request)
        if key is None:
            if not request.user or not request.user.is_authenticated:
                raise exceptions.NotAuthenticated("an API key is required: 'Authorization: Bearer <key>'")
            if _is_operator(request) and getattr(view, "operators_allowed", False):
                return True
            raise exceptions.PermissionDenied("this endpoint needs an API key")
        agent_id = view.kwargs.get("agent_id")
        if key.kind == ApiKey.Kind.AGENT and key.agent_id != agent_id:
            raise exceptions.PermissionDenied(
                f"API key {key_label(key)} is bound to agent '{key.agent_id}' and may not act for '{agent_id}'"
            )
        return True


class OperatorOrServiceKey(permissions.BasePermission):
    """Staff operators (logged in) and service keys."""

    def has_permission(self, request, view) -> bool:
        key = _key(request)
        if key is not None:
            if key.kind == ApiKey.Kind.SERVICE:
                return True
            raise exceptions.PermissionDenied(
                f"API key {key_label(key)} is bound to agent '{key.agent_id}'; it may only use that "
                "agent's state and workflow endpoints"
            )
        if not request.user or not request.user.is_authenticated:
            raise exceptions.NotAuthenticated("log in or send 'Authorization: Bearer <service key>'")
        if _is_operator(request):
            return True
        raise exceptions.PermissionDenied("only staff operators may use this endpoint")
