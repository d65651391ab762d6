"""The one validator of workflow definitions: the pydantic `WorkflowSpec`.

It reads and writes the upstream JSON shape
`{"id","name","description","version","tasks":[{"taskId","name","agentCapability",
"parameters","nextTaskId", ...}]}` and YAML. The API, the admin, the HTML forms and the
import command all call `validate_definition()` / `parse_document()`; nothing else
decides whether a definition is valid.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from opscore_site.errors import ApplicationError
from opscore_site.jsontext import MAX_DEPTH, reject_constant, text_problem

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"

APPROVAL = "approval"
APPROVAL_DEFAULT_TIMEOUT = 24 * 3600  # an approval waits for a person: a day unless the step says otherwise
# An approval step names no agent; its maxRetries and retryBackoffSeconds are ignored (they are
# written out with their defaults, so they cannot be refused on a step read back).
_AGENT_ONLY_FIELDS = ("agentCapability", "queueTimeoutSeconds")
_APPROVAL_ONLY_FIELDS = ("approvers", "onTimeout")
# New optional fields, left out of the document when unset, so an upstream spec exports unchanged.
_OMIT_WHEN_UNSET = ("type", "approvers", "onTimeout")


class SpecError(ApplicationError, ValueError):
    """A workflow definition is invalid. `errors` maps a field path to its messages (the API: 400 `invalid`).

    A ValueError too: raised inside a pydantic validator, pydantic carries it in the error's context.
    """

    code = "invalid"
    http_status = 400

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(_lines(errors)), errors=errors)

    def lines(self) -> list[str]:
        """One line per field: `path: message message` (the document's own problems have no path)."""
        return _lines(self.errors)


def _lines(errors: dict[str, list[str]]) -> list[str]:
    return [f"{path}: {' '.join(msgs)}" if path else " ".join(msgs) for path, msgs in errors.items()]


class StepSpec(BaseModel):
    """One step of a workflow (upstream calls the list `tasks`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    taskId: str = Field(min_length=1, max_length=100, pattern=ID_PATTERN)
    name: str = Field(default="", max_length=255)
    agentCapability: str | None = Field(default=None, max_length=255)
    parameters: dict[str, Any] = Field(default_factory=dict)
    nextTaskId: str | None = None
    maxRetries: int = Field(default=3, ge=0, le=100)
    timeoutSeconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    retryBackoffSeconds: float = Field(default=5.0, ge=0, le=24 * 3600)
    fallbackTaskId: str | None = None
    # Routing (DESIGN.md "Where a step goes"): how long the step may wait for an agent that can
    # take it (None: OPSCORE_QUEUE_TIMEOUT_SECONDS), and whether it must stay on the session's agent.
    queueTimeoutSeconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    pinToSessionAgent: bool = False

    @field_validator("pinToSessionAgent", mode="before")
    @classmethod
    def _pin_is_a_boolean(cls, value: Any) -> Any:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValueError("pinToSessionAgent must be true or false")
        return value

    @field_validator("queueTimeoutSeconds", mode="before")
    @classmethod
    def _queue_timeout_is_whole_seconds(cls, value: Any) -> Any:
        if isinstance(value, bool) or (value is not None and not isinstance(value, int)):
            raise ValueError("queueTimeoutSeconds must be a whole number of seconds (1 to 604800), or null")
        return value

    # Steps without `type` are agent tasks (the upstream shape); `approval` waits for a person.
    type: Literal["agent", "approval"] | None = None
    approvers: str | None = Field(default=None, min_length=1, max_length=150,
                                  description="Group whose members may decide (approval steps; any operator when unset)")
    onTimeout: Literal["reject"] | None = None

    @property
    def is_approval(self) -> bool:
        return self.type == APPROVAL

    @model_validator(mode="after")
    def _approval_fields_fit_the_type(self) -> StepSpec:
        given = self.model_fields_set
        problems: dict[str, list[str]] = {}
        if self.is_approval:
            for name in _AGENT_ONLY_FIELDS:
                if name in given and getattr(self, name) is not None:
                    problems.setdefault(name, []).append(
                        f"an approval step is decided by a person, not an agent: remove {name}")
            if "timeoutSeconds" not in given:
                self.timeoutSeconds = APPROVAL_DEFAULT_TIMEOUT
        else:
            for name in _APPROVAL_ONLY_FIELDS:
                if getattr(self, name) is not None:
                    problems.setdefault(name, []).append(
                        f"{name} applies only to approval steps (\"type\": \"approval\")")
        if problems:
            raise SpecError(problems)
        return self

    @field_validator("type", "approvers", "onTimeout", mode="before")
    @classmethod
    def _optional_blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters_null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("nextTaskId", "fallbackTaskId", "agentCapability", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class WorkflowSpec(BaseModel):
    """A whole workflow definition; the first step in `tasks` is where a session starts."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=100, pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(default="", max_length=10_000)
    version: str = Field(default="1.0", max_length=50)
    tasks: list[StepSpec]

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # Upstream writes "1.0"; YAML turns an unquoted 1.0 into a float.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("description", mode="before")
    @classmethod
    def _description_null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("tasks")
    @classmethod
    def _at_least_one_step(cls, tasks: list[StepSpec]) -> list[StepSpec]:
        if not tasks:
            raise ValueError("a workflow needs at least one step")
        return tasks

    @model_validator(mode="after")
    def _graph_is_sound(self) -> WorkflowSpec:
        errors: dict[str, list[str]] = {}
        positions: dict[str, int] = {}
        for index, step in enumerate(self.tasks):
            if step.taskId in positions:
                errors.setdefault(f"tasks.{index}.taskId", []).append(
                    f"duplicate taskId '{step.taskId}' (already used by tasks.{positions[step.taskId]})"
                )
            else:
                positions[step.taskId] = index
        for index, step in enumerate(self.tasks):
            for field in ("nextTaskId", "fallbackTaskId"):
                target = getattr(step, field)
                if target is None:
                    continue
                if target not in positions:
                    errors.setdefault(f"tasks.{index}.{field}", []).append(
                        f"{field} '{target}' of step '{step.taskId}' does not name a step in this workflow"
                    )
                elif target == step.taskId:
                    errors.setdefault(f"tasks.{index}.{field}", []).append(
                        f"step '{step.taskId}' names itself as its {field}"
                    )
        if not errors:
            cycle = self._find_cycle()
            if cycle:
                errors.setdefault("tasks", []).append(
                    "the steps form a cycle: " + " -> ".join(cycle)
                )
        if errors:
            raise SpecError(errors)
        return self

    def _find_cycle(self) -> list[str] | None:
        """A cycle over next and fallback links, as the list of step ids on it, or None.

        Iterative (an explicit stack): a long chain of steps must not exhaust the Python stack.
        """
        edges = {
            step.taskId: [t for t in (step.nextTaskId, step.fallbackTaskId) if t is not None]
            for step in self.tasks
        }
        WHITE, GREY, BLACK = 0, 1, 2
        colour = dict.fromkeys(edges, WHITE)
        for start in edges:
            if colour[start] != WHITE:
                continue
            path: list[str] = [start]
            pending: list[list[str]] = [list(reversed(edges[start]))]
            colour[start] = GREY
            while path:
                if not pending[-1]:
                    colour[path.pop()] = BLACK
                    pending.pop()
                    continue
                nxt = pending[-1].pop()
                if colour[nxt] == GREY:
                    return path[path.index(nxt):] + [nxt]
                if colour[nxt] == WHITE:
                    colour[nxt] = GREY
                    path.append(nxt)
                    pending.append(list(reversed(edges[nxt])))
        return None

    # Reading helpers for the engine.
    @property
    def first_step(self) -> StepSpec:
        return self.tasks[0]

    def step(self, task_id: str) -> StepSpec:
        for candidate in self.tasks:
            if candidate.taskId == task_id:
                return candidate
        raise KeyError(task_id)

    def ordered_steps(self) -> list[StepSpec]:
        """Steps along the main path from the first step, then any others in file order."""
        seen = main_path({"tasks": [{"taskId": s.taskId, "nextTaskId": s.nextTaskId} for s in self.tasks]})
        rest = [s.taskId for s in self.tasks if s.taskId not in seen]
        return [self.step(task_id) for task_id in seen + rest]

    def to_document(self) -> dict[str, Any]:
        """The upstream JSON shape (defaults written out, so a snapshot is self-contained; the
        approval fields only where they are set)."""
        document = self.model_dump(mode="json")
        for step in document["tasks"]:
            for name in _OMIT_WHEN_UNSET:
                if step.get(name) is None:
                    step.pop(name, None)
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_document(), indent=2, sort_keys=False) + "\n"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_document(), sort_keys=False, allow_unicode=True)


