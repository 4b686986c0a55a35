"""Who is calling: operators (an API key in ``X-API-Key``, or a browser's session cookie
from ``/login``) and portal parties (their own key in ``X-API-Key``). A missing or wrong
key is one 401 with one message, whatever the reason, so it tells nothing about which
keys or parties exist. Keys are compared as sha256 digests and never logged."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from headend.http.errors import ApiError
from headend.http.store import Opener
from headend.store.apikeys import ApiKeys
from headend.store.parties import Parties, Party

SESSION_COOKIE = "headend_session"
UNAUTHORIZED = "missing or invalid API key"

operator_key = APIKeyHeader(name="X-API-Key", scheme_name="OperatorKey", auto_error=False)
party_key = APIKeyHeader(name="X-API-Key", scheme_name="PartyKey", auto_error=False)


def _denied() -> ApiError:
    return ApiError(401, UNAUTHORIZED, {"WWW-Authenticate": 'APIKey header="X-API-Key"'})


class Browser(ApiError):
    """An unauthenticated browser GET of an operator page: sent to /login."""

    def __init__(self) -> None:
        super().__init__(303, "log in first", {"Location": "/login"})


def operator(db: Opener, now_ms: Callable[[], int]) -> Callable[..., str]:
    """Dependency: the operator's key name, from the header or the session cookie."""

    def check(request: Request, key: str | None = Security(operator_key)) -> str:
        cookie = request.cookies.get(SESSION_COOKIE)
        with db() as he:
            keys = ApiKeys(he.ctx.db)
            name = keys.check(key) if key else None
            if name is None and cookie:
                name = keys.session(cookie, now_ms())
        if name is None:
            if request.method == "GET" and request.url.path.startswith("/operator"):
                raise Browser()
            raise _denied()
        return name

    return check


def party(db: Opener) -> Callable[..., Party]:
    """Dependency: the calling party (read from the store on every request: T05)."""

    def check(request: Request, key: str | None = Security(party_key)) -> Party:
        found = None
        if key:
            with db() as he:
                found = Parties(he.ctx.db).by_key(key)
        if found is None:
            raise _denied()
        request.state.party = found.name
        return found

    return check
