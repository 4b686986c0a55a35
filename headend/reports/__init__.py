"""Reports (D03-D08, D10, H03): each is a `Table` built from the store at once.

One module per family (``missing``: D02-D05, D08; ``trouble``: D06, D07, H03),
each exposing ``REPORTS: dict[str, Report]``. The CLI (`headend report NAME`),
`headend.api.Headend.report` and other systems all go through `run`, so a
report reads the same everywhere: human table, JSON or CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headend.context import Ctx

Cell = int | float | str | None


@dataclass(frozen=True)
class Table:
    """A report's result: a title, its column names, its rows (one tuple each),
    and a few summary figures (``totals``) for the header and for JSON."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Cell, ...]]
    totals: Mapping[str, Cell] = field(default_factory=dict)

    def records(self) -> list[dict[str, Cell]]:
        """The rows as dicts keyed by column (JSON, other systems)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Report:
    """A named report: ``build(ctx, now_ms, **options) -> Table``; ``options`` names
    the keyword options it takes (the CLI offers them as --day, --since, ...)."""

    name: str
    help: str
    build: Callable[..., Table]
    options: tuple[str, ...] = ()


def registry() -> dict[str, Report]:
    """Every report by name (imported here, late, so a family is loaded only when asked)."""
    found: dict[str, Report] = {}
    for module in _families():
        found.update(module.REPORTS)
    return found


def _families() -> list[Any]:
    from headend.reports import missing, trouble

    return [missing, trouble]


def run(ctx: Ctx, name: str, now_ms: int, **options: Any) -> Table:
    """Build report ``name``; raises KeyError for an unknown name."""
    return registry()[name].build(ctx, now_ms, **options)