def main_path(document: dict[str, Any]) -> list[str]:
    """Step ids along `nextTaskId` from the first step of a spec document (a stored spec or a session's
    snapshot, read as it is), ending at the last step, an unknown id or a repeat."""
    steps = {s.get("taskId"): s for s in document.get("tasks") or [] if isinstance(s, dict)}
    if not steps:
        return []
    path: list[str] = []
    current = document["tasks"][0].get("taskId")
    while current in steps and current not in path:
        path.append(current)
        current = steps[current].get("nextTaskId")
    return path


_LITERAL_MESSAGES = {
    "type": "must be 'approval' (a step decided by a person) or left out (an agent task)",
    "onTimeout": "must be 'reject' (the only action on an approval's timeout) or left out",
}


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


MAX_NODES = 1_000_000  # values in a new document: far above any 1 MB file; a YAML alias bomb expands to billions


def _storable_problems(document: Any) -> dict[str, list[str]]:
    """Why `document` is not plain JSON that PostgreSQL can store, by field path (empty when it is).

    json and YAML readers accept things a definition cannot keep: NUL characters, NaN and
    Infinity, YAML binary/date/set values, non-text keys (YAML's `1:` and `'1':` would collide).
    Iterative, so no document exhausts the stack; depth and size are bounded too.
    """
    errors: dict[str, list[str]] = {}
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ())]
    seen = 0
    while stack and len(errors) < 20:
        value, loc = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            return {"": [f"the document has more than {MAX_NODES} values (YAML aliases count each time they are used)"]}
        if isinstance(value, str):
            if problem := text_problem(value):
                errors.setdefault(_format_loc(loc), []).append(problem)
        elif isinstance(value, bool) or value is None or isinstance(value, int):
            continue
        elif isinstance(value, float):
            if not math.isfinite(value):
                errors.setdefault(_format_loc(loc), []).append(f"numbers must be finite, not {value}")
        elif isinstance(value, (dict, list)):
            path = _format_loc(loc)
            if len(loc) >= MAX_DEPTH:
                errors.setdefault(path, []).append(f"nested more than {MAX_DEPTH} levels deep")
                continue
            if isinstance(value, list):
                stack.extend((item, (*loc, index)) for index, item in enumerate(value))
                continue
            for key, item in value.items():
                if not isinstance(key, str):
                    errors.setdefault(path, []).append(
                        f"keys must be text, not {type(key).__name__} {key!r} (quote it in YAML)")
                    continue
                if problem := text_problem(key):
                    errors.setdefault(path, []).append(f"a key: {problem}")
                    continue
                stack.append((item, (*loc, key)))
        else:
            errors.setdefault(_format_loc(loc), []).append(
                f"{type(value).__name__} values are not JSON (in YAML, quote dates and avoid !!binary and !!set)")
    return errors


