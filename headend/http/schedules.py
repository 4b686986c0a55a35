"""Non-default read schedules in the operator API (H07), as ``headend schedule
set|list|cancel``: the same parsing (`scheduling.spec_of`) and the same store
calls, so a slot set here is pending until the service sends it, and logged with its
source in the activity log (D10)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from headend.adcs import scheduling
from headend.api import Headend, InvalidData, Schedule
from headend.http.errors import ApiError, ErrorBody
from headend.http.store import Opener
from protocol.codes import WHAT_ALL

MeterId = Annotated[int, Query(ge=0, lt=2**32)]
Slot = Annotated[
    int, Field(ge=1, le=3, description="a non-default slot: 1-3 (0 is the daily read)")
]
#: printable ASCII without spaces (``\S`` is not the same set in Python and JSON Schema)
SOURCE = r"^[!-~]{1,64}$"
Source = Annotated[str, Field(pattern=SOURCE, description="the system or party asking (logged)")]
_DURATION = r"[0-9]{1,5}[smh]?"
#: what a pattern cannot say: checked against the meter and each other when set
_RULES = (
    "every: at least the meter's interval and under a day; at: under every; end: 0 or "
    "after start. A rule broken is a 400 that says which."
)


class ScheduleIn(BaseModel):
    meter_id: Annotated[int, Field(ge=0, lt=2**32)]
    slot: Slot
    every: Annotated[
        str, Field(pattern=f"^{_DURATION}$", description="period: 900, 15m, 1h", examples=["1h"])
    ]
    at: Annotated[
        str,
        Field(
            pattern=f"^({_DURATION}|([01][0-9]|2[0-3]):[0-5][0-9])$",
            description="offset in the period: a duration (5m), or HH:MM from local midnight",
        ),
    ] = "0"
    start: Annotated[int, Field(ge=0, lt=2**32, description="UTC s; 0: now")] = 0
    end: Annotated[int, Field(ge=0, lt=2**32, description="UTC s, exclusive; 0: ongoing")] = 0
    what: Annotated[int, Field(ge=1, le=WHAT_ALL, description="what to send (bits)")] = WHAT_ALL
    source: Source


class ScheduleOut(BaseModel):
    meter_id: int
    slot: int
    period_s: int
    offset_s: int
    start: int
    end: int
    what: int
    cancel: bool
    source: str
    state: str
    requested_ms: int
    acked_ms: int | None


def _out(s: Schedule) -> ScheduleOut:
    p = s.spec
    return ScheduleOut(
        meter_id=p.meter_id, slot=p.slot, period_s=p.period_s, offset_s=p.offset_s,
        start=p.start, end=p.end, what=p.what, cancel=p.cancel, source=s.source,
        state=str(s.state.value), requested_ms=s.requested_ms, acked_ms=s.acked_ms,
    )  # fmt: skip


def _slot(he: Headend, meter_id: int, slot: int) -> ScheduleOut:
    return next(_out(s) for s in he.schedules(meter_id) if s.spec.slot == slot)


_NO_METER: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such meter"}
}


def add(r: APIRouter, db: Opener, now_ms: Callable[[], int]) -> None:
    """The schedule endpoints, on the operator router ``r``."""

    @r.get("/schedules")
    def schedules(meter_id: MeterId | None = None) -> list[ScheduleOut]:
        """Schedules and how far each got (as ``headend schedule list``)."""
        with db() as he:
            return [_out(s) for s in he.schedules(meter_id)]

    @r.post("/schedules", status_code=202, responses=_NO_METER, description=_RULES)
    def set_schedule(body: ScheduleIn) -> ScheduleOut:
        """Set or update slot 1-3 of a meter (as ``headend schedule set``): pending until
        the service sends it; logged with ``source``."""
        # parsed before the store is opened: an error there never drops a pooled connection
        spec = scheduling.spec_of(
            body.meter_id, body.slot, body.every, body.at, body.start, body.end, body.what
        )
        with db() as he:
            he.set_schedule(spec, body.source, now_ms())
            return _slot(he, body.meter_id, body.slot)

    @r.delete(
        "/schedules/{meter_id}/{slot}",
        status_code=202,
        responses={404: {"model": ErrorBody, "description": "no such meter, or slot not set"}},
    )
    def cancel_schedule(
        meter_id: Annotated[int, Path(ge=0, lt=2**32)],
        slot: Annotated[int, Path(ge=1, le=3)],
        source: Annotated[str, Query(pattern=SOURCE, description="logged")],
    ) -> ScheduleOut:
        """Cancel slot 1-3 (as ``headend schedule cancel``): pending until sent."""
        with db() as he:
            he.meter(meter_id)
            try:
                scheduling.cancel_schedule(he.ctx, meter_id, slot, source, now_ms())
            except InvalidData as e:  # the one rule left: the slot was never set
                raise ApiError(404, str(e)) from None
            return _slot(he, meter_id, slot)
