"""Exports over HTTP, for the operator API and the portal alike: the existing exporter
(`headend.mdms.export`, CSV / JSON / ESPI) streamed a meter-day at a time on its own
connection, and the rows sent recorded for the request log (T04)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import StreamingResponse

from headend.http.store import Opener
from headend.mdms import export
from headend.store.exports import for_streaming

MEDIA = {"csv": "text/csv", "json": "application/json", "espi": "application/atom+xml"}
#: the OpenAPI description of a streamed export's 200
RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {m: {} for m in MEDIA.values()}, "description": "the export"}
}


def stream(
    request: Request,
    fresh: Opener,
    meters: Sequence[int],
    start: int,
    end: int,
    tz: ZoneInfo,
    fmt: str,
    what: tuple[str, ...] = export.WHAT,
) -> StreamingResponse:
    """The export of ``meters`` over [start, end) as a streamed response. Raises
    InvalidData (a 400) for a bad period, format or record kind, before any byte."""
    req = export.Request(meters, start, end, tz, fmt=fmt, what=what, total=len(meters))
    counts = export.Counts()

    def pieces() -> Iterator[bytes]:
        with fresh() as he:  # its own connection: the pieces move between threads
            for_streaming(he.ctx.store.db)
            for p in export.pieces(he.ctx.store, req, counts):
                yield p.encode()
        request.state.sent_rows = counts.rows  # T04: the amount sent

    return StreamingResponse(pieces(), media_type=MEDIA[fmt])
