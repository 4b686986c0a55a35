"""D11 exports: a set of meters, CSV / JSON / Green Button ESPI, DST-exact, streamed."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from headend.cli import main
from headend.mdms import espi, export
from headend.store import Source, SqlStore
from headend.store.base import DAY_S
from protocol.codes import Flag
from tests.headend.conftest import open_at
from tests.headend.exportdata import FALL, LA, SPRING, STEP, event, midnights, register, seed, value

NS = {"a": espi.ATOM, "espi": espi.ESPI, "ami": espi.AMI}
pytestmark = pytest.mark.req("D11")


@pytest.fixture
def store(backend: str, store_at: list[SqlStore]) -> SqlStore:
    """Meters 1 and 2 with both DST days of 2024 in Los Angeles (and the days around)."""
    s = open_at(backend, store_at)
    for mid in (1, 2):
        register(s, mid, SPRING - DAY_S)
        for lo in (SPRING, FALL):
            seed(s, mid, lo - DAY_S, lo + 2 * DAY_S)
    return s


def text(s: SqlStore, req: export.Request) -> str:
    out = io.StringIO()
    export.write(s, req, out)
    return out.getvalue()


def req(lo: int, hi: int, fmt: str, meters: tuple[int, ...] = (1,), what: str = "intervals"
        ) -> export.Request:  # fmt: skip
    return export.Request(meters, lo, hi, LA, fmt, tuple(what.split(",")))


@pytest.mark.parametrize("day,n", [(SPRING, 92), (FALL, 100)])
def test_d11_dst_days_have_92_and_100_quarter_hours_in_every_format(
    store: SqlStore, day: int, n: int
) -> None:
    end = day + n * STEP  # the next local midnight
    # CSV: one line per interval and channel, every start once, offsets explicit
    rows = list(csv.DictReader(io.StringIO(text(store, req(day, end, "csv")))))
    act = [r for r in rows if r["channel"] == "active_import"]
    assert len(act) == n and len({r["start"] for r in act}) == n
    assert act[0]["start"].endswith("T00:00:00-08:00" if day == SPRING else "T00:00:00-07:00")
    assert act[-1]["end"].endswith("T00:00:00-07:00" if day == SPRING else "T00:00:00-08:00")
    if day == FALL:  # the repeated hour: 01:00-07:00 then 01:00-08:00, never a doubled interval
        assert Counter(r["start"][11:] for r in act)["01:00:00-07:00"] == 1
        assert Counter(r["start"][11:] for r in act)["01:00:00-08:00"] == 1
    else:  # 02:00 local never happens
        assert not [r for r in act if r["start"][11:13] == "02"]
    # JSON
    doc = json.loads(text(store, req(day, end, "json")))
    ivs = doc["meters"][0]["intervals"]
    assert len(ivs) == n and [i["start"] for i in ivs] == [r["start"] for r in act]
    # ESPI: one IntervalBlock for the local day, n readings, contiguous in UTC
    root = ET.fromstring(text(store, req(day, end, "espi")))
    blocks = root.findall(".//espi:IntervalBlock", NS)
    assert len(blocks) == 2  # one per channel
    for b in blocks:
        starts = [int(x.text or "") for x in b.findall("espi:IntervalReading/espi:timePeriod/"
                                                        "espi:start", NS)]  # fmt: skip
        assert starts == list(range(day, end, STEP))
        assert int(b.findtext("espi:interval/espi:duration", "", NS)) == n * STEP


def test_d11_json_numbers_are_numbers_and_missing_is_null(store: SqlStore) -> None:
    seed(
        store,
        1,
        SPRING + 3 * DAY_S,
        SPRING + 4 * DAY_S,
        skip=[(SPRING + 3 * DAY_S + 3600, SPRING + 3 * DAY_S + 7200)],
    )
    lo = SPRING + 3 * DAY_S
    doc = json.loads(text(store, req(lo, lo + DAY_S, "json")), parse_float=Decimal)
    ivs = doc["meters"][0]["intervals"]
    assert len(ivs) == 96
    first = ivs[0]["values"]
    # raw x channel multiplier 2 x 10^-3 x meter multiplier 5, exact; reactive raw // 2 x 5
    assert first["active_import"] == Decimal(value(1, lo) * 10) / 1000
    assert first["reactive_import"] == value(1, lo) // 2 * 5
    gap = ivs[4:8]  # the hour 01:00-02:00 local
    assert all(g["values"] == {"active_import": None, "reactive_import": None} for g in gap)
    assert all(g["source"] is None and g["quality"] == "missing" for g in gap)
    assert ivs[8]["source"] == "scheduled" and ivs[8]["quality"] == "valid"
    csv_rows = list(csv.DictReader(io.StringIO(text(store, req(lo, lo + DAY_S, "csv")))))
    missing = [r for r in csv_rows if r["quality"] == "missing"]
    assert len(missing) == 8 and all(r["value"] == "" for r in missing)  # 4 slots x 2 channels


def test_d11_registers_events_and_sources_for_a_set_of_meters(store: SqlStore) -> None:
    lo = SPRING + 5 * DAY_S
    seed(store, 2, lo, lo + DAY_S, source=Source.RECOVERY)
    seed(store, 2, lo + DAY_S, lo + 2 * DAY_S, source=Source.MANUAL_UPLOAD)
    midnights(store, 2, [lo, lo + DAY_S, lo + 2 * DAY_S])
    event(store, 2, lo + 3600, code=11)
    r = req(lo, lo + 2 * DAY_S, "json", (1, 2), "intervals,registers,events")
    doc = json.loads(text(store, r))
    m1, m2 = doc["meters"]
    assert m1["meter"] == 1 and all(i["source"] is None for i in m1["intervals"])
    srcs = Counter(i["source"] for i in m2["intervals"])
    assert srcs == {"recovery": 96, "manual_upload": 96}
    assert [g["values"]["active_import"] for g in m2["registers"]][0] == 10000  # 1e6 x .01
    assert len(m2["registers"]) == 3 and m2["registers"][0]["at"].endswith("T01:00:00-07:00")
    assert m2["events"] == [
        {"at": m2["events"][0]["at"], "event": "tamper", "code": 11, "data": 7,
         "source": "scheduled"}
    ]  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(text(store, req(lo, lo + 2 * DAY_S, "csv", (2,),
                                                               "registers,events")))))  # fmt: skip
    assert Counter(r["record"] for r in rows) == {"register": 6, "event": 1}


def test_d11_espi_element_by_element_and_values_round_trip(store: SqlStore) -> None:
    lo = SPRING + 5 * DAY_S - 3600  # local midnight (PDT)
    flags = {lo + 20 * STEP: int(Flag.POWER_FAILED)}
    seed(store, 1, lo, lo + DAY_S, flags=lambda t: flags.get(t, 0))
    seed(store, 1, lo + 3600, lo + 7200, source=Source.ON_DEMAND)  # same data: first kept
    midnights(store, 1, [lo + 3600, lo + DAY_S + 3600])
    xml = text(store, req(lo, lo + DAY_S, "espi", what="intervals,registers"))
    root = ET.fromstring(xml)
    assert root.tag == f"{{{espi.ATOM}}}feed"
    assert root.find("a:id", NS) is not None and root.find("a:updated", NS) is not None
    entries = root.findall("a:entry", NS)
    kinds = [next(iter(e.find("a:content", NS) or [])).tag.split("}")[1] for e in entries]
    assert kinds[:4] == ["LocalTimeParameters", "UsagePoint", "MeterReading", "ReadingType"]
    for e in entries:  # every entry: id, self link, title, content, published, updated
        for child in ("a:id", "a:title", "a:content", "a:published", "a:updated"):
            assert e.find(child, NS) is not None
        assert e.find("a:link[@rel='self']", NS) is not None
    ltp = root.find(".//espi:LocalTimeParameters", NS)
    assert ltp is not None
    assert [c.tag.split("}")[1] for c in ltp] == [
        "dstEndRule", "dstOffset", "dstStartRule", "tzOffset"
    ]  # fmt: skip
    # US rules: 2nd Sunday of March and 1st Sunday of November at 02:00; PST -8 h
    assert ltp.findtext("espi:dstStartRule", "", NS) == "360E2000"
    assert ltp.findtext("espi:dstEndRule", "", NS) == "B40E2000"
    assert ltp.findtext("espi:tzOffset", "", NS) == "-28800"
    assert ltp.findtext("espi:dstOffset", "", NS) == "3600"
    up = root.find(".//espi:UsagePoint/espi:ServiceCategory/espi:kind", NS)
    assert up is not None and up.text == "0"  # electricity
    rts = {
        e.find("a:link[@rel='self']", NS).get("href"): e.find(".//espi:ReadingType", NS)  # type: ignore[union-attr]
        for e in entries
        if e.find(".//espi:ReadingType", NS) is not None
    }
    order = [
        "accumulationBehaviour",
        "commodity",
        "dataQualifier",
        "flowDirection",
        "intervalLength",
        "kind",
        "phase",
        "powerOfTenMultiplier",
        "timeAttribute",
        "uom",
    ]
    for rt in rts.values():
        assert [c.tag.split("}")[1] for c in rt] == order  # the XSD's sequence
    act, react = rts["ReadingType/1-0"], rts["ReadingType/1-1"]
    assert act.findtext("espi:uom", "", NS) == "72" and react.findtext("espi:uom", "", NS) == "73"
    assert act.findtext("espi:accumulationBehaviour", "", NS) == "4"
    assert act.findtext("espi:intervalLength", "", NS) == "900"
    assert act.findtext("espi:flowDirection", "", NS) == "1"
    assert act.findtext("espi:powerOfTenMultiplier", "", NS) == "-3"
    assert rts["ReadingType/1-0-register"].findtext("espi:accumulationBehaviour", "", NS) == "1"
    # each MeterReading links its ReadingType and its blocks
    for e in entries:
        if e.find(".//espi:MeterReading", NS) is not None:
            rel = [x.get("href") for x in e.findall("a:link[@rel='related']", NS)]
            assert any(h in rts for h in rel)
    # round trip: value x 10^p is the engineering value of every stored interval
    block = next(
        e for e in entries
        if (e.find("a:link[@rel='self']", NS).get("href") or "")  # type: ignore[union-attr]
        == f"UsagePoint/1/MeterReading/0/IntervalBlock/{lo}"
    )  # fmt: skip
    readings = block.findall(".//espi:IntervalReading", NS)
    scale = store.get_meter(1).scale(0)
    got = {
        int(r.findtext("espi:timePeriod/espi:start", "", NS)): Decimal(
            int(r.findtext("espi:value", "", NS))
        ).scaleb(int(act.findtext("espi:powerOfTenMultiplier", "", NS)))
        for r in readings
    }
    assert got == {iv.start: scale.engineering(iv.value)
                   for iv in store.intervals(1, 0, lo, lo + DAY_S)}  # fmt: skip
    assert len(got) == 96
    q = [r for r in readings if r.find("espi:ReadingQuality", NS) is not None]
    assert len(q) == 1 and q[0].findtext("espi:ReadingQuality/espi:quality", "", NS) == "10"
    srcs = block.findall("ami:sources/ami:source", NS)
    assert [(s.text, int(s.get("count", "0"))) for s in srcs] == [("scheduled", 96)]
    regs = root.findall(".//espi:IntervalBlock", NS)[-2].findall("espi:IntervalReading", NS)
    assert [int(r.findtext("espi:value", "", NS)) for r in regs][0] == 1_000_000 * 10


def test_d11_cli_exports_a_set_of_meters_to_a_file(
    store: SqlStore, backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.csv"
    base = ["--database", backend, "--tz", "America/Los_Angeles"]
    argv = ["export", "1-2", "--start", "2024-03-10", "--end", "2024-03-11", *base]
    assert main([*argv, "-o", str(out), "--what", "intervals"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert Counter(r["meter"] for r in rows) == {"1": 184, "2": 184}  # 92 x 2 channels
    assert "wrote" in capsys.readouterr().err
    assert main([*argv[:1], "all", *argv[2:], "--format", "espi"]) == 0
    assert capsys.readouterr().out.count("<espi:IntervalBlock>") == 8  # 2 meters x 2 x 2
    assert main([*argv[:1], "7", *argv[2:]]) == 2
    assert "meter 7 is not registered" in capsys.readouterr().err
    assert main([*argv[:1], "x", *argv[2:]]) == 2
    assert "group:N" in capsys.readouterr().err
    assert main([*argv, "--what", "bills"]) == 2
    assert main([*argv, "-o", str(tmp_path / "no" / "x.csv")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_d11_espi_rules_of_other_zones() -> None:
    from zoneinfo import ZoneInfo

    # Europe: last Sunday of March 01:00 UTC = 02:00 CET; last Sunday of October 03:00 CEST
    std, dst, on, off = espi.local_time_parameters(ZoneInfo("Europe/Paris"), 2024)
    assert (std, dst, on, off) == (3600, 3600, "3C0E2000", "AC0E3000")
    assert espi.local_time_parameters(ZoneInfo("Asia/Kolkata"), 2024) == (
        19800, 0, "00000000", "00000000"
    )  # fmt: skip
