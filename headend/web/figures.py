"""What the operator page reads from the store: plain values, built from one `Headend`.

Days and times are in the report time zone (``Config.report_tz``) as the reports'
are; a meter's collection day is its local-standard day (`DayCoverage`), labelled by
the date of its middle as the recovery reports do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from headend.adcs.recovery import day_label
from headend.api import Headend, Meter
from headend.store import collection
from headend.store.lifecycles import TroubleState

DAY_S = 86_400
UNSCHEDULED = "unscheduled"


@dataclass(frozen=True)
class GroupProgress:
    """One read group's meters and those whose previous day is complete."""

    label: str
    expected: int
    collected: int


@dataclass(frozen=True)
class Trend:
    """Per day (labels ascending): meter-days found missing and trouble reports open."""

    days: list[str]
    missing: list[int]
    trouble: list[int]


def iso(he: Headend, at_s: float) -> str:
    """A time in the report time zone, to the minute."""
    return datetime.fromtimestamp(at_s, he.ctx.config.tz).strftime("%Y-%m-%d %H:%M %Z")


def local_midnight(he: Headend, now_s: int) -> int:
    """UTC s of the start of today in the report time zone."""
    t = datetime.fromtimestamp(now_s, he.ctx.config.tz)
    return int(t.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())


def group_of(m: Meter) -> str:
    return m.read_group or UNSCHEDULED


def meters(he: Headend) -> list[Meter]:
    """Every registered meter, by id (two queries per `Db.chunk_rows` meters)."""
    found = he.ctx.registry.get_many(he.meters())
    return [found[i] for i in sorted(found)]


def listed(he: Headend, wanted: int | None, group: str, limit: int) -> tuple[list[Meter], int]:
    """The meter search: the first ``limit`` meters by id with id ``wanted`` (None: any)
    in read group ``group`` (its label; "": any), and how many there are."""
    if not group:
        return he.ctx.registry.search(wanted, None, False, limit)
    if group == UNSCHEDULED:  # `group_of`: no read group, or one named so
        return he.ctx.registry.search(wanted, ("", UNSCHEDULED), True, limit)
    return he.ctx.registry.search(wanted, (group,), False, limit)


def progress(he: Headend, now_s: int) -> list[GroupProgress]:
    """Today's collection (the night's reads) by read group: a meter counts as
    collected when every interval of its collection day labelled yesterday (report
    time zone; its local-standard day, as the recovery reports label days) is stored
    (a few aggregate queries, however many meters: `store.collection`)."""
    today = local_midnight(he, now_s)
    expected: dict[str, int] = {}
    done: dict[str, int] = {}
    for g in collection.by_group(he.ctx.db, today - DAY_S):
        label = g.read_group or UNSCHEDULED
        expected[label] = expected.get(label, 0) + g.meters
        done[label] = done.get(label, 0) + g.collected
    return [GroupProgress(g, expected[g], done[g]) for g in sorted(expected)]


def trend(he: Headend, now_s: int, days: int = 30) -> Trend:
    """The last ``days`` days up to today: missing meter-days per day (D02), and the
    trouble reports open at each day's end (D06)."""
    tz = he.ctx.config.tz
    today = datetime.fromtimestamp(now_s, tz).date()
    labels = [(today - timedelta(days=k)).isoformat() for k in range(days - 1, -1, -1)]
    missing = {d: 0 for d in labels}
    # a day in the window was found after it ended, so after the window's start: only the
    # counts found since then, per day, are read (not every meter-day ever found)
    first_s = int(datetime.fromisoformat(labels[0]).replace(tzinfo=tz).timestamp())
    for day, n in he.ctx.missing.found_per_day((first_s - DAY_S) * 1000).items():
        label = day_label(day)
        if label in missing:
            missing[label] += n
    troubles = he.ctx.troubles.find(open_at_ms=(first_s + DAY_S) * 1000)
    open_at: list[int] = []
    for label in labels:
        end_ms = int(datetime.fromisoformat(label).replace(tzinfo=tz).timestamp() + DAY_S) * 1000
        open_at.append(
            sum(
                1
                for t in troubles
                if t.opened_ms < end_ms
                and (t.state == TroubleState.OPEN or (t.closed_ms or 0) >= end_ms)
            )
        )
    return Trend(labels, [missing[d] for d in labels], open_at)


def last_seen_ms(he: Headend, meter_id: int) -> int | None:
    """When the meter last sent a frame over any transport (None: never since links
    are recorded)."""
    seen = [ls for _, _, _, ls, _ in he.ctx.registry.links(meter_id)]
    return max(seen) if seen else None


def missing_days(he: Headend, meter_id: int, now_s: int, days: int = 30) -> list[tuple[str, int]]:
    """(day, intervals missing) of the meter's incomplete days in the last ``days``
    days since its registration (today, still being recorded, left out)."""
    today = local_midnight(he, now_s)
    registered = he.meter(meter_id).registered_at
    cov = he.coverage(meter_id, max(today - days * DAY_S, registered), today)
    return [(day_label(c.day), c.missing) for c in cov if not c.complete]
