"""The operator API under ``/api/v1`` (authenticated by an operator key): meters, stored
data, on-demand reads, the activity log (D10: what happened is readable at once), the
registered reports, and what the CLI changes: schedules (`headend.http.schedules`),
validation (`headend.http.validation`), routine exports (`headend.http.routine`). Each
endpoint is a thin call of `headend.api.Headend`, as the CLI's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from headend.api import InvalidData, ReadSpec
from headend.http import exporting, models, routine, schedules, validation
from headend.http.errors import ApiError, ErrorBody
from headend.http.store import Opener
from headend.reports import registry as report_names
from headend.store import exports as store_exports
from headend.store.exports import Selection

MeterId = Annotated[int, Query(ge=0, lt=2**32)]
# the report families are loaded here, once: the spec names every report
_REPORTS = sorted(report_names())
_WITH_DAY = sorted(n for n, rep in report_names().items() if "day" in rep.options)
ReportName = Annotated[str, Path(pattern=f"^({'|'.join(_REPORTS)})$")]
ReportDay = Annotated[date | None, Query(description=f"a day of {', '.join(_WITH_DAY)} (only)")]


class ActivityOut(BaseModel):
    activity_id: int
    at_ms: int
    meter_id: int | None
    kind: str
    detail: str


class EventOut(BaseModel):
    code: int
    time: int
    data: int
    source: str


class ReportOut(BaseModel):
    title: str
    columns: list[str]
    records: list[dict[str, Any]]
    totals: dict[str, Any]


def router(
    db: Opener, fresh: Opener, now_ms: Callable[[], int], tz: ZoneInfo, auth: Callable[..., str]
) -> APIRouter:
    r = APIRouter(
        prefix="/api/v1",
        tags=["operator"],
        dependencies=[Depends(auth)],
        responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 400: {"model": ErrorBody}},
    )

    @r.get("/meters")
    def meters() -> list[models.MeterOut]:
        with db() as he:
            return [
                models.MeterOut(meter_id=m, interval_s=he.meter(m).interval_s) for m in he.meters()
            ]

    @r.get(
        "/meters/{meter_id}/intervals",
        responses={404: {"model": ErrorBody, "description": "no such meter or channel"}},
    )
    def intervals(
        meter_id: models.MeterPath,
        start: models.Start,
        end: models.End,
        channel: models.Channel = 0,
    ) -> list[models.IntervalOut]:
        """Stored intervals of one channel of the meter in [start, end)."""
        with db() as he:
            return models.intervals(he, meter_id, channel, start, end)

    @r.get("/meters/{meter_id}/registers")
    def registers(
        meter_id: models.MeterPath, start: models.Start, end: models.End
    ) -> list[models.RegisterOut]:
        """Midnight register reads in [start, end)."""
        with db() as he:
            he.meter(meter_id)
            return [models.register(x) for x in he.midnight_registers(meter_id, start, end)]

    @r.get("/meters/{meter_id}/events")
    def events(meter_id: models.MeterPath, start: models.Start, end: models.End) -> list[EventOut]:
        with db() as he:
            he.meter(meter_id)
            return [
                EventOut(code=e.code, time=e.time, data=e.data, source=e.source.name.lower())
                for e in he.events(meter_id, start, end)
            ]

    @r.post("/reads", status_code=202)
    def read(meter_id: MeterId) -> models.Queued:
        """Queue an on-demand read of the meter (AD_HOC priority)."""
        with db() as he:
            return models.Queued(job_id=he.request_read(ReadSpec(meter_id), "api", now_ms()))

    @r.get("/reads/{job_id}")
    def read_status(job_id: models.JobPath) -> models.JobOut:
        with db() as he:
            try:
                return models.job(he.job(job_id))
            except InvalidData:
                raise ApiError(404, "no such read") from None

    @r.get("/activity")
    def activity(
        meter_id: MeterId | None = None,
        since_ms: Annotated[int, Query(ge=0, lt=2**63)] = 0,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[ActivityOut]:
        """The activity log, oldest first (D10: a line is readable as soon as written)."""
        with db() as he:
            return [
                ActivityOut(
                    activity_id=a.activity_id,
                    at_ms=a.at_ms,
                    meter_id=a.meter_id,
                    kind=a.kind,
                    detail=a.detail,
                )
                for a in he.activity(meter_id, (), since_ms, limit)
            ]

    @r.get("/reports/{name}")
    def report(name: ReportName, day: ReportDay = None) -> ReportOut:
        """A registered report (as ``headend report NAME``), built now."""
        # an option a report does not take is left out, as a form leaves out a field
        opts = {"day": day.isoformat()} if day and name in _WITH_DAY else {}
        with db() as he:
            t = he.report(name, now_ms(), **opts)
        return ReportOut(
            title=t.title, columns=list(t.columns), records=t.records(), totals=dict(t.totals)
        )

    @r.get("/export", response_class=StreamingResponse, responses=exporting.RESPONSE)
    def export_(
        request: Request,
        meters: Annotated[str, Query(pattern=models.SELECTION, description=models.SELECTION_TEXT)],
        start: models.Start,
        end: models.End,
        fmt: Annotated[str, Query(pattern="^(csv|json|espi)$")] = "csv",
    ) -> StreamingResponse:
        """Intervals, registers and events of the meters over [start, end), streamed
        (as ``headend export``)."""
        sel = Selection(meters)
        with db() as he:
            unknown = store_exports.missing_ids(he.ctx.db, sel)
            if unknown:
                raise ApiError(404, f"meter {unknown[0]} is not registered")
            ids = list(store_exports.meter_ids(he.ctx.db, sel))
        return exporting.stream(request, fresh, ids, start, end, tz, fmt)

    schedules.add(r, db, now_ms)
    validation.add(r, db, now_ms, tz)
    routine.add(r, db, now_ms, tz.key)
    return r
