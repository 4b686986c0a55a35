"""Issue 16: the HTTP API's portal (T01-T06) and operator API (D10), in process
(Starlette's TestClient), with the clock injected so quotas need no waiting."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

with warnings.catch_warnings():
    # starlette asks for its httpx fork; the pinned httpx works (only the import warns)
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from headend.adcs import ondemand
from headend.api import Config, Headend, JobState, Meter, ReadSpec
from headend.http.app import build
from headend.store import Channel, ChannelKind, Unit, open_store
from headend.store.apikeys import ApiKeys
from headend.store.exports import Exports
from headend.store.jobs import AD_HOC, ROUTINE
from headend.store.parties import Parties

T0 = 1_711_929_600  # 2024-04-01 UTC
CH = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)


@dataclass
class Site:
    client: TestClient
    url: str
    party_key: str
    operator_key: str
    now: list[int]

    def portal(self, path: str, method: str = "GET", key: str | None = None) -> httpx.Response:
        r: httpx.Response = self.client.request(
            method, path, headers={"X-API-Key": key or self.party_key}
        )
        return r

    def parties(self) -> Parties:
        return Parties(Headend.open(self.url).ctx.db)


@pytest.fixture
def site(backend: str) -> Iterator[Site]:
    """The portal and operator API over a store of meters 1-3 (SQLite and PostgreSQL)."""
    open_store(backend).close()
    now = [(T0 + 86_400 + 3600) * 1000]
    with Headend.open(backend) as he:
        for m in (1, 2, 3):
            he.ctx.registry.register(Meter(m, "1", 900, 0, 1, CH, T0))
        key = Parties(he.ctx.db).add("acme", "1,2,10-20", 3, 5, now[0])
        op = ApiKeys(he.ctx.db).add("ops", now[0])
    app = build(Config(database=backend), now_ms=lambda: now[0])
    with TestClient(app) as client:
        yield Site(client, backend, key, op, now)


def _same(ra: httpx.Response, rb: httpx.Response) -> None:
    assert ra.status_code == rb.status_code
    assert ra.content == rb.content
    skip = {"date", "x-request-id"}
    ha = {k: v for k, v in ra.headers.items() if k not in skip}
    hb = {k: v for k, v in rb.headers.items() if k not in skip}
    assert ha == hb


@pytest.mark.req("T01", "T02")
@pytest.mark.timeout(20)
def test_t01_t02_foreign_meter_answers_as_a_missing_one(site: Site) -> None:
    q = f"?start={T0}&end={T0 + 86_400}"
    mine = site.portal(f"/portal/v1/meters/1/intervals{q}")
    assert mine.status_code == 200
    assert site.portal("/portal/v1/meters").json() == [1, 2]
    for suffix in (f"/intervals{q}", "/yesterday"):
        foreign = site.portal(f"/portal/v1/meters/3{suffix}")  # exists, not granted
        none = site.portal(f"/portal/v1/meters/15{suffix}")  # granted, does not exist
        never = site.portal(f"/portal/v1/meters/999{suffix}")
        assert foreign.status_code == 404
        _same(foreign, none)
        _same(foreign, never)
    _same(
        site.portal("/portal/v1/meters/3/reads", "POST"),
        site.portal("/portal/v1/meters/99/reads", "POST"),
    )


@pytest.mark.req("T05")
@pytest.mark.timeout(20)
def test_t05_rate_limit_quota_curtail_revoke(site: Site) -> None:
    post = "/portal/v1/meters/1/reads"
    for _ in range(3):
        assert site.portal(post, "POST").status_code == 202
    limited = site.portal(post, "POST")
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "limit" in limited.json()["error"]
    site.now[0] += 61_000  # a minute later: the rate allows again
    assert site.portal(post, "POST").status_code == 202
    assert site.portal(post, "POST").status_code == 202
    site.now[0] += 61_000
    quota = site.portal(post, "POST")  # 5 today: the daily quota is spent
    assert quota.status_code == 429
    assert int(quota.headers["retry-after"]) > 60
    site.now[0] += 86_400_000  # the next day: recovered
    assert site.portal(post, "POST").status_code == 202
    with Headend.open(site.url) as he:
        Parties(he.ctx.db).curtail("acme", 1, None)
        assert Parties(he.ctx.db).use("acme", site.now[0]) == (1, 1)
    assert site.portal(post, "POST").status_code == 429
    with Headend.open(site.url) as he:
        Parties(he.ctx.db).revoke("acme", site.now[0])
    gone = site.portal("/portal/v1/meters")
    nokey = site.client.get("/portal/v1/meters")
    _same(gone, nokey)
    assert gone.status_code == 401


@pytest.mark.req("T03", "D13")
@pytest.mark.timeout(20)
def test_t03_current_is_queued_ad_hoc_and_bulk_export(site: Site) -> None:
    r = site.portal("/portal/v1/meters/1/reads", "POST")
    job_id = r.json()["job_id"]
    with Headend.open(site.url) as he:
        job = he.job(job_id)
        routine_job = ondemand.request_read(he.ctx, ReadSpec(2), "recovery", 0, priority=ROUTINE)
        # the throttle lets one out: the routine job, queued later, goes first (D13)
        (first,) = he.ctx.jobs.claim("w1", site.now[0], max_in_flight=1)
    assert job.priority == AD_HOC and job.state is JobState.QUEUED
    assert first.job_id == routine_job
    status = site.portal(f"/portal/v1/reads/{job_id}").json()
    assert status["state"] == "queued" and status["meter_id"] == 1
    bulk = site.portal(f"/portal/v1/export?start={T0}&end={T0 + 86_400}")
    assert bulk.status_code == 200
    assert bulk.text.startswith("meter,record")
    assert site.portal("/portal/v1/meters/1/yesterday").status_code == 200
    spec = {"name": "daily", "url": "https://acme.example/in", "at": "02:00"}
    made = site.client.post("/portal/v1/periodic", json=spec, headers={"X-API-Key": site.party_key})
    assert made.status_code == 201
    with Headend.open(site.url) as he:
        parties, exports = Parties(he.ctx.db), Exports(he.ctx.db)
        parties.grant("acme", "1")
        (routine,) = exports.schedules()  # run by the service's routine exports (D11)
        assert (routine.name, routine.meters, routine.enabled) == ("portal:acme:daily", "1", True)
        parties.revoke("acme", site.now[0])
        assert not exports.schedules()[0].enabled  # revoked: it stops
    with Headend.open(site.url) as he:
        (logged,) = [r for r in Parties(he.ctx.db).log_rows() if "/export" in r.target]
    # the amount sent: a row per interval slot of its 2 meters (none stored: gaps)
    assert logged.sent_rows == 2 * 96 and logged.bytes == len(bulk.content)


@pytest.mark.req("T04", "T06")
@pytest.mark.timeout(20)
def test_t04_t06_every_request_logged_with_its_size(site: Site) -> None:
    sent = [
        site.portal("/portal/v1/meters"),
        site.portal("/portal/v1/meters/3/yesterday?channel=0"),
        site.portal("/portal/v1/meters", key="wrong-key"),
    ]
    with Headend.open(site.url) as he:
        rows = Parties(he.ctx.db).log_rows()
    assert [(r.party, r.method, r.target, r.status) for r in rows] == [
        ("acme", "GET", "/portal/v1/meters", 200),
        ("acme", "GET", "/portal/v1/meters/3/yesterday?channel=0", 404),
        ("-", "GET", "/portal/v1/meters", 401),
    ]
    for row, resp in zip(rows, sent, strict=True):
        assert row.bytes == len(resp.content)
        assert row.request_id == resp.headers["x-request-id"]
    assert "wrong-key" not in repr(rows) and site.party_key not in repr(rows)


@pytest.mark.req("D10")
@pytest.mark.timeout(20)
def test_d10_activity_available_at_once(site: Site) -> None:
    h = {"X-API-Key": site.operator_key}
    job = site.client.post("/api/v1/reads?meter_id=2", headers=h).json()["job_id"]
    lines = site.client.get("/api/v1/activity?meter_id=2", headers=h).json()
    assert any(f"job {job}" in line["detail"] for line in lines)
    assert site.client.get("/api/v1/activity").status_code == 401
    period = f"start={T0}&end={T0 + 86_400}"
    csv = site.client.get(f"/api/v1/export?meters=1-3&{period}", headers=h)
    assert csv.status_code == 200 and csv.text.startswith("meter,record")
    assert site.client.get(f"/api/v1/export?meters=7&{period}", headers=h).status_code == 404
    assert site.client.get("/api/v1/meters", headers={"X-API-Key": "x"}).status_code == 401


@pytest.mark.req("T05")
@pytest.mark.timeout(20)
def test_t05_login_gives_a_strict_http_only_session_cookie(site: Site) -> None:
    refused = site.client.post("/login", data={"key": "nope"}, follow_redirects=False)
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    r = site.client.post("/login", data={"key": site.operator_key}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/operator"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    token = r.cookies["headend_session"]
    assert token != site.operator_key
    site.client.cookies.set("headend_session", token)
    assert site.client.get("/api/v1/meters").status_code == 200  # the cookie is enough
    with Headend.open(site.url) as he:
        stored = [tuple(x) for x in he.ctx.db.query("SELECT * FROM api_session")]
        ApiKeys(he.ctx.db).revoke("ops", site.now[0])
    assert token not in repr(stored)  # hashed
    assert site.client.get("/api/v1/meters").status_code == 401  # revoked: the session too


@pytest.mark.req("D10")
@pytest.mark.timeout(20)
def test_d10_operator_pages_mounted_behind_login(site: Site) -> None:
    with TestClient(build(Config(database=site.url))) as c:
        away = c.get("/operator/", follow_redirects=False)
        assert away.status_code == 303 and away.headers["location"] == "/login"
        wrong = c.post("/login", data={"key": "not-a-key"}, follow_redirects=False)
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert c.get("/operator/", follow_redirects=False).status_code == 303
        c.post("/login", data={"key": site.operator_key}, follow_redirects=False)
        home = c.get("/operator/")
        assert home.status_code == 200 and "<svg" in home.text, home.text[:500]
        assert c.get("/operator/meters/99999999").status_code == 404  # the real pages
        assert "/operator/" not in c.get("/openapi.json").text
