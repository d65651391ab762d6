"""The hook through which the workflow page gets its step graph: `workflows` knows nothing of sessions
(DESIGN.md "Dependency direction"), so the app that has the runs registers the drawer at start-up
(SessionsConfig.ready) and the page calls it."""

from __future__ import annotations

from collections.abc import Callable

_drawers: list[Callable] = []


def register_step_graph(drawer: Callable) -> None:
    """`drawer(spec=WorkflowSpec)` returns the page's SVG graph of the steps, with their figures."""
    if drawer not in _drawers:
        _drawers.append(drawer)


def step_graph(*, spec):
    """The registered drawer's graph of `spec`, or None when no app registered one."""
    return _drawers[-1](spec=spec) if _drawers else None
