"""Bar charts drawn on the server as SVG: no script needed, labels escaped by the template like any text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 860, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 64
MAX_BARS = 40
"""More groups than this: the largest ones, and the rest as one "other" bar."""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Tick:
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    baseline: float
    left: float
    right: float
    label_every: int
    """Every how many bars an axis label is written (all of them when they fit)."""


def largest(groups: Sequence[tuple[str, float]], keep: int = MAX_BARS) -> list[tuple[str, float]]:
    """The `keep` - 1 largest groups by value and one "other" bar for the rest (all of them if they fit)."""
    if len(groups) <= keep:
        return list(groups)
    ordered = sorted(groups, key=lambda group: group[1], reverse=True)
    rest = ordered[keep - 1 :]
    return [*ordered[: keep - 1], (f"{len(rest)} others", sum(value for _, value in rest))]


def bar_chart(groups: Sequence[tuple[str, float]], *, width: int = WIDTH, height: int = HEIGHT) -> Chart:
    """Bars for (label, dollars) pairs in the order given, on an axis from $0 to a round maximum."""
    top = _round_up(max((value for _, value in groups), default=0.0))
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    baseline = TOP + plot_h
    step = plot_w / max(1, len(groups))
    bars = []
    for n, (label, value) in enumerate(groups):
        bar_h = plot_h * value / top if top > 0 else 0.0
        bar_h = max(bar_h, 1.0) if value > 0 else 0.0  # a cent of spend still shows
        bars.append(Bar(label, value, LEFT + n * step + step * 0.1, baseline - bar_h, step * 0.8, bar_h))
    ticks = tuple(Tick(baseline - plot_h * k / 4, _money(top * k / 4)) for k in range(5)) if top > 0 else ()
    return Chart(width, height, tuple(bars), ticks, baseline, LEFT, width - RIGHT, max(1, math.ceil(len(bars) / 16)))


def _round_up(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 0.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def _money(value: float) -> str:
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if value >= 0.01 else f"${value:.8f}".rstrip("0")
