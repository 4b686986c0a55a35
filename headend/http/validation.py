"""Usage validation in the operator API (D14), as ``headend validate``: the same checks,
thresholds (the CLI's defaults) and stored results (`checks.validate_stored`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from headend.http import models
from headend.http.errors import ErrorBody
from headend.http.store import Opener
from headend.mdms import validate as checks
from headend.store.exports import Selection
from headend.store.validations import StoredResult, Validations
from headend.timetext import zone

MeterId = Annotated[int, Query(ge=0, lt=2**32)]
_D = checks.Rules()


class ValidationIn(BaseModel):
    meters: Annotated[
        str,
        Field(pattern=models.SELECTION, description=models.SELECTION_TEXT),
    ]
    start: Annotated[int, Field(ge=0, lt=2**32, description="UTC s, inclusive")]
    end: Annotated[int, Field(ge=0, lt=2**32, description="UTC s, exclusive; after start")]
    tz: Annotated[
        str | None, Field(max_length=64, description="IANA zone of the days (report_tz)")
    ] = None
    stuck: Annotated[int, Field(ge=1, le=100_000, description="longest run of equal values")] = (
        _D.stuck
    )
    history_days: Annotated[int, Field(ge=0, le=3660)] = _D.history_days
    high: Annotated[float, Field(ge=1, le=1e6, description="a day above X x history max")] = float(
        _D.high
    )
    low: Annotated[float, Field(ge=0, le=1, description="a day below X x history min")] = float(
        _D.low
    )
    tolerance: Annotated[int, Field(ge=0, lt=2**32, description="sum check, raw counts")] = (
        _D.tolerance
    )


class ValidationOut(BaseModel):
    start: int
    end: int
    tz: str
    totals: dict[str, int]
    results: list[StoredResult]


def add(r: APIRouter, db: Opener, now_ms: Callable[[], int], tz: ZoneInfo) -> None:
    """The validation endpoints, on the operator router ``r``."""

    @r.get("/validation")
    def validation(
        meter_id: MeterId | None = None,
        status: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[StoredResult]:
        """Stored usage validation results (D14; ``POST /validation`` and ``headend
        validate`` make them)."""
        with db() as he:
            return Validations(he.ctx.db).results(meter_id, status, limit)

    @r.post(
        "/validation",
        responses={404: {"model": ErrorBody, "description": "a meter named alone is unknown"}},
    )
    def validate(body: ValidationIn) -> ValidationOut:
        """Validate the meters over [start, end) per local day (as ``headend validate``),
        store the results and answer them with pass/fail/skip totals. An end not after
        start is a 400. It runs while the caller waits: a large selection takes as long as
        in the CLI."""
        # parsed before the store is opened: an error there never drops a pooled connection
        days = zone(body.tz) if body.tz else tz
        found = checks.parse_rules(
            body.stuck, body.history_days, body.high, body.low, body.tolerance
        )
        sel, at = Selection(body.meters), now_ms()
        with db() as he:
            rows = checks.validate_stored(he.ctx.store, sel, body.start, body.end, days, found, at)
        return ValidationOut(
            start=body.start,
            end=body.end,
            tz=days.key,
            totals=checks.totals_of(rows),
            results=[StoredResult(m, body.start, body.end, c, s, d, at) for m, c, s, d in rows],
        )
