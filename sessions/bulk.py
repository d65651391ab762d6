"""Operator actions on many rows at once (the failures page, admin actions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from sessions import engine

T = TypeVar("T")


def run_each(objects: Iterable[T], action: Callable[[T], object]) -> tuple[int, list[str]]:
    """Call the engine `action` on each object; return how many it did and why it refused the others
    (raced with the engine or another operator, or not allowed: `InvalidTransition`)."""
    done, skipped = 0, []
    for obj in objects:
        try:
            action(obj)
            done += 1
        except engine.InvalidTransition as exc:
            skipped.append(str(exc))
    return done, skipped


def skipped_text(skipped: list[str]) -> str:
    """' Skipped N: reason; reason …' (the first five), or '' when nothing was skipped."""
    if not skipped:
        return ""
    return f" Skipped {len(skipped)}: " + "; ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
