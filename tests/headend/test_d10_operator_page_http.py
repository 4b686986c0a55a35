"""D10 (D02-D08 reports, H03): the operator page over HTTP on a seeded SQLite store:
each page's status and elements, 400 and 404 pages, escaping of store strings."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from headend.api import Headend
from headend.store import open_store
from headend.web.pages import router
from tests.headend.operatorpage import HOSTILE, NOW_S, app, seed_store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note on its httpx client
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('web')) / 'headend.db'}"
    seed_store(url)
    with TestClient(app(url)) as c:
        yield c


@pytest.mark.req("D10", "D06", "H03")
@pytest.mark.timeout(30)
def test_d10_overview_has_plots_reports_routing_and_search(client: TestClient) -> None:
    r = client.get("/operator/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    t = r.text
    assert t.count("<svg") == 2
    assert t.count('class="bar done"') == 2  # two groups: 00:01-00:21 and unscheduled
    assert 'class="line"' in t
    for ident in (
        'id="progress"',
        'id="aging"',
        'id="trouble"',
        'id="routing"',
        'id="groups"',
        'id="filter"',
    ):
        assert ident in t
    assert "1 of 2" in t  # group 00:01-00:21: 1001 complete, 1002 half of yesterday
    assert '<a href="/operator/meters/1001">1001</a>' in t
    assert "<b>1</b>given up (expired)" in t and "<b>1</b>pending (not yet sent)" in t


@pytest.mark.req("D10")
@pytest.mark.timeout(30)
def test_d10_filter_by_meter_and_group(client: TestClient) -> None:
    t = listed(client.get("/operator/", params={"meter": "1002"}).text)
    assert "/operator/meters/1002" in t and "/operator/meters/1001" not in t
    t = listed(client.get("/operator/", params={"group": "unscheduled"}).text)
    assert "/operator/meters/1003" in t and "/operator/meters/1002" not in t
    assert "/operator/meters/" in listed(client.get("/operator/").text)


def listed(page: str) -> str:
    """The search's table of meters in a page."""
    return page.split('id="meters"', 1)[1].split("</table>", 1)[0]


@pytest.mark.req("D10", "D04")
@pytest.mark.timeout(30)
def test_d10_meter_page_has_facts_plots_missing_days_events(client: TestClient) -> None:
    r = client.get("/operator/meters/1002")
    assert r.status_code == 200
    t = r.text
    assert t.count("<svg") == 2  # one plot per channel
    assert "(Wh)" in t and "(varh)" in t
    assert "<td>2024-03-05</td><td>96</td>" in t  # the lost day
    assert "<td>2024-03-08</td><td>48</td>" in t  # half of yesterday
    assert "power_down" in t and 'id="facts"' in t
    assert "<td>key version</td><td>0</td>" in t
    assert "<td>last seen</td><td>2024-03-09 00:02 PST</td>" in t  # report time zone


@pytest.mark.req("D10")
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/operator/meters/99", 404, "no meter 99"),
        ("/operator/meters/x1", 400, "meter id: expected a whole number"),
        ("/operator/meters/99999999999", 400, "meter id: expected a whole number"),
        ("/operator/?meter=abc", 400, "meter id: expected a whole number"),
        ("/operator/?meter=%D9%A1%D9%A2", 400, "meter id: expected a whole number"),
        ("/operator/?group=zz", 400, "read group: no group"),
        ("/operator/?colour=red", 400, "unknown query parameter"),
    ],
)
def test_d10_bad_requests_get_an_html_page(
    client: TestClient, path: str, status: int, says: str
) -> None:
    r = client.get(path)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert says in r.text and "Traceback" not in r.text


@pytest.mark.req("D10")
@pytest.mark.timeout(30)
def test_d10_store_and_query_strings_are_escaped(client: TestClient) -> None:
    pages = [
        client.get("/operator/").text,  # the trouble report's reason
        client.get("/operator/meters/1003").text,  # key id
        client.get("/operator/", params={"meter": HOSTILE}).text,
        client.get("/operator/", params={"group": HOSTILE}).text,
        client.get("/operator/meters/" + HOSTILE.replace("/", "%2F")).text,
    ]
    for t in pages:
        assert "<script>" not in t
    assert "&lt;script&gt;" in pages[0]
    assert "&lt;script&gt;" in pages[1]  # the key id
    assert "&lt;script&gt;" in pages[2]


@pytest.mark.req("D10")
@pytest.mark.timeout(30)
def test_d10_empty_store_overview_still_renders(sqlite_url: str) -> None:
    open_store(sqlite_url, migrate=True).close()
    a = FastAPI()
    a.include_router(router(lambda: Headend.open(sqlite_url), clock=lambda: float(NOW_S)))
    with TestClient(a) as c:
        r = c.get("/operator/")
    assert r.status_code == 200
    assert r.text.count(">no data<") == 1  # no read groups to plot yet
    assert r.text.count('<td colspan="4" class="muted">none</td>') == 2  # trouble, meters


@pytest.mark.req("D10")
@pytest.mark.timeout(30)
def test_d10_a_store_that_cannot_answer_gives_a_503_page_not_a_traceback(tmp_path: Path) -> None:
    gone = f"sqlite:///{tmp_path}/never-made.sqlite"  # no schema: opening it fails
    a = FastAPI()
    a.include_router(router(lambda: Headend.open(gone), clock=lambda: float(NOW_S)))
    with TestClient(a) as c:
        pages = [c.get("/operator/"), c.get("/operator/meters/1001")]
    for r in pages:
        assert r.status_code == 503, r.text
        assert "Store unavailable" in r.text and "Traceback" not in r.text
