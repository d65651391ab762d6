import json
from pathlib import Path

import pytest

from workflows.schema import SpecError, parse_document, validate_definition
from tests.workflows.factories import two_step_spec

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "workflows" / "sample_workflow.json"


def errors_of(document) -> dict[str, list[str]]:
    with pytest.raises(SpecError) as excinfo:
        validate_definition(document)
    return excinfo.value.errors


def test_it_loads_the_upstream_sample_unchanged():
    raw = json.loads(SAMPLE.read_text())
    spec = parse_document(SAMPLE.read_text())
    assert spec.id == "sample_workflow_id"
    assert spec.version == "1.0"
    assert [s.taskId for s in spec.tasks] == ["step_1", "step_2"]
    assert spec.first_step.nextTaskId == "step_2"
    assert spec.step("step_2").parameters == {"value": 123}
    document = spec.to_document()
    # Every upstream field survives as it was; only our defaults are added.
    for key in ("id", "name", "description", "version"):
        assert document[key] == raw[key]
    for ours, theirs in zip(document["tasks"], raw["tasks"], strict=True):
        assert {k: ours[k] for k in theirs} == theirs
        assert ours["maxRetries"] == 3 and ours["timeoutSeconds"] == 300


def test_it_round_trips_through_yaml():
    spec = parse_document(SAMPLE.read_text())
    again = parse_document(spec.to_yaml(), fmt="yaml")
    assert again.to_document() == spec.to_document()


def test_it_keeps_unknown_upstream_fields():
    document = two_step_spec()
    document["tasks"][0]["extraHint"] = {"x": 1}
    spec = validate_definition(document)
    assert spec.to_document()["tasks"][0]["extraHint"] == {"x": 1}


def test_it_reads_an_unquoted_yaml_version_as_text():
    text = "id: y\nname: Y\nversion: 2.0\ntasks:\n  - taskId: only\n"
    assert parse_document(text).version == "2.0"


def test_it_requires_at_least_one_step():
    document = two_step_spec()
    document["tasks"] = []
    assert errors_of(document) == {"tasks": ["a workflow needs at least one step"]}


def test_it_refuses_duplicate_step_ids():
    document = two_step_spec()
    document["tasks"][1]["taskId"] = "step_1"
    errors = errors_of(document)
    assert errors["tasks.1.taskId"] == ["duplicate taskId 'step_1' (already used by tasks.0)"]


def test_it_refuses_a_next_step_that_does_not_exist():
    document = two_step_spec()
    document["tasks"][1]["nextTaskId"] = "step_9"
    errors = errors_of(document)
    assert errors == {"tasks.1.nextTaskId": ["nextTaskId 'step_9' of step 'step_2' does not name a step in this workflow"]}


def test_it_refuses_a_fallback_that_does_not_exist():
    document = two_step_spec(fallbackTaskId="nowhere")
    errors = errors_of(document)
    assert errors == {"tasks.0.fallbackTaskId": ["fallbackTaskId 'nowhere' of step 'step_1' does not name a step in this workflow"]}


def test_it_refuses_a_step_that_names_itself():
    document = two_step_spec()
    document["tasks"][1]["nextTaskId"] = "step_2"
    assert errors_of(document) == {"tasks.1.nextTaskId": ["step 'step_2' names itself as its nextTaskId"]}


def test_it_refuses_a_cycle():
    document = two_step_spec()
    document["tasks"][1]["nextTaskId"] = "step_1"
    assert errors_of(document) == {"tasks": ["the steps form a cycle: step_1 -> step_2 -> step_1"]}


def test_it_refuses_a_cycle_through_a_fallback():
    document = two_step_spec()
    document["tasks"][1]["fallbackTaskId"] = "step_1"
    assert errors_of(document) == {"tasks": ["the steps form a cycle: step_1 -> step_2 -> step_1"]}


def test_it_names_missing_and_mistyped_fields():
    errors = errors_of({"id": "x", "tasks": [{"name": "no id"}, {"taskId": "b", "maxRetries": -1}]})
    assert errors["name"] == ["Field required"]
    assert errors["tasks.0.taskId"] == ["Field required"]
    assert errors["tasks.1.maxRetries"] == ["Input should be greater than or equal to 0"]


def test_it_refuses_an_id_with_odd_characters():
    document = two_step_spec("bad id!")
    assert errors_of(document) == {
        "id": ["must start with a letter or digit and use only letters, digits, '_', '-' and '.'"]
    }


def test_it_refuses_a_document_that_is_not_an_object():
    assert errors_of([1, 2]) == {"": ["a workflow definition must be a JSON object, not list"]}


def test_it_reports_where_json_is_broken():
    with pytest.raises(SpecError) as excinfo:
        parse_document('{"id": "x",\n  "name": }')
    assert excinfo.value.errors == {"": ["invalid JSON: Expecting value at line 2 column 11"]}


