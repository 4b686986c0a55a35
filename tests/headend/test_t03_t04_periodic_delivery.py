"""Issue 16, T03/T04 end to end: a party's periodic export, made over the portal's HTTP
API, is run by the service's routine exports (D11) on its clock, POSTed over HTTPS to the
party's receiver with only the party's meters and the period, and logged in the party's
request log with the amount sent; once the party is revoked, the next due run sends
nothing."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from headend.api import Config
from headend.context import Ctx
from headend.core import Core
from headend.http.app import build
from headend.pki import init as pki_init
from headend.store import SqlStore
from headend.store.base import DAY_S
from headend.store.exports import Exports
from headend.store.parties import Parties
from tests.headend.conftest import open_at
from tests.headend.exportdata import SPRING, midnights, register, seed
from tests.headend.receiver import Receiver

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette asks for its httpx fork (import warning)
    from starlette.testclient import TestClient

pytestmark = pytest.mark.req("T03", "T04", "D11")

TZ = "America/Los_Angeles"
NEXT_DAY = SPRING + 23 * 3600  # 2024-03-11 00:00 PDT: the export covers 2024-03-10
AT_RUN_MS = (NEXT_DAY + 2 * 3600 + 1800) * 1000  # 02:30 local, after the 02:00 run time
WAIT_S = 15


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """The party's HTTPS receiver (a test CA's certificate, trusted by the service's
    POST through SSL_CERT_FILE); it refuses the first POST."""
    pki, _ = pki_init(tmp_path / "pki", ("127.0.0.1",))
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    r = Receiver(fail=1, tls=(pki.server_cert, pki.server_key))
    yield r
    r.close()


@pytest.fixture
def ctx(backend: str, store_at: list[SqlStore]) -> Ctx:
    """Meters 1-3 with two days of data; the party acme is granted 1 and 2."""
    s = open_at(backend, store_at)
    for mid in (1, 2, 3):
        register(s, mid, SPRING - DAY_S)
        seed(s, mid, SPRING - DAY_S, SPRING + 2 * DAY_S)
        midnights(s, mid, [SPRING, SPRING + DAY_S])
    return Ctx.build(Config(database=backend, worker="w1", report_tz=TZ), s)


def _run(core: Core, now_ms: int) -> None:
    core.tick(now_ms)
    assert core.exports.wait(WAIT_S)


@pytest.mark.timeout(60)
def test_t03_t04_periodic_export_delivered_over_https_and_logged_with_its_size(
    ctx: Ctx, receiver: Receiver
) -> None:
    url = ctx.config.database
    now = [AT_RUN_MS - 86_400_000]
    key = Parties(ctx.db).add("acme", "1,2", 10, 100, now[0])
    app = build(Config(database=url, report_tz=TZ), now_ms=lambda: now[0])
    spec = {"name": "daily", "url": receiver.url, "at": "02:00", "fmt": "csv"}
    with TestClient(app) as client:
        made = client.post("/portal/v1/periodic", json=spec, headers={"X-API-Key": key})
    assert made.status_code == 201 and made.json() == {"name": "portal:acme:daily"}
    core = Core(ctx)
    core.exports.check_every_ms = 0
    core.exports.retry_ms = 60_000
    try:
        _run(core, AT_RUN_MS)  # due: the receiver refuses it (503)
        (failed,) = Exports(ctx.db).runs()
        assert failed.state == "failed" and failed.next_ms is not None
        _run(core, failed.next_ms)  # the retry is delivered
        (run,) = Exports(ctx.db).runs()
        assert run.state == "done" and run.target == receiver.url
        ((ctype, body),) = receiver.bodies
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert ctype.startswith("text/csv") and run.size == len(body)
        assert {r["meter"] for r in rows} == {"1", "2"}  # meter 3 is not the party's
        intervals = [r for r in rows if r["record"] == "interval"]
        assert len(intervals) == 2 * 92 * 2  # meters x slots of the 23-hour day x channels
        assert {r["start"][:10] for r in intervals} == {"2024-03-10"}  # the day before
        made_row, *logged = Parties(ctx.db).log_rows("acme")
        assert (made_row.target, made_row.status) == ("/portal/v1/periodic", 201)
        assert [(r.method, r.target, r.status, r.bytes, r.sent_rows) for r in logged] == [
            ("POST", receiver.url, 502, 0, None),  # refused: nothing sent
            ("POST", receiver.url, 200, len(body), run.rows),
        ]
        assert [r.request_id for r in logged] == [
            f"export:{run.period}:1",
            f"export:{run.period}:2",
        ]  # fmt: skip
        assert key not in repr(logged)

        Parties(ctx.db).revoke("acme", run.done_ms or AT_RUN_MS)
        _run(core, AT_RUN_MS + 86_400_000)  # the next day's run is due: nothing goes
    finally:
        core.exports.close()
    assert len(receiver.bodies) == 1
    assert [r.period for r in Exports(ctx.db).runs()] == [run.period]
    assert len(Parties(ctx.db).log_rows("acme")) == 3
