"""Routine exports in the operator API (D11), as ``headend exports add|list|remove|run|runs``:
the same checks (`routine_schedule`) and store (`Exports`).

A party's periodic export (the portal's ``POST /periodic``) is a routine export named
``portal:PARTY:NAME``. The operator sees those in the list and their runs, and may
remove one (a party's export gone wrong); it cannot create or replace one here: a
name given to PUT has no ``:``, so the operator never makes an export that passes for
a party's (whose meters follow the party's grants)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from headend.adcs.exports import routine_schedule
from headend.http import models
from headend.http.errors import ApiError, ErrorBody
from headend.http.store import Opener
from headend.redact import redact
from headend.store.exports import ExportRun, Exports, ExportSchedule

#: names the operator gives; ``:`` is kept for the parties' ``portal:PARTY:NAME``
OwnName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
AnyName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]
_PART = "intervals|registers|events"
#: some of intervals, registers, events (at least one), and validation if wanted
WHAT = f"^(validation,)*({_PART})(,({_PART}|validation))*$"
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no routine export of that name"}
}


class RoutineIn(BaseModel):
    meters: Annotated[str, Field(pattern=models.SELECTION, description=models.SELECTION_TEXT)]
    to: Annotated[
        str,
        Field(
            pattern=r"^https://[!-~]{1,500}$",  # ASCII: ``\S`` differs in JSON Schema
            description="an https:// URL that receives each run as a POST. A directory of "
            "the head-end's host is set only from the host (`headend exports add`): a key "
            "holder over the network never picks where the service writes files",
        ),
    ]
    what: Annotated[str, Field(pattern=WHAT)] = "intervals,registers,events"
    fmt: Annotated[str, Field(pattern="^(csv|json|espi)$")] = "csv"
    tz: Annotated[
        str | None, Field(max_length=64, description="IANA zone of the output and of at")
    ] = None
    at: Annotated[
        str, Field(pattern="^([01][0-9]|2[0-3]):[0-5][0-9]$", description="local HH:MM")
    ] = "02:00"
    every_days: Annotated[int, Field(ge=1, le=366)] = 1
    days: Annotated[int, Field(ge=1, le=366, description="the N local days before")] = 1


class RunIn(BaseModel):
    start: Annotated[int, Field(ge=0, lt=2**32, description="UTC s, inclusive")]
    end: Annotated[int, Field(ge=0, lt=2**32, description="UTC s, exclusive; after start")]


class QueuedRun(BaseModel):
    name: str
    period: int


def _shown(text: str | None) -> str | None:
    return None if text is None else redact(text)


def add(r: APIRouter, db: Opener, now_ms: Callable[[], int], report_tz: str) -> None:
    """The routine export endpoints, on the operator router ``r``."""

    def known(ex: Exports, name: str) -> None:
        if not any(s.name == name for s in ex.schedules()):
            raise ApiError(404, f"no routine export named {name!r}")

    @r.get("/exports/routine")
    def routines() -> list[ExportSchedule]:
        """The routine exports, the parties' periodic ones too (a URL's password shown
        as ``***``)."""
        with db() as he:
            rows = Exports(he.ctx.db).schedules()
        return [replace(s, destination=redact(s.destination)) for s in rows]

    @r.put("/exports/routine/{name}")
    def put_routine(name: OwnName, body: RoutineIn) -> ExportSchedule:
        """Add or replace a routine export (as ``headend exports add``, to an https://
        URL only); its runs are kept. A zone that is not IANA is a 400."""
        s = routine_schedule(
            name, body.meters, body.what, body.fmt, body.tz or report_tz, body.at,
            body.every_days, body.days, body.to,
        )  # fmt: skip
        with db() as he:
            Exports(he.ctx.db).put(s, now_ms())
        return replace(s, destination=redact(s.destination))

    @r.delete("/exports/routine/{name}", status_code=204, responses=_NOT_FOUND)
    def remove_routine(name: AnyName) -> None:
        """Remove a routine export and its runs (a party's periodic one too)."""
        with db() as he:
            if not Exports(he.ctx.db).remove(name):
                raise ApiError(404, f"no routine export named {name!r}")

    @r.get("/exports/routine/{name}/runs", responses=_NOT_FOUND)
    def runs(name: AnyName, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[ExportRun]:
        """The export's runs, newest first: state, attempts, size, target or error (a
        URL's password shown as ``***``)."""
        with db() as he:
            ex = Exports(he.ctx.db)
            known(ex, name)
            found = ex.runs(name, limit)
        return [replace(x, target=_shown(x.target), error=_shown(x.error)) for x in found]

    @r.post("/exports/routine/{name}/runs", status_code=202, responses=_NOT_FOUND)
    def queue_run(name: AnyName, body: RunIn) -> QueuedRun:
        """Queue an ad-hoc run over [start, end) (as ``headend exports run``): the service
        runs it after its routine work (D13). An end not after start is a 400."""
        if body.end <= body.start:
            raise ApiError(400, "end must be after start")
        with db() as he:
            ex = Exports(he.ctx.db)
            known(ex, name)
            return QueuedRun(name=name, period=ex.queue(name, body.start, body.end, now_ms()))
