"""Routes of the operator page (D10, D02-D08 reports, H03): server-rendered HTML.

Routes (all GET, HTML, outside the OpenAPI schema; the HTTP API adds operator
authentication in front of them):

* ``/operator/`` -- the overview: today's collection progress per read group
  (bar plot), missing meter-days and open trouble reports over 30 days (line
  plot), the aging report, outstanding trouble reports, event routing health,
  read groups (H03), and the meter search. Query: ``meter`` (a meter id)
  and/or ``group`` (a read group label, or ``unscheduled``); a bad value or an
  unknown parameter gives a 400 page.
* ``/operator/meters/{meter_id}`` -- one meter: registration, read group, key,
  last seen, its last 7 days of intervals per channel in engineering units, its
  missing days and recent events. An unknown meter: a 404 page; a meter id that
  is not a number: a 400 page.

``router(db)`` takes ``db``: a zero-argument callable returning a context manager
that yields a `headend.api.Headend`; the routes are sync so FastAPI runs them on
its thread pool and each request uses its connection on one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from headend.api import Headend, HeadendError, StoreError, UnknownMeter
from headend.web import figures, svg, views
from protocol.codes import event_name

Db = Callable[[], AbstractContextManager[Headend]]
MAX_ID = 2**32 - 1  # meter ids are u32
MAX_LISTED = 200  # meters listed by the search at most
RECENT_EVENTS = 20
PLOT_DAYS = 7


class BadQuery(HeadendError):
    """A query parameter the page cannot use (shown as a 400 page)."""


def meter_id_of(text: str) -> int:
    """A meter id typed by the operator. Raises BadQuery."""
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or not 0 <= int(t) <= MAX_ID:
        raise BadQuery(f"meter id: expected a whole number 0..{MAX_ID}, got {text!r}")
    return int(t)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status)


def _store_down(e: StoreError) -> HTMLResponse:
    # the store's message names the database, never its password (headend.redact)
    return _html(views.error(503, f"the store cannot answer now: {e}"), 503)


def router(db: Db, clock: Callable[[], float] = time.time) -> APIRouter:
    """The operator page's routes; ``clock`` gives now (UTC s; a test fixes it)."""
    r = APIRouter(prefix="/operator", include_in_schema=False)

    @r.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        unknown = set(request.query_params) - {"meter", "group"}
        if unknown:
            return _html(views.error(400, f"unknown query parameter(s): {sorted(unknown)}"), 400)
        meter = request.query_params.get("meter", "")
        group = request.query_params.get("group", "")
        try:
            wanted = meter_id_of(meter) if meter.strip() else None
            with db() as he:
                return _html(overview_page(he, int(clock()), wanted, meter, group))
        except BadQuery as e:
            return _html(views.error(400, str(e)), 400)
        except StoreError as e:
            return _store_down(e)

    @r.get("/meters/{meter_id}", response_class=HTMLResponse)
    def meter_page(meter_id: str) -> HTMLResponse:
        try:
            mid = meter_id_of(meter_id)
            with db() as he:
                return _html(meter_html(he, mid, int(clock())))
        except BadQuery as e:
            return _html(views.error(400, str(e)), 400)
        except UnknownMeter:
            return _html(views.error(404, f"no meter {meter_id}"), 404)
        except StoreError as e:
            return _store_down(e)

    return r


