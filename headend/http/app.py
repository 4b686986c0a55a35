"""The app factory: operator API, portal, ``/login`` for browsers, and the operator
pages (`headend.web.pages`) under ``/operator`` behind the operator login. ``now_ms``
is the clock seam (tests drive quotas, sessions and the pages' "today" with it)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException

from headend.config import Config
from headend.errors import HeadendError
from headend.http import auth, errors, operator, portal
from headend.http.requestlog import RequestLog
from headend.http.store import Opener, Pool, opener
from headend.store.apikeys import ApiKeys
from headend.web import pages

SESSION_MS = 8 * 3600 * 1000
_LOGIN_FORM = (
    "<!doctype html><title>Log in</title><form method=post action=/login>"
    "<label>API key <input type=password name=key autocomplete=off></label>"
    "<button>Log in</button></form>"
)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def build(
    config: Config, *, now_ms: Callable[[], int] = wall_ms, db: Opener | None = None
) -> FastAPI:
    """The API app over ``config``'s database."""
    pool: Pool | None = None
    if db is None:
        db = pool = Pool(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if pool is not None:
            pool.close()

    app = FastAPI(
        title="AMI head-end API", version="1", docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.add_exception_handler(HTTPException, errors.on_http)
    app.add_exception_handler(RequestValidationError, errors.on_invalid)
    app.add_exception_handler(HeadendError, errors.on_headend)
    app.add_middleware(RequestLog, db=db, now_ms=now_ms)
    who = auth.operator(db, now_ms)
    tz, fresh = ZoneInfo(config.report_tz), opener(config)
    app.include_router(operator.router(db, fresh, now_ms, tz, who))
    app.include_router(portal.router(db, fresh, now_ms, tz))
    _login(app, db, now_ms)
    app.include_router(pages.router(db, clock=lambda: now_ms() / 1000), dependencies=[Depends(who)])
    return app


def _login(app: FastAPI, db: Opener, now_ms: Callable[[], int]) -> None:
    @app.get("/login", include_in_schema=False)
    def form() -> HTMLResponse:
        return HTMLResponse(_LOGIN_FORM)

    def session(key: str) -> str:
        with db() as he:
            keys = ApiKeys(he.ctx.db)
            name = keys.check(key)
            if name is None:
                raise errors.ApiError(401, auth.UNAUTHORIZED)
            return keys.open_session(name, now_ms(), SESSION_MS)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> RedirectResponse:
        # a url-encoded form, parsed here (no multipart dependency for one field)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = await anyio.to_thread.run_sync(session, (form.get("key") or [""])[0])
        out = RedirectResponse("/operator", status_code=303)
        out.set_cookie(
            auth.SESSION_COOKIE,
            token,
            max_age=SESSION_MS // 1000,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return out
