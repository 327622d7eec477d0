"""Numbers as tables show them to people: money in cents, rates, counted nouns, an empty table as a sentence.

``--json`` keeps the raw values; these are for the human output only.
"""

from __future__ import annotations

from rich import box
from rich.table import Table

from vastevents.config import format_duration

__all__ = ["cut", "format_duration", "money", "money_change", "narrow_table", "plural", "rate"]

_CENT = 0.005


def money(usd: float | None) -> str:
    """``$1.23``; ``<$0.01`` for a cost too small to show in cents; ``-`` when unknown."""
    if usd is None:
        return "-"
    if 0 < abs(usd) < _CENT:
        return "<$0.01" if usd > 0 else "-<$0.01"
    if abs(usd) < _CENT:
        return "$0.00"
    return f"-${-usd:,.2f}" if usd < 0 else f"${usd:,.2f}"


def money_change(usd: float | None) -> str:
    """A signed difference: ``+$0.12``, ``-$0.40``, ``$0.00`` under half a cent (never ``$-0.00``)."""
    if usd is None:
        return "-"
    if abs(usd) < _CENT:
        return "$0.00"
    return f"+${usd:,.2f}" if usd > 0 else f"-${-usd:,.2f}"


def rate(dph: float | None) -> str:
    """Dollars per hour, to a tenth of a cent: ``$0.207/h``."""
    return "-" if dph is None else f"${dph:.3f}/h"


def plural(count: int, noun: str) -> str:
    """``1 instance``, ``2 instances``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, ending with ``…`` when it was cut."""
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def narrow_table(title: str | None = None) -> Table:
    """A table that fits 80 columns: a rule under the header, one space between columns."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
