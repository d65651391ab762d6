"""The stand-in's settings: parsed once from flags/env, some changeable at runtime."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agentkit_standin.wire import WEBHOOK_PATH


OUTCOMES = ("complete", "fail", "lose")  # what a simulated agent does with a run
DEFAULT_CAPABILITIES = ("test_capability", "another_capability")  # the sample workflow's steps


class ConfigError(ValueError):
    """A setting has a bad value; the message names it and says why."""


def parse_range(value: Any, *, name: str) -> tuple[float, float]:
    """'0.2' -> (0.2, 0.2); '0.1-0.5' -> (0.1, 0.5); also numbers and [low, high] pairs. Seconds, >= 0."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected seconds like 0.2 or a range like 0.1-0.5, got {value!r}")
    if isinstance(value, (int, float)):
        low = high = float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = (_seconds(v, name) for v in value)
    elif isinstance(value, str):
        text = value.strip()
        parts = text.split("-") if "-" in text[1:] else [text]
        if len(parts) == 1:
            low = high = _seconds(parts[0], name)
        elif len(parts) == 2:
            low, high = _seconds(parts[0], name), _seconds(parts[1], name)
        else:
            raise ConfigError(f"{name}: expected seconds like 0.2 or a range like 0.1-0.5, got {value!r}")
    else:
        raise ConfigError(f"{name}: expected seconds like 0.2 or a range like 0.1-0.5, got {value!r}")
    if low < 0 or high < low:
        raise ConfigError(f"{name}: need 0 <= low <= high, got {value!r}")
    return low, high


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} is not a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a number of seconds") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}: {value!r} is not a finite number of seconds")
    return seconds


def parse_rate(value: Any, *, name: str) -> float:
    """A probability in [0, 1]."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a probability between 0 and 1, got {value!r}")
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a probability between 0 and 1, got {value!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{name}: expected a probability between 0 and 1, got {value!r}")
    return rate


def parse_recovery(value: Any, *, name: str = "error_recovery") -> tuple[float, float] | None:
    """Delay before the `idle` that follows an `error`; None/'off' = stay in error."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none", "")):
        return None
    return parse_range(value, name=name)


def _parse_bool(value: Any, *, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


@dataclass
class Config:
    """Everything the stand-in needs; `RUNTIME` fields may change while it runs."""

    opscore_url: str = "http://127.0.0.1:8000"
    api_key: str = ""
    webhook_secret: str = ""
    webhook_url: str = ""  # default: {opscore_url}/v1/opscore/internal/agent/notify
    host: str = "127.0.0.1"
    port: int = 0
    work_time: tuple[float, float] = (0.0, 0.0)
    answer_delay: tuple[float, float] = (0.0, 0.0)  # a slow AgentKit: wait this long before answering /run
    failure_rate: float = 0.0
    lost_rate: float = 0.0
    error_recovery: tuple[float, float] | None = (0.02, 0.05)
    webhook: bool = True
    initial_idle: bool = True
    with_result: bool = False
    paused: bool = False
    capabilities: list[str] = field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    seed: int | None = None
    report_timeout: float = 10.0

    RUNTIME = ("work_time", "answer_delay", "failure_rate", "lost_rate", "error_recovery", "webhook", "initial_idle",
               "with_result", "paused")

    def __post_init__(self) -> None:
        self.opscore_url = self.opscore_url.rstrip("/")
        if not self.opscore_url.startswith(("http://", "https://")):
            raise ConfigError(f"opscore_url: expected an http(s) URL, got {self.opscore_url!r}")
        self.work_time = parse_range(self.work_time, name="work_time")
        self.answer_delay = parse_range(self.answer_delay, name="answer_delay")
        self.failure_rate = parse_rate(self.failure_rate, name="failure_rate")
        self.lost_rate = parse_rate(self.lost_rate, name="lost_rate")
        self.error_recovery = parse_recovery(self.error_recovery)
        if not isinstance(self.capabilities, (list, tuple)) or not all(isinstance(c, str) for c in self.capabilities):
            raise ConfigError("capabilities: expected a list of strings")
        self.capabilities = list(self.capabilities)

    @property
    def notify_url(self) -> str:
        return self.webhook_url or f"{self.opscore_url}{WEBHOOK_PATH}"

    def update(self, changes: dict[str, Any]) -> None:
        """Apply runtime changes all-or-nothing; raise ConfigError naming the first bad key or value."""
        if not isinstance(changes, dict):
            raise ConfigError("expected a JSON object of settings")
        unknown = sorted(set(changes) - set(self.RUNTIME))
        if unknown:
            raise ConfigError(f"cannot change {', '.join(unknown)} at runtime; changeable: {', '.join(self.RUNTIME)}")
        parsed: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("work_time", "answer_delay"):
                parsed[key] = parse_range(value, name=key)
            elif key in ("failure_rate", "lost_rate"):
                parsed[key] = parse_rate(value, name=key)
            elif key == "error_recovery":
                parsed[key] = parse_recovery(value)
            else:
                parsed[key] = _parse_bool(value, name=key)
        for key, value in parsed.items():
            setattr(self, key, value)

    def public(self) -> dict[str, Any]:
        """The settings as JSON, secrets reduced to whether they are set."""
        data = asdict(self)
        data["api_key"] = bool(self.api_key)
        data["webhook_secret"] = bool(self.webhook_secret)
        data["webhook_url"] = self.notify_url
        return data
