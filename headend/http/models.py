"""Response bodies of the API (what the OpenAPI spec promises)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel

from headend.api import Headend, Interval, Job, MidnightRegister
from headend.http.errors import ApiError

MeterPath = Annotated[int, Path(ge=0, lt=2**32)]
JobPath = Annotated[int, Path(ge=0, lt=2**62)]
Start = Annotated[int, Query(ge=0, lt=2**32, description="UTC seconds, inclusive")]
End = Annotated[int, Query(ge=0, lt=2**32, description="UTC seconds, exclusive")]
Channel = Annotated[int, Query(ge=0, lt=256)]
#: a meter selection (`headend.store.exports.Selection`): all, group:N, or ids and ranges;
#: a range runs upwards (10-20), which a pattern cannot say: 20-10 is a 400
SELECTION = r"^(all|group:[0-9]{1,9}|[0-9]{1,9}(-[0-9]{1,9})?(,[0-9]{1,9}(-[0-9]{1,9})?)*)$"
SELECTION_TEXT = "all, group:N, or ids and ranges 1,2,10-20"


class MeterOut(BaseModel):
    meter_id: int
    interval_s: int


class IntervalOut(BaseModel):
    start: int
    value: int
    flags: int
    source: str


class RegisterOut(BaseModel):
    day: int
    values: list[int]
    source: str


class JobOut(BaseModel):
    job_id: int
    meter_id: int
    state: str
    priority: int
    created_ms: int
    done_ms: int | None
    result: str | None


class Queued(BaseModel):
    job_id: int


def interval(i: Interval) -> IntervalOut:
    return IntervalOut(start=i.start, value=i.value, flags=i.flags, source=i.source.name.lower())


def job(j: Job) -> JobOut:
    return JobOut(
        job_id=j.job_id,
        meter_id=j.spec.meter_id,
        state=str(j.state.value),
        priority=j.priority,
        created_ms=j.created_ms,
        done_ms=j.done_ms,
        result=j.result,
    )


def register(r: MidnightRegister) -> RegisterOut:
    return RegisterOut(day=r.day, values=list(r.values), source=r.source.name.lower())


def intervals(he: Headend, meter_id: int, channel: int, start: int, end: int) -> list[IntervalOut]:
    """The meter's stored intervals of ``channel`` in [start, end); a channel it does not
    have is a 404, as a meter that is not there (`UnknownMeter`)."""
    if channel >= len(he.meter(meter_id).channels):
        raise ApiError(404, f"meter {meter_id} has no channel {channel}")
    return [interval(i) for i in he.intervals(meter_id, channel, start, end)]
