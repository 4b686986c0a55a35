"""One JSON shape for every error the API answers: ``{"error": "..."}``; the same bytes
for the same case (T02: a meter not granted reads exactly as one that does not exist)."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from headend.errors import UnknownMeter


class ErrorBody(BaseModel):
    error: str


class ApiError(HTTPException):
    """An answer other than 2xx, with a message meant for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)


NO_METER = "no such meter"


def no_meter() -> ApiError:
    return ApiError(404, NO_METER)


def body(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def on_http(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HTTPException)
    return body(str(e.detail), e.status_code, dict(e.headers or {}))


async def on_invalid(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    first = e.errors()[0] if e.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return body(f"{where}: {first.get('msg', 'invalid')}", 422)


async def on_headend(_: Request, e: Exception) -> JSONResponse:
    # a typed head-end error is the caller's bad input (UnknownMeter: not found)
    if isinstance(e, UnknownMeter):
        return body(NO_METER, 404)
    return body(str(e), 400)
