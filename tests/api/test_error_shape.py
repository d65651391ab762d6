"""The API's one exception handler maps any domain error by the `code` and `http_status` it declares."""

from opscore_site.api import exception_handler
from opscore_site.errors import ApplicationError
from sessions.engine import AgentUnavailable, InvalidTransition
from sessions.services import IdempotencyConflict
from workflows.schema import SpecError
from workflows.services import DefinitionConflict


class Teapot(ApplicationError):
    code = "teapot"
    http_status = 418


def answer(exc: Exception) -> tuple[int, dict]:
    response = exception_handler(exc, {})
    return response.status_code, response.data


def test_a_new_domain_error_needs_no_change_in_the_handler():
    assert answer(Teapot("short and stout")) == (418, {"detail": "short and stout", "code": "teapot", "errors": {}})
    assert answer(Teapot("brewing", code="steeping"))[1]["code"] == "steeping"


def test_each_domain_error_keeps_its_status_and_code():
    assert answer(InvalidTransition("task t: dead -> running is not allowed")) == (
        409, {"detail": "task t: dead -> running is not allowed", "code": "invalid_transition", "errors": {}})
    for error, code in [(AgentUnavailable, "agent_unavailable"), (DefinitionConflict, "definition_conflict"),
                        (IdempotencyConflict, "idempotency_conflict")]:
        assert answer(error("x")) == (409, {"detail": "x", "code": code, "errors": {}})


def test_a_spec_error_lists_its_fields():
    status, body = answer(SpecError({"tasks.0.nextTaskId": ["does not name a step"], "": ["too big"]}))
    assert status == 400
    assert body == {"detail": "tasks.0.nextTaskId: does not name a step; too big", "code": "invalid",
                    "errors": {"tasks.0.nextTaskId": ["does not name a step"], "non_field_errors": ["too big"]}}
