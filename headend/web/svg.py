"""Inline SVG plots for the operator page: pure functions from numbers to markup.

No chart library: a bar plot (collected against expected per read group) and a
line plot (one polyline per series). Every value is scaled into a fixed box so
a plot never draws outside its ``viewBox``; labels are escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH = 720
HEIGHT = 240
#: room for the axis labels: left, right, top, bottom
PAD = (56, 12, 24, 56)
COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df")


def _box() -> tuple[float, float, float, float]:
    """(x0, y0, inner width, inner height) of the plotting area."""
    left, right, top, bottom = PAD
    return left, top, WIDTH - left - right, HEIGHT - top - bottom


def scale(value: float, top: float, height: float) -> float:
    """The y coordinate of ``value`` on an axis 0..``top`` drawn ``height`` tall
    (clamped into the box, so a bad value cannot draw outside it)."""
    if top <= 0:
        return height
    return height - max(0.0, min(value / top, 1.0)) * height


def _nice_top(values: Sequence[float]) -> float:
    """Axis maximum: the largest value, at least 1 (an all-zero plot still has an axis)."""
    return max([1.0, *values])


def _frame(title: str, body: list[str], top: float, unit: str) -> str:
    x0, y0, w, h = _box()
    axis = [
        f'<line class="axis" x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#555"/>',
        f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="#555"/>',
        f'<text x="{x0 - 4}" y="{y0 + 4}" text-anchor="end" font-size="11">'
        f"{escape(_fmt(top))}</text>",
        f'<text x="{x0 - 4}" y="{y0 + h}" text-anchor="end" font-size="11">0</text>',
        f'<text x="{x0 - 4}" y="{y0 - 10}" text-anchor="end" font-size="11" fill="#555">'
        f"{escape(unit)}</text>",
    ]
    return (
        f'<svg class="plot" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        + "".join(axis + body)
        + "</svg>"
    )


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e6 else f"{v:.3g}"


def _empty(title: str) -> str:
    x0, y0, w, h = _box()
    body = [
        f'<text class="empty" x="{x0 + w / 2}" y="{y0 + h / 2}" text-anchor="middle" '
        'font-size="13" fill="#777">no data</text>'
    ]
    return _frame(title, body, 1.0, "")


def bars(title: str, labels: Sequence[str], done: Sequence[int], expected: Sequence[int]) -> str:
    """Per label: a grey bar of ``expected`` with a blue bar of ``done`` over it."""
    if not labels:
        return _empty(title)
    x0, y0, w, h = _box()
    top = _nice_top([*done, *expected])
    slot = w / len(labels)
    bw = max(1.0, slot * 0.7)
    body: list[str] = []
    for i, (label, d, e) in enumerate(zip(labels, done, expected, strict=True)):
        x = x0 + i * slot + (slot - bw) / 2
        for cls, v, colour in (("expected", e, "#d0d7de"), ("done", d, COLOURS[0])):
            y = y0 + scale(v, top, h)
            body.append(
                f'<rect class="bar {cls}" x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" '
                f'height="{y0 + h - y:.1f}" fill="{colour}"><title>{escape(label)}: '
                f"{d} of {e}</title></rect>"
            )
        if len(labels) <= 12 or i % -(-len(labels) // 12) == 0:
            lx, ly = x + bw / 2, y0 + h + 12
            body.append(
                f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" text-anchor="end" '
                f'transform="rotate(-40 {lx:.1f} {ly:.1f})">{escape(label)}</text>'
            )
    return _frame(title, body, top, "meters")


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The points cut at each None (a gap in the data is a gap in the line)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, v in points:
        if v is None:
            runs.append([])
        else:
            runs[-1].append((x, v))
    return [r for r in runs if r]


def lines(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    unit: str = "",
) -> str:
    """One polyline per series over the x ``labels`` (every series as long as ``labels``),
    with a legend; None is a gap, a lone point is drawn as a dot."""
    if not labels or not series:
        return _empty(title)
    x0, y0, w, h = _box()
    top = _nice_top([v for vs in series.values() for v in vs if v is not None])
    step = w / max(1, len(labels) - 1)
    body: list[str] = []
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        for run in _runs([(x0 + i * step, v) for i, v in enumerate(values)]):
            pts = [(x, y0 + scale(v, top, h)) for x, v in run]
            if len(pts) == 1:
                body.append(
                    f'<circle class="point" cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="3" '
                    f'fill="{colour}"/>'
                )
            else:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                body.append(
                    f'<polyline class="line" points="{coords}" fill="none" '
                    f'stroke="{colour}" stroke-width="2"/>'
                )
        # the legend runs along the top margin, outside the plotted area
        body.append(
            f'<text class="legend" x="{x0 + 8 + 220 * k}" y="{y0 - 10}" '
            f'font-size="11" fill="{colour}">&#9632; {escape(name)}</text>'
        )
    for i in (0, len(labels) // 2, len(labels) - 1):
        anchor = "start" if i == 0 else "end" if i == len(labels) - 1 else "middle"
        body.append(
            f'<text x="{x0 + i * step:.1f}" y="{y0 + h + 16}" font-size="10" '
            f'text-anchor="{anchor}">{escape(labels[i])}</text>'
        )
    return _frame(title, body, top, unit)
