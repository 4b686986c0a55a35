"""Issue 16: the operator API does what the CLI does: set and cancel schedules (H07,
logged: D10), run a validation (D14), manage routine exports (D11), in process
(Starlette's TestClient) over a store of meters 1-3."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette asks for its httpx fork; the pin works
    from starlette.testclient import TestClient

from headend.api import Config, Headend, Meter
from headend.http.app import build
from headend.store import Channel, ChannelKind, Unit, open_store
from headend.store.apikeys import ApiKeys
from headend.store.exports import Exports, ExportSchedule

T0 = 1_711_929_600  # 2024-04-01 UTC
CH = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)


@dataclass
class Api:
    client: TestClient
    url: str
    key: str

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        r: httpx.Response = self.client.request(
            method, f"/api/v1{path}", json=body, headers={"X-API-Key": self.key}
        )
        return r


@pytest.fixture
def api(backend: str) -> Iterator[Api]:
    """The operator API over meters 1-3 (SQLite and PostgreSQL)."""
    open_store(backend).close()
    now = (T0 + 86_400) * 1000
    with Headend.open(backend) as he:
        for m in (1, 2, 3):
            he.ctx.registry.register(Meter(m, "1", 900, 0, 1, CH, T0))
        key = ApiKeys(he.ctx.db).add("ops", now)
    with TestClient(build(Config(database=backend), now_ms=lambda: now)) as client:
        yield Api(client, backend, key)


@pytest.mark.req("H07", "D10")
@pytest.mark.timeout(20)
def test_h07_d10_schedule_set_listed_logged_then_cancelled(api: Api) -> None:
    body = {"meter_id": 2, "slot": 1, "every": "1h", "at": "15m", "source": "billing"}
    r = api.call("POST", "/schedules", body)
    assert r.status_code == 202, r.text
    got = r.json()
    assert (got["slot"], got["period_s"], got["offset_s"], got["state"]) == (
        1,
        3600,
        900,
        "pending",
    )
    listed = api.call("GET", "/schedules?meter_id=2").json()
    assert [(s["slot"], s["period_s"], s["source"]) for s in listed] == [(1, 3600, "billing")]
    log = api.call("GET", "/activity?meter_id=2").json()
    assert any(a["kind"] == "schedule_set" and "source billing" in a["detail"] for a in log)

    r = api.call("POST", "/schedules", {**body, "every": "30m"})  # an update of the slot
    assert r.status_code == 202 and r.json()["period_s"] == 1800
    gone = api.call("DELETE", "/schedules/2/1?source=billing")
    assert gone.status_code == 202 and gone.json()["cancel"] is True
    assert api.call("DELETE", "/schedules/2/2?source=billing").status_code == 404  # never set
    assert api.call("DELETE", "/schedules/9/1?source=billing").status_code == 404


@pytest.mark.req("H07")
@pytest.mark.timeout(20)
def test_h07_bad_schedules_are_refused_with_a_message(api: Api) -> None:
    ok = {"meter_id": 1, "slot": 1, "every": "1h", "source": "billing"}
    cases = [
        ({"slot": 4}, 422, "slot"),
        ({"slot": 0}, 422, "slot"),
        ({"every": "fast"}, 422, "every"),
        ({"every": "5m"}, 400, "shorter than meter 1's 900 s interval"),
        ({"every": "24h"}, 400, "more than once a day"),
        ({"at": "2h"}, 400, "offset_s"),
        ({"start": T0 + 10, "end": T0}, 400, "after start"),
        ({"meter_id": 99}, 404, "no such meter"),
    ]
    for change, status, words in cases:
        r = api.call("POST", "/schedules", {**ok, **change})
        assert r.status_code == status, (change, r.text)
        assert words in r.json()["error"], (change, r.text)
    assert api.call("GET", "/schedules").json() == []  # nothing was written


@pytest.mark.req("D14")
@pytest.mark.timeout(20)
def test_d14_validation_run_over_the_api_is_stored(api: Api) -> None:
    body = {"meters": "1-2", "start": T0, "end": T0 + 86_400, "tz": "UTC"}
    r = api.call("POST", "/validation", body)
    assert r.status_code == 200, r.text
    run = r.json()
    assert {x["meter_id"] for x in run["results"]} == {1, 2}
    assert sum(run["totals"].values()) == len(run["results"]) > 0
    stored = api.call("GET", "/validation").json()
    key = ("meter_id", "check", "status", "start", "end")
    assert sorted(tuple(x[k] for k in key) for x in stored) == sorted(
        tuple(x[k] for k in key) for x in run["results"]
    )
    for change, status in (
        ({"meters": "7"}, 404),
        ({"meters": "2-1"}, 400),
        ({"meters": "bogus"}, 422),
        ({"end": T0}, 400),
        ({"tz": "Mars/Base"}, 400),
        ({"low": 2}, 422),
    ):
        bad = api.call("POST", "/validation", {**body, **change})
        assert bad.status_code == status and bad.json()["error"], (change, bad.text)


@pytest.mark.req("D11")
@pytest.mark.timeout(20)
def test_d11_routine_export_added_listed_runs_removed(api: Api, tmp_path: Path) -> None:
    to = "https://mdm.example/in"
    body = {"meters": "1-3", "to": to, "at": "03:00", "tz": "Europe/Paris"}
    r = api.call("PUT", "/exports/routine/nightly", body)
    assert r.status_code == 200, r.text
    assert (r.json()["tz"], r.json()["at"], r.json()["destination"]) == (
        "Europe/Paris",
        "03:00",
        to,
    )
    secret = {**body, "to": "https://bill:hunter2@mdm.example/in"}
    assert api.call("PUT", "/exports/routine/posted", secret).status_code == 200
    with Headend.open(api.url) as he:  # a party's periodic one, as the portal makes it
        Exports(he.ctx.db).put(
            ExportSchedule("portal:acme:daily", "1", "intervals", "csv", "UTC", "01:00", 1, 1,
                           "https://acme.example/in"), T0 * 1000,
        )  # fmt: skip
    queued = api.call("POST", "/exports/routine/nightly/runs", {"start": T0, "end": T0 + 86_400})
    assert queued.status_code == 202 and queued.json()["name"] == "nightly", queued.text
    backwards = {"start": T0, "end": T0}
    assert api.call("POST", "/exports/routine/nightly/runs", backwards).status_code == 400
    assert api.call("POST", "/exports/routine/nope/runs", {"start": 0, "end": 1}).status_code == 404
    listed = api.call("GET", "/exports/routine")
    assert [s["name"] for s in listed.json()] == ["nightly", "portal:acme:daily", "posted"]
    assert "hunter2" not in listed.text  # a URL's password never leaves
    runs = api.call("GET", "/exports/routine/nightly/runs").json()
    assert [(x["state"], x["attempts"]) for x in runs] == [("queued", 0)]
    assert api.call("GET", "/exports/routine/nope/runs").status_code == 404
    assert api.call("DELETE", "/exports/routine/portal:acme:daily").status_code == 204
    assert api.call("PUT", "/exports/routine/portal:acme:x", body).status_code == 422
    assert api.call("DELETE", "/exports/routine/nightly").status_code == 204
    assert api.call("DELETE", "/exports/routine/nightly").status_code == 404
    assert [s["name"] for s in api.call("GET", "/exports/routine").json()] == ["posted"]
    for change, status in (
        ({"to": str(tmp_path)}, 422),  # a directory: only from the host's CLI
        ({"to": "http://mdm.example/in"}, 422),  # nothing in clear
        ({"tz": "Nowhere/City"}, 400),
        ({"what": "validation"}, 422),
        ({"at": "25:00"}, 422),
    ):
        bad = api.call("PUT", "/exports/routine/other", {**body, **change})
        assert bad.status_code == status and bad.json()["error"], (change, bad.text)


@pytest.mark.req("D10")
@pytest.mark.timeout(20)
def test_d10_write_endpoints_need_an_operator_key(api: Api, tmp_path: Path) -> None:
    calls = [
        ("POST", "/schedules", {"meter_id": 1, "slot": 1, "every": "1h", "source": "x"}),
        ("DELETE", "/schedules/1/1?source=x", None),
        ("POST", "/validation", {"meters": "1", "start": T0, "end": T0 + 900}),
        ("GET", "/exports/routine", None),
        ("PUT", "/exports/routine/a", {"meters": "1", "to": "https://mdm.example/in"}),
        ("DELETE", "/exports/routine/a", None),
        ("GET", "/exports/routine/a/runs", None),
        ("POST", "/exports/routine/a/runs", {"start": 0, "end": 1}),
    ]
    for key in (None, "not-a-key"):
        headers = {"X-API-Key": key} if key else {}
        for method, path, body in calls:
            r = api.client.request(method, f"/api/v1{path}", json=body, headers=headers)
            assert r.status_code == 401, (method, path, r.text)
    with Headend.open(api.url) as he:  # nothing was written
        assert he.schedules() == [] and Exports(he.ctx.db).schedules() == []


@pytest.mark.req("D10")
@pytest.mark.timeout(20)
def test_d10_a_channel_or_report_that_is_not_there_is_said_so(api: Api) -> None:
    period = f"start={T0}&end={T0 + 86_400}"
    lacks = api.call("GET", f"/meters/1/intervals?{period}&channel=9")
    assert lacks.status_code == 404 and lacks.json() == {"error": "meter 1 has no channel 9"}
    assert api.call("GET", f"/meters/1/intervals?{period}").json() == []
    unknown = api.call("GET", "/reports/nonesuch")
    assert unknown.status_code == 422 and "missing" in unknown.json()["error"]
    assert api.call("GET", "/reports/aging?day=2024-04-01").status_code == 200  # no day: ignored
    missing = api.call("GET", "/reports/missing?day=2024-04-01")
    assert missing.status_code == 200 and missing.json()["columns"]
    assert api.call("GET", "/reports/missing?day=2024-02-30").status_code == 422
