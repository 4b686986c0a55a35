"""The third-party portal (T01-T05) under ``/portal/v1``: a party sees only its meters
(another meter answers exactly as a meter that does not exist: T01, T02), reads stored
data and yesterday's intervals, bulk exports of its meters, and on-demand reads of the
meter now (AD_HOC priority: routine work goes first, D13), rate-limited and quota'd
per party (T05)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from headend.api import Headend, HeadendError, ReadSpec, UnknownMeter
from headend.http import exporting, models
from headend.http.auth import party
from headend.http.errors import ApiError, ErrorBody, no_meter
from headend.http.store import Opener
from headend.store.exports import Exports, ExportSchedule
from headend.store.parties import DAY_MS, PERIODIC_PREFIX, Parties, Party

MAX_SPAN_S = 366 * 86_400

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such meter (or not yours)"}
}
_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "rate limit or daily quota reached"}
}


class PeriodicIn(BaseModel):
    name: Annotated[str, Field(pattern="^[A-Za-z0-9_-]{1,32}$")]
    url: Annotated[str, Field(pattern="^https://[!-~]{1,500}$", description="receives a POST")]
    at: Annotated[str, Field(pattern="^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM")]
    every_days: Annotated[int, Field(ge=1, le=366)] = 1
    days: Annotated[int, Field(ge=1, le=31)] = 1
    fmt: Annotated[str, Field(pattern="^(csv|json|espi)$")] = "csv"


class PeriodicOut(BaseModel):
    name: str


def _granted(he: Headend, who: Party, meter_id: models.MeterPath) -> None:
    """404 unless the meter exists AND is the party's; the same lookup is made either
    way, so neither the answer nor its timing tells a foreign meter from none (T02)."""
    try:
        he.meter(meter_id)
        exists = True
    except UnknownMeter:
        exists = False
    if not (exists and meter_id in who.meters):
        raise no_meter()


def _span(start: int, end: int) -> None:
    if not 0 < end - start <= MAX_SPAN_S:
        raise ApiError(400, f"period: end must be after start, at most {MAX_SPAN_S} s")


def router(db: Opener, fresh: Opener, now_ms: Callable[[], int], tz: ZoneInfo) -> APIRouter:
    r = APIRouter(
        prefix="/portal/v1",
        tags=["portal"],
        responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}},
    )
    caller = Depends(party(db))

    @r.get("/meters", response_model=list[int])
    def meters(who: Party = caller) -> list[int]:
        """The party's meters that exist."""
        with db() as he:
            return sorted(set(he.meters()) & who.meters)

    @r.get("/meters/{meter_id}/intervals", responses=_NOT_FOUND)
    def intervals(
        meter_id: models.MeterPath,
        start: models.Start,
        end: models.End,
        channel: models.Channel = 0,
        who: Party = caller,
    ) -> list[models.IntervalOut]:
        """Stored intervals of one channel of the meter in [start, end)."""
        with db() as he:
            _granted(he, who, meter_id)
            _span(start, end)
            return models.intervals(he, meter_id, channel, start, end)

    @r.get("/meters/{meter_id}/yesterday", responses=_NOT_FOUND)
    def yesterday(
        meter_id: models.MeterPath, channel: models.Channel = 0, who: Party = caller
    ) -> list[models.IntervalOut]:
        """Yesterday's (UTC) stored intervals of the meter, from the store."""
        day0 = now_ms() // DAY_MS * 86_400
        with db() as he:
            _granted(he, who, meter_id)
            return models.intervals(he, meter_id, channel, day0 - 86_400, day0)

    @r.post("/meters/{meter_id}/reads", status_code=202, responses=_NOT_FOUND | _LIMITED)
    def read_now(meter_id: models.MeterPath, who: Party = caller) -> models.Queued:
        """Read the meter now ("current"): queued AD_HOC, counted against the limits."""
        with db() as he:
            _granted(he, who, meter_id)
            wait_s = Parties(he.ctx.db).take(who, now_ms())
            if wait_s:
                raise ApiError(
                    429,
                    f"on-demand limit reached ({who.rate_per_min}/min, "
                    f"{who.daily_quota}/day); retry after {wait_s} s",
                    {"Retry-After": str(wait_s)},
                )
            job_id = he.request_read(ReadSpec(meter_id), f"portal:{who.name}", now_ms())
        return models.Queued(job_id=job_id)

    @r.get("/reads/{job_id}", responses={404: {"model": ErrorBody}})
    def read_status(job_id: models.JobPath, who: Party = caller) -> models.JobOut:
        """A read the party asked for."""
        with db() as he:
            try:
                job = he.job(job_id)
            except HeadendError:
                job = None
            if job is None or job.requester != f"portal:{who.name}":
                raise ApiError(404, "no such read")
            return models.job(job)

    @r.get("/export", response_class=StreamingResponse, responses=exporting.RESPONSE)
    def bulk(
        request: Request,
        start: models.Start,
        end: models.End,
        fmt: Annotated[str, Query(pattern="^(csv|json|espi)$")] = "csv",
        who: Party = caller,
    ) -> StreamingResponse:
        """One-time bulk export of all the party's meters for [start, end), streamed."""
        _span(start, end)
        with db() as he:
            ids = sorted(set(he.meters()) & who.meters)
        return exporting.stream(request, fresh, ids, start, end, tz, fmt)

    @r.post("/periodic", status_code=201)
    def periodic(spec: PeriodicIn, who: Party = caller) -> PeriodicOut:
        """A periodic bulk export of the party's meters (T03), run by the service's
        routine exports (D11) and POSTed to the party's https:// URL; it follows the
        party's grants and stops when the party is revoked."""
        name = f"{PERIODIC_PREFIX}{who.name}:{spec.name}"
        sched = ExportSchedule(
            name, who.meters_text, "intervals,registers,events", spec.fmt, tz.key, spec.at,
            spec.every_days, spec.days, spec.url,
        )  # fmt: skip
        with db() as he:
            Exports(he.ctx.db).put(sched, now_ms())
        return PeriodicOut(name=name)

    return r
