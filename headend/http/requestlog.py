"""T04: every portal request is logged (party, method, exact path and query, status,
bytes of the response body, duration, request id) and the request id is returned in
``X-Request-Id``. Plain ASGI middleware, so streamed bodies are counted as sent."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headend.http.store import Opener
from headend.store.parties import LogRow, Parties

PREFIX = "/portal"


class RequestLog:
    def __init__(self, app: ASGIApp, db: Opener, now_ms: Callable[[], int]) -> None:
        self.app, self.db, self.now_ms = app, db, now_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        started, at_ms = time.monotonic(), self.now_ms()
        seen = {"status": 500, "bytes": 0}
        scope.setdefault("state", {})

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            state = scope["state"]
            query = scope.get("query_string", b"").decode("latin-1")
            row = LogRow(
                at_ms,
                str(state.get("party", "-")),  # "-": no valid key
                str(scope["method"]),
                str(scope["path"]) + (f"?{query}" if query else ""),
                seen["status"],
                seen["bytes"],
                int((time.monotonic() - started) * 1000),
                rid,
                state.get("sent_rows"),
            )
            await anyio.to_thread.run_sync(self._write, row)

    def _write(self, row: LogRow) -> None:
        with self.db() as he:
            Parties(he.ctx.db).log(row)