def test_it_reports_where_yaml_is_broken():
    with pytest.raises(SpecError) as excinfo:
        parse_document("id: x\nname: [unclosed\n", fmt="yaml")
    assert excinfo.value.errors[""][0].startswith("invalid YAML: ")
    assert "line 3" in excinfo.value.errors[""][0]


def test_it_refuses_bytes_that_are_not_utf8():
    with pytest.raises(SpecError) as excinfo:
        parse_document(b"\xff\xfe")
    assert excinfo.value.errors == {"": ["the file is not UTF-8 text"]}


# ---------------------------------------------------------------- hostile documents (each was a 500 or a silent change)


def parse_errors(text: str, fmt: str = "auto") -> dict[str, list[str]]:
    with pytest.raises(SpecError) as excinfo:
        parse_document(text, fmt=fmt)
    return excinfo.value.errors


def test_it_finds_no_cycle_in_a_long_chain_without_exhausting_the_stack():
    steps = [{"taskId": f"s{i}", "nextTaskId": f"s{i + 1}" if i < 2999 else None} for i in range(3000)]
    spec = validate_definition({"id": "chain", "name": "long", "tasks": steps})
    assert len(spec.ordered_steps()) == 3000
    steps[-1]["nextTaskId"] = "s0"
    errors = errors_of({"id": "chain", "name": "long", "tasks": steps})
    assert errors["tasks"][0].startswith("the steps form a cycle: s0 -> s1 -> ") and errors["tasks"][0].endswith(
        "s2999 -> s0")


@pytest.mark.parametrize("where", ["name", "description", "parameters"])
def test_it_refuses_nul_characters_postgresql_cannot_store(where):
    """New input (a form, a file, the admin); the API's JSON reader refuses NUL before this."""
    document = two_step_spec()
    if where == "parameters":
        document["tasks"][0]["parameters"] = {"note": "a\x00b"}
        path = "tasks.0.parameters.note"
    else:
        document[where] = "a\x00b"
        path = where
    with pytest.raises(SpecError) as excinfo:
        validate_definition(document, new_input=True)
    assert excinfo.value.errors == {path: ["text may not contain NUL (\\u0000) characters"]}


def test_it_refuses_nan_and_infinity_instead_of_storing_null():
    assert parse_errors('{"id": "x", "name": "n", "tasks": [{"taskId": "a", "parameters": {"r": NaN}}]}') == {
        "": ["invalid JSON: NaN is not a valid JSON number"]}
    errors = parse_errors("id: x\nname: n\ntasks:\n- taskId: a\n  parameters: {r: .inf}\n", fmt="yaml")
    assert errors == {"tasks.0.parameters.r": ["numbers must be finite, not inf"]}


def test_it_refuses_yaml_values_that_are_not_json():
    errors = parse_errors("id: x\nname: n\ntasks:\n- taskId: a\n  parameters: {b: !!binary gA==, k: {1: one, '1': uno}}\n",
                          fmt="yaml")
    assert errors["tasks.0.parameters.b"] == [
        "bytes values are not JSON (in YAML, quote dates and avoid !!binary and !!set)"]
    assert errors["tasks.0.parameters.k"] == ["keys must be text, not int 1 (quote it in YAML)"]


@pytest.mark.parametrize("text,message", [
    ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested more than 64 levels deep"),
    ('{"id": "x", "name": "n", "tasks": [{"taskId": "a", "parameters": {"n": ' + "9" * 5000 + "}}]}",
     "invalid JSON: Exceeds the limit"),
    ("a: " + "[" * 5000 + "]" * 5000, "invalid YAML: nested more than 64 levels deep"),
    ("a: " + "9" * 5000, "invalid YAML: Exceeds the limit"),
])
def test_it_refuses_documents_too_deep_or_numbers_too_long_to_read(text, message):
    errors = parse_errors(text)
    assert errors[""][0].startswith(message), errors


def test_it_refuses_nesting_deeper_than_the_api_allows():
    deep: dict = {}
    node = deep
    for _ in range(70):
        node["x"] = {}
        node = node["x"]
    document = two_step_spec()
    document["tasks"][0]["parameters"] = deep
    with pytest.raises(SpecError) as excinfo:
        validate_definition(document, new_input=True)  # a form, a file, the admin
    (messages,) = excinfo.value.errors.values()
    assert messages == ["nested more than 64 levels deep"]
    # A stored spec or session snapshot is not held to a limit it may predate (the engine re-reads them).
    assert validate_definition(document).tasks[0].parameters == deep


def test_it_refuses_a_yaml_alias_bomb_quickly():
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "id: bomb\nname: n\ntasks:\n- taskId: a\n  parameters:\n" + "\n".join("    " + line for line in lines)
    errors = parse_errors(text, fmt="yaml")
    assert errors[""][0].startswith("the document has more than 1000000 values")


def test_it_refuses_lone_surrogates_postgresql_cannot_encode():
    errors = parse_errors('{"id": "x", "name": "n", "tasks": [{"taskId": "a", "parameters": {"\\ud800": "\\udfff"}}]}')
    assert errors == {"tasks.0.parameters": ["a key: text may not contain lone surrogates (they cannot be stored as UTF-8)"]}
    errors = parse_errors('{"id": "x", "name": "n\\ud800", "tasks": [{"taskId": "a"}]}')
    assert errors == {"name": ["text may not contain lone surrogates (they cannot be stored as UTF-8)"]}