def overview_page(he: Headend, now_s: int, wanted: int | None, meter: str, group: str) -> str:
    """The overview's HTML. Raises BadQuery for a read group that does not exist."""
    now_ms = now_s * 1000
    # no query per meter (production has millions): aggregates and one page of the search
    prog = figures.progress(he, now_s)
    groups = [p.label for p in prog]
    if group and group not in groups:
        raise BadQuery(f"read group: no group {group!r}; choose one of {', '.join(groups)}")
    trend = figures.trend(he, now_s)
    missing = he.report("missing", now_ms)
    trouble = he.report("trouble", now_ms)
    aging = he.report("aging", now_ms)
    read_groups = he.report("groups", now_ms)
    counts = he.ctx.events.delivery_counts()
    listed, total = figures.listed(he, wanted, group, MAX_LISTED)
    search = views.filter_form(meter, group, groups) + views.table(
        ("meter", "read group", "transport", "registered"),
        [
            (m.meter_id, figures.group_of(m), m.transport, figures.iso(he, m.registered_at))
            for m in listed
        ],
        ident="meters",
        links={0: "/operator/meters/"},
    )
    if total > MAX_LISTED:
        search += f'<p class="muted">first {MAX_LISTED} of {total} meters shown</p>'
    body = [
        f'<p class="muted">As of {views.cell(figures.iso(he, now_s))} '
        f"({views.cell(he.ctx.config.report_tz)}).</p>",
        views.section(
            "Today's collection by read group (meters whose yesterday is complete)",
            views.figures(
                [
                    ("meters collected", sum(p.collected for p in prog)),
                    ("meters expected", sum(p.expected for p in prog)),
                ]
            )
            + svg.bars(
                "Meters collected (blue) of expected (grey) per read group",
                [p.label for p in prog],
                [p.collected for p in prog],
                [p.expected for p in prog],
            ),
            "progress",
        ),
        views.section(
            "Missing data and trouble reports, last 30 days",
            views.figures(
                [
                    ("meters missing data", missing.totals.get("meters", len(missing.rows))),
                    ("open trouble reports", trouble.totals.get("open", len(trouble.rows))),
                ],
                "counts",
            )
            + svg.lines(
                "Missing meter-days and open trouble reports per day",
                trend.days,
                {"missing meter-days": trend.missing, "open trouble reports": trend.trouble},
            ),
            "trend",
        ),
        views.section(aging.title, views.table(aging.columns, aging.rows, "aging"), "aging-report"),
        views.section(
            trouble.title,
            views.table(trouble.columns, trouble.rows, "trouble", {0: "/operator/meters/"}),
        ),
        views.section(
            "Event routing health",
            views.figures(
                [
                    ("pending (not yet sent)", counts["pending"]),
                    ("retrying (sent, no ack)", counts["retrying"]),
                    ("given up (expired)", counts["expired"]),
                    ("acknowledged", counts["acked"]),
                ],
                "routing",
            ),
        ),
        views.section(
            read_groups.title,
            views.table(
                read_groups.columns[:9],
                [row[:9] for row in read_groups.rows if row[1] in groups or row[7] or row[8]],
                "groups",
            )
            + '<p class="muted">Groups without meters are left out.</p>',
        ),
        views.section("Meters", search, "search"),
    ]
    return views.page("Collection overview", "".join(body))


def meter_html(he: Headend, meter_id: int, now_s: int) -> str:
    """A meter's page. Raises UnknownMeter."""
    m = he.meter(meter_id)
    seen = figures.last_seen_ms(he, meter_id)
    facts = views.table(
        ("fact", "value"),
        [
            ("registered", figures.iso(he, m.registered_at)),
            ("read group", figures.group_of(m)),
            ("key version", he.ctx.auth.version(meter_id)),
            ("key id", m.key_id or "none"),
            ("last seen", figures.iso(he, seen / 1000) if seen is not None else "never"),
            ("transport", m.transport),
            ("firmware", m.fw_version),
            ("interval", f"{m.interval_s // 60} min"),
        ],
        "facts",
    )
    today = figures.local_midnight(he, now_s)
    start = today - PLOT_DAYS * figures.DAY_S
    plots = []
    for ch, channel in enumerate(m.channels):
        scale = m.scale(ch)
        # one slot per interval of the 7 days: a missing interval is a gap in the line
        got = {iv.start: iv.value for iv in he.intervals(meter_id, ch, start, today)}
        slots = range(start, today, m.interval_s)
        labels = [figures.iso(he, t) for t in slots]
        values = [float(scale.engineering(got[t])) if t in got else None for t in slots]
        name = f"channel {ch}: {channel.kind.name.lower()} ({scale.unit.symbol})"
        plots.append(svg.lines(name, labels, {name: values}, scale.unit.symbol))
    missing = figures.missing_days(he, meter_id, now_s)
    events = he.events(meter_id, today - 30 * figures.DAY_S, now_s + figures.DAY_S)
    body = [
        views.section("Facts", facts),
        views.section(f"Intervals, last {PLOT_DAYS} days (engineering units)", "".join(plots)),
        views.section(
            "Missing days (last 30)",
            views.table(("day", "intervals missing"), missing, "missing"),
        ),
        views.section(
            "Recent events",
            views.table(
                ("time", "code", "event", "data", "source"),
                [
                    (
                        figures.iso(he, e.time),
                        e.code,
                        event_name(e.code),
                        e.data,
                        e.source.name.lower(),
                    )
                    for e in events[-RECENT_EVENTS:][::-1]
                ],
                "events",
            ),
        ),
    ]
    return views.page(f"Meter {meter_id}", "".join(body))
