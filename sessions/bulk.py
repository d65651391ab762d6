"""Operator actions on many rows at once: the one loop behind the failures page's bulk retry,
the admin's actions and `opscore_retry`. Changes nothing itself; each action calls the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

from sessions import engine

T = TypeVar("T")


class Skipped(NamedTuple):
    """An object the engine refused, and its reason."""

    obj: object
    reason: str


def run_each(objects: Iterable[T], action: Callable[[T], object]) -> tuple[int, list[Skipped]]:
    """Call the engine `action` on each object; return how many it did and the ones it refused
    (raced with the engine or another operator, or not allowed: an `EngineError`)."""
    done, skipped = 0, []
    for obj in objects:
        try:
            action(obj)
            done += 1
        except engine.EngineError as exc:
            skipped.append(Skipped(obj, str(exc)))
    return done, skipped


def skipped_text(skipped: list[Skipped]) -> str:
    """' Skipped N: reason; reason …' (the first five), or '' when nothing was skipped."""
    if not skipped:
        return ""
    return (f" Skipped {len(skipped)}: " + "; ".join(s.reason for s in skipped[:5])
            + (" …" if len(skipped) > 5 else ""))
