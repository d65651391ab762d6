"""Server-rendered SVG charts: no JavaScript, no inline styles (the CSP allows neither).

Shapes carry SVG presentation attributes and CSS classes (`ui/static/ui/opscore.css` colours
them: `.series-0`, `.bar.completed`...), and every text is escaped by `format_html`. Charts
refresh with the partial they sit in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per bucket; None: no data (a gap in the line)


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def line_chart(*, labels: Sequence[str], series: Sequence[Series], title: str, unit: str = "",
               testid: str = "") -> SafeString:
    """A line chart of `series` over the buckets named by `labels` (first and last are printed)."""
    n = max(len(labels), 1)
    values = [v for s in series for v in s.values if v is not None]
    top = max(values, default=0.0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [format_html('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>', LEFT, TOP + plot_h, WIDTH - RIGHT,
                         TOP + plot_h),
             format_html('<text class="tick" x="{}" y="{}" text-anchor="end">{}{}</text>', LEFT - 4, TOP + 8,
                         _number(top), unit),
             format_html('<text class="tick" x="{}" y="{}" text-anchor="end">0</text>', LEFT - 4, TOP + plot_h)]
    if labels:
        parts.append(format_html('<text class="tick" x="{}" y="{}">{}</text>', LEFT, HEIGHT - 6, labels[0]))
        parts.append(format_html('<text class="tick" x="{}" y="{}" text-anchor="end">{}</text>', WIDTH - RIGHT,
                                 HEIGHT - 6, labels[-1]))
    for index, s in enumerate(series):
        segment: list[str] = []
        segments: list[list[str]] = [segment]
        for i, v in enumerate(s.values):
            if v is None:
                segment = []
                segments.append(segment)
                continue
            segment.append(f"{x(i):.1f},{y(v):.1f}")
        for points in segments:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(format_html('<circle class="series-{}" cx="{}" cy="{}" r="2"/>', index, cx, cy))
            elif points:
                parts.append(format_html('<polyline class="series-{}" points="{}"/>', index, " ".join(points)))
    legend = format_html_join("", '<span class="legend series-{}">{}</span>',
                              ((i, s.name) for i, s in enumerate(series)))
    return format_html(
        '<figure class="chart"{}><figcaption>{} {}</figcaption>'
        '<svg viewBox="0 0 {} {}" width="100%" role="img" aria-label="{}">{}</svg></figure>',
        mark_safe(f' data-testid="{testid}"') if testid else "", title, legend, WIDTH, HEIGHT, title,
        mark_safe("".join(parts)))


@dataclass(frozen=True)
class Bar:
    """One bar of a timeline row: from `start` to `end`, coloured by `kind` (a CSS class), with a tooltip."""

    start: datetime
    end: datetime
    kind: str
    label: str


@dataclass(frozen=True)
class Row:
    label: str
    bars: Sequence[Bar]


ROW_HEIGHT, LABEL_WIDTH = 22, 150


def timeline(*, rows: Sequence[Row], start: datetime, end: datetime, title: str, testid: str = "") -> SafeString:
    """A Gantt-like chart: one row per item, its bars placed on a shared time axis."""
    span = max((end - start).total_seconds(), 0.001)
    plot_w = WIDTH - LABEL_WIDTH - RIGHT
    height = TOP + ROW_HEIGHT * max(len(rows), 1) + BOTTOM

    def x(moment: datetime) -> float:
        return LABEL_WIDTH + plot_w * min(max((moment - start).total_seconds() / span, 0.0), 1.0)

    parts = []
    for index, row in enumerate(rows):
        top = TOP + index * ROW_HEIGHT
        parts.append(format_html('<text class="row-label" x="{}" y="{}" text-anchor="end">{}</text>',
                                 LABEL_WIDTH - 6, top + 15, row.label[:24]))
        for bar in row.bars:
            left = x(bar.start)
            width = max(x(bar.end) - left, 1.5)
            parts.append(format_html(
                '<rect class="bar {}" x="{}" y="{}" width="{}" height="{}" rx="2"><title>{}</title></rect>',
                bar.kind, f"{left:.1f}", top + 3, f"{width:.1f}", ROW_HEIGHT - 6, bar.label))
    axis_y = TOP + ROW_HEIGHT * max(len(rows), 1)
    parts.append(format_html('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>', LABEL_WIDTH, axis_y,
                             WIDTH - RIGHT, axis_y))
    parts.append(format_html('<text class="tick" x="{}" y="{}">{}</text>', LABEL_WIDTH, axis_y + 15,
                             start.strftime("%H:%M:%S")))
    parts.append(format_html('<text class="tick" x="{}" y="{}" text-anchor="end">{} (+{})</text>', WIDTH - RIGHT,
                             axis_y + 15, end.strftime("%H:%M:%S"), _span_text(span)))
    return format_html(
        '<figure class="chart"{}><figcaption>{}</figcaption>'
        '<svg viewBox="0 0 {} {}" width="100%" role="img" aria-label="{}">{}</svg></figure>',
        mark_safe(f' data-testid="{testid}"') if testid else "", title, WIDTH, height, title,
        mark_safe("".join(parts)))


def _span_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Node:
    """One step of a graph: its id, a title and a line of figures under it."""

    id: str
    title: str
    figures: str = ""
    kind: str = ""  # an extra CSS class (e.g. "failing")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # "next" or "fallback" (a CSS class)


NODE_W, NODE_H, NODE_GAP = 360, 44, 26


def step_graph(*, nodes: Sequence[Node], edges: Sequence[Edge], title: str, testid: str = "") -> SafeString:
    """Steps as boxes in one column (in `nodes` order), `next` edges on the left, `fallback` edges (dashed)
    curving on the right; an edge to the box just below is a straight arrow."""
    left = (WIDTH - NODE_W) // 2
    position = {node.id: index for index, node in enumerate(nodes)}
    height = TOP * 2 + len(nodes) * NODE_H + max(len(nodes) - 1, 0) * NODE_GAP

    def top(index: int) -> int:
        return TOP + index * (NODE_H + NODE_GAP)

    parts = [mark_safe(
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path class="arrowhead" d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>')]
    for edge in edges:
        if edge.source not in position or edge.target not in position:
            continue
        a, b = position[edge.source], position[edge.target]
        if b == a + 1 and edge.kind == "next":
            x = left + NODE_W / 2
            d = f"M {x} {top(a) + NODE_H} L {x} {top(b) - 2}"
        else:
            side = left + NODE_W if edge.kind == "fallback" else left
            bulge = (60 + 12 * abs(b - a)) * (1 if edge.kind == "fallback" else -1)
            y1, y2 = top(a) + NODE_H / 2, top(b) + NODE_H / 2
            d = f"M {side} {y1} C {side + bulge} {y1}, {side + bulge} {y2}, {side + (2 if bulge > 0 else -2)} {y2}"
        parts.append(format_html('<path class="edge {}" d="{}" marker-end="url(#arrow)"><title>{} → {} ({})</title>'
                                 '</path>', edge.kind, d, edge.source, edge.target, edge.kind))
    for index, node in enumerate(nodes):
        y = top(index)
        parts.append(format_html(
            '<g class="node {}" data-step="{}"><rect x="{}" y="{}" width="{}" height="{}" rx="5"/>'
            '<text class="node-title" x="{}" y="{}">{}</text><text class="node-figures" x="{}" y="{}">{}</text></g>',
            node.kind, node.id, left, y, NODE_W, NODE_H, left + 8, y + 17, node.title[:40], left + 8, y + 35,
            node.figures))
    return format_html(
        '<figure class="chart"{}><figcaption>{} <span class="legend next">next</span>'
        '<span class="legend fallback">fallback</span></figcaption>'
        '<svg viewBox="0 0 {} {}" width="100%" role="img" aria-label="{}">{}</svg></figure>',
        mark_safe(f' data-testid="{testid}"') if testid else "", title, WIDTH, height, title,
        mark_safe("".join(parts)))