def validate_definition(document: Any, *, new_input: bool = False, definition_id: str | None = None) -> WorkflowSpec:
    """Validate a parsed document (a dict) and return the spec, or raise SpecError.

    Field errors are keyed by their path in the upstream shape (`tasks.1.nextTaskId`).
    `definition_id` (an edit of a stored definition, a PUT to its URL) is the id the spec must
    keep: a definition's id never changes.
    `new_input` (a form, a file, the admin) is also checked for what PostgreSQL cannot store
    and bounded in nesting and size. Everything else is JSON already: API bodies passed the
    API's strict JSON reader, and stored specs and snapshots come from jsonb (the engine
    validates a snapshot on each step: no walk over every value there).
    """
    if not isinstance(document, dict):
        raise SpecError({"": [f"a workflow definition must be a JSON object, not {type(document).__name__}"]})
    if new_input and (problems := _storable_problems(document)):
        raise SpecError(problems)
    try:
        spec = WorkflowSpec.model_validate(document)
    except SpecError:
        raise
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            ctx_error = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_error, SpecError):
                prefix = _format_loc(err["loc"])  # a step's own check names its fields without the step
                for path, messages in ctx_error.errors.items():
                    errors.setdefault(f"{prefix}.{path}" if prefix and path else path or prefix, []).extend(messages)
                continue
            message = err["msg"]
            if err["type"] == "literal_error" and err["loc"][-1] in _LITERAL_MESSAGES:
                message = _LITERAL_MESSAGES[err["loc"][-1]]
            elif err["type"] == "string_pattern_mismatch":
                message = "must start with a letter or digit and use only letters, digits, '_', '-' and '.'"
            elif message.startswith("Value error, "):
                message = message.removeprefix("Value error, ")
            errors.setdefault(_format_loc(err["loc"]), []).append(message)
        raise SpecError(errors) from None
    if definition_id is not None and spec.id != definition_id:
        raise SpecError({"id": [f"the spec's id '{spec.id}' differs from this definition's id '{definition_id}'; "
                                "import it as a new definition instead"]})
    return spec


def parse_document(text: str | bytes, *, fmt: str = "auto", definition_id: str | None = None) -> WorkflowSpec:
    """Parse JSON or YAML text (fmt "json", "yaml" or "auto") and validate it (`definition_id`: see
    `validate_definition`)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError({"": ["the file is not UTF-8 text"]}) from None
    fmt = fmt.lower()
    if fmt not in {"auto", "json", "yaml", "yml"}:
        raise SpecError({"": [f"unknown format '{fmt}': use json or yaml"]})
    if fmt == "json" or (fmt == "auto" and text.lstrip().startswith(("{", "["))):
        try:
            document = json.loads(text, parse_constant=reject_constant)
        except json.JSONDecodeError as exc:
            raise SpecError({"": [f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]}) from None
        except RecursionError:
            raise SpecError({"": [f"invalid JSON: nested more than {MAX_DEPTH} levels deep"]}) from None
        except ValueError as exc:  # NaN/Infinity, or an integer too long to read
            raise SpecError({"": [f"invalid JSON: {exc}"]}) from None
    else:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError({"": [f"invalid YAML: {problem}{where}"]}) from None
        except RecursionError:
            raise SpecError({"": [f"invalid YAML: nested more than {MAX_DEPTH} levels deep"]}) from None
        except ValueError as exc:  # an integer too long to read
            raise SpecError({"": [f"invalid YAML: {exc}"]}) from None
    return validate_definition(document, new_input=True, definition_id=definition_id)