def test_the_main_path_is_walked_by_one_function_for_specs_and_snapshots():
    from workflows.schema import main_path

    spec = two_step_spec("flow")
    spec["tasks"].append({"taskId": "spare", "name": "Spare"})
    spec["tasks"] = [spec["tasks"][0], spec["tasks"][2], spec["tasks"][1]]
    assert main_path(spec) == ["step_1", "step_2"]
    assert [s.taskId for s in validate_definition(spec).ordered_steps()] == ["step_1", "step_2", "spare"]
    # A snapshot is read as stored: an unknown next step or a loop ends the path, never an error.
    assert main_path({"tasks": [{"taskId": "a", "nextTaskId": "b"}, {"taskId": "b", "nextTaskId": "a"}]}) == ["a", "b"]
    assert main_path({"tasks": [{"taskId": "a", "nextTaskId": "gone"}]}) == ["a"]
    assert main_path({}) == []


def test_routing_fields_default_to_failover_and_the_setting():
    step = validate_definition(two_step_spec()).first_step
    assert step.queueTimeoutSeconds is None and step.pinToSessionAgent is False
    step = validate_definition(two_step_spec(queueTimeoutSeconds=90, pinToSessionAgent=True)).first_step
    assert step.queueTimeoutSeconds == 90 and step.pinToSessionAgent is True


@pytest.mark.parametrize(("field", "value", "message"), [
    ("queueTimeoutSeconds", 0, "greater than or equal to 1"),
    ("queueTimeoutSeconds", 10**9, "less than or equal to 604800"),
    ("queueTimeoutSeconds", 1.5, "a whole number of seconds"),
    ("queueTimeoutSeconds", "60", "a whole number of seconds"),
    ("pinToSessionAgent", "yes", "pinToSessionAgent must be true or false"),
    ("pinToSessionAgent", 1, "pinToSessionAgent must be true or false"),
])
def test_it_names_bad_routing_fields(field, value, message):
    with pytest.raises(SpecError) as caught:
        validate_definition(two_step_spec(**{field: value}))
    assert list(caught.value.errors) == [f"tasks.0.{field}"]
    assert message in " ".join(caught.value.errors[f"tasks.0.{field}"])


# --------------------------------------------------------------------------- approval steps


def approval_spec(**review) -> dict:
    return {"id": "reviewed", "name": "Reviewed", "tasks": [
        {"taskId": "draft", "nextTaskId": "review"},
        {"taskId": "review", "type": "approval", "name": "Approve the summary", "nextTaskId": "publish",
         "fallbackTaskId": "rework", **review},
        {"taskId": "publish"}, {"taskId": "rework"}]}


def test_it_reads_an_approval_step_and_keeps_agent_steps_as_they_were():
    spec = validate_definition(approval_spec(approvers="leads", timeoutSeconds=86400, onTimeout="reject"))
    review = spec.step("review")
    assert review.is_approval and review.approvers == "leads" and review.onTimeout == "reject"
    assert not spec.step("draft").is_approval
    document = spec.to_document()
    assert document["tasks"][1]["type"] == "approval" and document["tasks"][1]["approvers"] == "leads"
    # Agent steps gain no new keys: an upstream spec exports as it was imported.
    assert not {"type", "approvers", "onTimeout"} & set(document["tasks"][0])
    assert validate_definition(document).to_document() == document


def test_an_approval_waits_a_day_unless_it_says_otherwise():
    assert validate_definition(approval_spec()).step("review").timeoutSeconds == 86400
    assert validate_definition(approval_spec(timeoutSeconds=60)).step("review").timeoutSeconds == 60


@pytest.mark.parametrize("review, path, message", [
    ({"type": "robot"}, "tasks.1.type", "must be 'approval'"),
    ({"onTimeout": "approve"}, "tasks.1.onTimeout", "must be 'reject'"),
    ({"agentCapability": "summarise"}, "tasks.1.agentCapability", "decided by a person, not an agent"),
    ({"approvers": ""}, None, None),  # blank is "anyone": accepted
    ({"approvers": 5}, "tasks.1.approvers", "valid string"),
])
def test_it_checks_the_approval_fields_with_clear_messages(review, path, message):
    if path is None:
        assert validate_definition(approval_spec(**review)).step("review").approvers is None
        return
    errors = errors_of(approval_spec(**review))
    assert path in errors and message in " ".join(errors[path]), errors


@pytest.mark.parametrize("field, value", [("approvers", "leads"), ("onTimeout", "reject")])
def test_it_refuses_approval_fields_on_an_agent_step(field, value):
    document = approval_spec()
    document["tasks"][0][field] = value
    assert errors_of(document) == {f"tasks.0.{field}": [f'{field} applies only to approval steps ("type": "approval")']}
