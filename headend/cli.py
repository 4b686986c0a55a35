"""`headend`: the operator's command line (and `python -m headend`).

    headend serve                         run the service (MQTT + serial + timers)
    headend db init|migrate|version       the store's schema
    headend meters list|show ID           registered meters
    headend read ID                       on-demand read: queue, wait, print (H05)
    headend schedule set|list|cancel      non-default schedules (H07)
    headend groups [--assign]             read-group loads (H01)
    headend events list|ack|routes ...    events, acknowledgements, routing (D09)
    headend log                           the activity log
    headend export ID --start --end       intervals as CSV/JSON in a time zone

Every command takes --config FILE, --database URL, --broker URL (or AMI_*
env), --json for machine output; tables are the default. Exit codes: 0 ok,
1 failed (a read failed or timed out, the database is unreachable), 2 usage
(bad arguments, unknown meter, bad value).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from headend.adcs import ondemand, scheduling
from headend.config import Config, load
from headend.context import Ctx
from headend.errors import ConfigError, HeadendError, InvalidData, UnknownMeter
from headend.mdms import export, routing
from headend.mdms.ingest import iso
from headend.store import migrations as mig
from headend.store import open_store
from headend.store.records import JobState, ReadSpec, ScheduleSpec
from protocol.codes import ReadMode, event_name, nack_name

OK, FAILED, USAGE = 0, 1, 2


class Usage(HeadendError):
    """A command-line argument that cannot be used (exit 2)."""


# -- parsing helpers ---------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """``900``, ``15m``, ``2h``, ``1d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return int(t[:-1]) * units[t[-1]]
        return int(t)
    except ValueError as e:
        raise Usage(f"expected a duration like 900, 15m, 2h, got {text!r}") from e


def parse_clock(text: str) -> int:
    """``HH:MM[:SS]`` -> seconds after midnight."""
    try:
        parts = [int(p) for p in text.split(":")]
        h, m, s = (parts + [0, 0])[:3]
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 60) or len(parts) > 3:
            raise ValueError(text)
    except ValueError as e:
        raise Usage(f"expected HH:MM or HH:MM:SS, got {text!r}") from e
    return h * 3600 + m * 60 + s


def parse_time(text: str, tz: ZoneInfo) -> int:
    """UTC seconds from an epoch number or an ISO date/time (local to ``tz`` if naive)."""
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as e:
        raise Usage(
            f"expected an ISO date/time (2024-04-01, 2024-04-01T06:00) or UTC s, got {text!r}"
        ) from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return int(dt.timestamp())


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise Usage(f"expected an IANA time zone (e.g. Europe/Paris), got {name!r}") from e


def now_ms() -> int:
    return int(time.time() * 1000)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _secs(ms: object) -> str:
    return f"{ms / 1000:.1f} s" if isinstance(ms, int) else "-"


def _dash(v: object) -> str:
    return "-" if v is None else str(v)


def when(ms: int | None) -> str:
    return "-" if ms is None else iso(ms // 1000)


class Progress:
    """A one-line progress indication on stderr (only when stderr is a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            bar = "#" * (20 * done // max(total, 1))
            sys.stderr.write(f"\r{self.label} [{bar:<20}] {done}/{total}")
            sys.stderr.flush()
            self.shown = True

    def note(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r{self.label}: {text}   ")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


# -- context -----------------------------------------------------------------------------


def config_from(args: argparse.Namespace) -> Config:
    overrides = {
        "database": args.database,
        "broker": args.broker,
        **{k: v for k, v in getattr(args, "overrides", {}).items() if v is not None},
    }
    return load(args.config, **overrides)


def open_ctx(cfg: Config) -> Ctx:
    """The store (not migrated: ``db migrate`` does that) and its operational tables."""
    return Ctx.build(cfg, open_store(cfg.database, migrate=False))


def emit(args: argparse.Namespace, obj: Any, human: Callable[[], str]) -> None:
    print(json.dumps(obj, indent=1, default=str) if args.json else human())


# -- commands ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from headend.service import Service

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    lines = ", ".join(s["url"] for s in cfg.serial) or "none"
    logging.getLogger("headend").info(
        "serving: broker %s, database %s, serial %s, speed %g",
        cfg.broker,
        cfg.database,
        lines,
        cfg.speed,
    )

    async def serve() -> None:
        task = asyncio.current_task()
        if task is not None:  # SIGTERM/SIGINT: stop cleanly (close the store, the links)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await Service(cfg).run()

    asyncio.run(serve())
    return OK


def cmd_db(args: argparse.Namespace, cfg: Config) -> int:
    db = _open_db_only(cfg.database)
    try:
        if args.action == "version":
            with db.transaction(write=False):
                have = mig.current_version(db)
            latest = mig.latest_version()
            emit(
                args,
                {"version": have, "latest": latest},
                lambda: (
                    f"schema version {have} (this head-end: {latest})"
                    + ("" if have == latest else "; run `headend db migrate`")
                ),
            )
            return OK
        applied = mig.migrate(db)
        with db.transaction(write=False):
            version = mig.current_version(db)
    finally:
        db.close()
    emit(
        args,
        {"applied": applied, "version": version},
        lambda: (
            (f"applied migration(s) {applied}; " if applied else "nothing to apply; ")
            + f"schema version {version}"
        ),
    )
    return OK


def _open_db_only(url: str) -> Any:
    """A `Db` adapter, not migrated (for the `db` commands)."""
    if url.startswith(("postgresql://", "postgres://")):
        from headend.store.postgres import PostgresDb

        return PostgresDb(url)
    from headend.store.sqlite import SqliteDb

    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise Usage(f"database URL {url!r}: expected sqlite:///path")
        return SqliteDb(path[1:] or ":memory:")
    if "://" in url:
        raise Usage(f"database URL {url!r}: expected sqlite:///... or postgresql://...")
    return SqliteDb(url)


def ensure_dir(url: str) -> None:
    """Create the folder of a SQLite file (the default lives in ./var/)."""
    if url.startswith("sqlite:///") and url != "sqlite:///":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)


def _meter_dict(ctx: Ctx, mid: int) -> dict[str, Any]:
    m = ctx.registry.get(mid)
    grp, offset = ctx.registry.group_of(mid)
    return {
        "meter": mid,
        "fw_version": m.fw_version,
        "interval_s": m.interval_s,
        "utc_offset_min": m.utc_offset_min,
        "meter_multiplier": m.meter_multiplier,
        "capacity_days": m.capacity_days,
        "registered_at": iso(m.registered_at),
        "read_group": m.read_group if grp is not None else "unscheduled",
        "read_offset_s": offset,
        "transport": m.transport,
        "channels": [
            {
                "kind": c.kind.name.lower(),
                "unit": c.unit.symbol,
                "multiplier": c.multiplier,
                "scaler": c.scaler,
            }
            for c in m.channels
        ],
    }


def cmd_meters(args: argparse.Namespace, cfg: Config) -> int:
    ctx = open_ctx(cfg)
    if args.action == "show":
        d = _meter_dict(ctx, args.meter)
        d["links"] = [
            {"transport": t, "first_seen": when(f), "last_seen": when(ls), "frames": n}
            for _, t, f, ls, n in ctx.registry.links(args.meter)
        ]
        d["schedules"] = [
            {"slot": s.spec.slot, "state": s.state.value, "source": s.source}
            for s in ctx.schedules.find(args.meter)
        ]

        def human() -> str:
            head = {k: v for k, v in d.items() if k not in ("channels", "links", "schedules")}
            out = [f"{k:16} {v}" for k, v in head.items()]
            out.append("")
            out.append(
                table(
                    ["channel", "kind", "unit", "multiplier", "scaler"],
                    [
                        [i, c["kind"], c["unit"], c["multiplier"], c["scaler"]]
                        for i, c in enumerate(d["channels"])
                    ],
                )
            )
            out.append("")
            out.append(
                table(
                    ["transport", "first seen", "last seen", "frames"],
                    [
                        [x["transport"], x["first_seen"], x["last_seen"], x["frames"]]
                        for x in d["links"]
                    ],
                )
            )
            return "\n".join(out)

        emit(args, d, human)
        return OK
    meters = [_meter_dict(ctx, mid) for mid in ctx.store.meter_ids()]
    emit(
        args,
        meters,
        lambda: (
            table(
                ["meter", "fw", "interval", "channels", "read group", "transport", "registered"],
                [
                    [
                        m["meter"],
                        m["fw_version"],
                        f"{m['interval_s']} s",
                        len(m["channels"]),
                        m["read_group"],
                        m["transport"] or "-",
                        m["registered_at"],
                    ]
                    for m in meters
                ],
            )
            + f"\n{len(meters)} meter(s)"
        ),
    )
    return OK


def _print_read(result: dict[str, Any]) -> str:
    chans = [f"{c['kind']} {c['unit']}" for c in result.get("channels", [])]
    out = [f"meter {result.get('meter')}  source {result.get('source')}"]
    if "clock" in result:
        out.append(f"meter clock  {result['clock']}")
    if "registers" in result:
        regs = result["registers"]
        out.append(
            f"registers at {regs['at']}: "
            + ", ".join(f"{n} = {v}" for n, v in zip(chans, regs["values"], strict=False))
        )
    ivs = result.get("intervals", [])
    if ivs:
        out.append("")
        out.append(
            table(
                ["start", *chans, "flags"],
                [[iv["start"], *iv["values"], iv["flags"]] for iv in ivs],
            )
        )
    out.append(f"{len(ivs)} interval(s), {len(result.get('events', []))} event(s)")
    return "\n".join(out)


def cmd_read(args: argparse.Namespace, cfg: Config) -> int:
    ctx = open_ctx(cfg)
    tz = zone(args.tz or cfg.report_tz)
    if args.start or args.end:
        if not (args.start and args.end):
            raise Usage("a period read needs both --start and --end")
        spec = ReadSpec(
            args.meter,
            ReadMode.PERIOD,
            parse_time(args.start, tz),
            parse_time(args.end, tz),
            args.what,
        )
    elif args.since_ack:
        spec = ReadSpec(args.meter, ReadMode.SINCE_ACK, what=args.what)
    else:
        spec = ReadSpec(args.meter, ReadMode.ON_DEMAND, what=args.what)
    # A simulated service clock cannot be known here: created 0 = stamped when claimed.
    created = now_ms() if cfg.speed == 1 and cfg.clock_start == 0 else 0
    job_id = ondemand.request_read(ctx, spec, args.requester, created)
    if args.no_wait:
        emit(args, {"job": job_id, "state": "queued"}, lambda: f"job {job_id} queued")
        return OK
    budget = args.timeout
    if budget is None:  # every attempt's timeout, in real seconds, plus slack
        budget = cfg.ondemand_timeout_s * (cfg.ondemand_retries + 1) / cfg.speed + 30
    progress = Progress(f"read meter {args.meter} (job {job_id})")
    start = time.monotonic()
    job = ctx.jobs.get(job_id)
    while job.state not in (JobState.DONE, JobState.FAILED):
        waited = time.monotonic() - start
        if waited > budget:
            progress.done()
            print(
                f"job {job_id}: no result after {waited:.0f} s (state {job.state.value}); "
                "is `headend serve` running?",
                file=sys.stderr,
            )
            return FAILED
        progress.note(f"{job.state.value}, attempt {job.attempts}, {waited:.0f} s")
        time.sleep(0.1)
        job = ctx.jobs.get(job_id)
    progress.done()
    ondemand.acknowledge(ctx, job_id, now_ms() if created else (job.done_ms or 0))
    if job.state is JobState.FAILED:
        emit(
            args,
            {"job": job_id, "state": "failed", "trouble": job.trouble},
            lambda: f"job {job_id} failed: {job.trouble}",
        )
        return FAILED
    result = json.loads(job.result or "{}")
    emit(
        args,
        {"job": job_id, "state": "done", "latency_ms": job.latency_ms, "data": result},
        lambda: (
            _print_read(result) + f"\njob {job_id} done in {(job.latency_ms or 0) / 1000:.1f} s"
        ),
    )
    return OK


def cmd_schedule(args: argparse.Namespace, cfg: Config) -> int:
    ctx = open_ctx(cfg)
    tz = zone(args.tz or cfg.report_tz) if hasattr(args, "tz") else ZoneInfo("UTC")
    if args.action == "set":
        spec = ScheduleSpec(
            args.meter,
            args.slot,
            period_s=parse_duration(args.every),
            offset_s=parse_clock(args.at) if ":" in args.at else parse_duration(args.at),
            start=parse_time(args.start, tz) if args.start else 0,
            end=parse_time(args.end, tz) if args.end else 0,
            what=args.what,
        )
        scheduling.set_schedule(ctx, spec, args.source, now_ms())
        emit(
            args,
            {"meter": args.meter, "slot": args.slot, "state": "pending"},
            lambda: f"{scheduling.describe(spec)}: pending (the service sends it)",
        )
        return OK
    if args.action == "cancel":
        scheduling.cancel_schedule(ctx, args.meter, args.slot, args.source, now_ms())
        emit(
            args,
            {"meter": args.meter, "slot": args.slot, "state": "pending"},
            lambda: f"slot {args.slot} of meter {args.meter}: cancel pending",
        )
        return OK
    rows = ctx.schedules.find(args.meter)
    data = [
        {
            "meter": s.spec.meter_id,
            "slot": s.spec.slot,
            "schedule": scheduling.describe(s.spec),
            "state": s.state.value,
            "source": s.source,
            "attempts": s.attempts,
            "sent": when(s.sent_ms),
            "acked": when(s.acked_ms),
            "flagged": when(s.flagged_ms),
            "reason": nack_name(s.reason) if s.reason else None,
        }
        for s in rows
    ]
    emit(
        args,
        data,
        lambda: table(
            ["meter", "slot", "schedule", "state", "source", "tries", "sent", "acked"],
            [
                [
                    d["meter"],
                    d["slot"],
                    d["schedule"],
                    d["state"],
                    d["source"],
                    d["attempts"],
                    d["sent"],
                    d["acked"],
                ]
                for d in data
            ],
        ),
    )
    return OK


def cmd_groups(args: argparse.Namespace, cfg: Config) -> int:
    ctx = open_ctx(cfg)
    placed: dict[int, int] = {}
    if args.assign:
        placed = scheduling.assign(ctx, now_ms())
    loads = ctx.registry.group_loads()
    waiting = len(ctx.registry.unscheduled())
    w = ctx.window
    groups: list[dict[str, Any]] = [
        {"group": g, "window": w.label(g), "meters": loads.get(g, 0)} for g in range(w.count)
    ]
    data = {
        "capacity": w.capacity,
        "unscheduled": waiting,
        "assigned_now": len(placed),
        "groups": groups,
    }
    emit(
        args,
        data,
        lambda: (
            table(
                ["group", "window", "meters", "fill"],
                [
                    [g["group"], g["window"], g["meters"], f"{100 * g['meters'] / w.capacity:.2f}%"]
                    for g in groups
                ],
            )
            + f"\nunscheduled: {waiting}"
            + (f"; placed now: {len(placed)}" if args.assign else "")
        ),
    )
    return OK


def cmd_events(args: argparse.Namespace, cfg: Config) -> int:
    ctx = open_ctx(cfg)
    if args.action == "ack":
        if not routing.acknowledge(ctx, args.delivery, None, now_ms()):
            raise Usage(f"delivery {args.delivery}: unknown or acknowledged already")
        emit(
            args,
            {"delivery": args.delivery, "acked": True},
            lambda: f"delivery {args.delivery} acknowledged",
        )
        return OK
    if args.action == "routes":
        return _routes(args, ctx)
    if args.action == "deliveries":
        ds = ctx.events.deliveries(limit=args.limit)
        data = [
            {
                "delivery": d.delivery_id,
                "recipient": d.recipient,
                "kind": d.kind,
                "state": d.state.value,
                "event_id": d.event_id,
                "job": d.job_id,
                "attempts": d.attempts,
                "created": when(d.created_ms),
                "sent": when(d.sent_ms),
                "acked": when(d.acked_ms),
                "routing_ms": None if d.sent_ms is None else d.sent_ms - d.created_ms,
            }
            for d in ds
        ]
        emit(
            args,
            data,
            lambda: table(
                ["id", "recipient", "kind", "state", "sends", "created", "acked", "routing"],
                [
                    [
                        d["delivery"],
                        d["recipient"],
                        d["kind"],
                        d["state"],
                        d["attempts"],
                        d["created"],
                        d["acked"],
                        _secs(d["routing_ms"]),
                    ]
                    for d in data
                ],
            ),
        )
        return OK
    since = parse_time(args.since, zone(cfg.report_tz)) if args.since else 0
    evs = ctx.events.recent(args.meter, since, args.limit)
    data2 = [
        {
            "event_id": e,
            "meter": m,
            "time": iso(t),
            "code": c,
            "name": event_name(c),
            "data": d,
            "received_at": iso(r),
        }
        for e, m, t, c, d, r in evs
    ]
    emit(
        args,
        data2,
        lambda: table(
            ["id", "meter", "time", "code", "name", "data", "received"],
            [
                [
                    x["event_id"],
                    x["meter"],
                    x["time"],
                    x["code"],
                    x["name"],
                    x["data"],
                    x["received_at"],
                ]
                for x in data2
            ],
        ),
    )
    return OK


def _routes(args: argparse.Namespace, ctx: Ctx) -> int:
    if args.route_action == "add":
        added = ctx.events.add_route(args.code, args.recipient, now_ms())
        emit(
            args,
            {"code": args.code, "recipient": args.recipient, "added": added},
            lambda: (
                f"event {args.code or 'all'} -> {args.recipient}: "
                + ("added" if added else "was there already")
            ),
        )
        return OK
    if args.route_action == "remove":
        if not ctx.events.remove_route(args.code, args.recipient):
            raise Usage(f"no route of event {args.code} to {args.recipient}")
        emit(
            args,
            {"code": args.code, "recipient": args.recipient, "removed": True},
            lambda: f"event {args.code or 'all'} -> {args.recipient}: removed",
        )
        return OK
    routes = ctx.events.routes()
    data = [
        {
            "code": r.code,
            "name": "all" if r.code == 0 else event_name(r.code),
            "recipient": r.recipient,
            "topic": ctx.notify_topic(r.recipient),
        }
        for r in routes
    ]
    emit(
        args,
        data,
        lambda: table(
            ["code", "event", "recipient", "topic"],
            [[d["code"], d["name"], d["recipient"], d["topic"]] for d in data],
        ),
    )
    return OK


def cmd_log(args: argparse.Namespace, cfg: Config) -> int:
    ctx = open_ctx(cfg)
    kinds = args.kind or ()
    lines = ctx.activity.lines(args.meter, kinds, limit=args.limit)
    data = [
        {"at": when(a.at_ms), "meter": a.meter_id, "kind": a.kind, "detail": a.detail}
        for a in lines
    ]
    emit(
        args,
        data,
        lambda: "\n".join(
            f"{d['at']}  {_dash(d['meter']):>10}  {d['kind']:<22} {d['detail']}" for d in data
        ),
    )
    return OK


def cmd_export(args: argparse.Namespace, cfg: Config) -> int:
    ctx = open_ctx(cfg)
    tz = zone(args.tz or cfg.report_tz)
    start, end = parse_time(args.start, tz), parse_time(args.end, tz)
    meter = ctx.registry.get(args.meter)
    progress = Progress(f"export meter {args.meter}")
    fmt = "json" if args.json else args.format
    text = export.render(meter, export.rows(ctx.store, args.meter, start, end, progress), fmt, tz)
    progress.done()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return OK


# -- argument parser ---------------------------------------------------------------------

EPILOG = (
    "Configuration: defaults < --config FILE (TOML, [headend] table) < AMI_<KEY> env "
    "< flags. Exit codes: 0 ok, 1 failed (read failed or timed out, database down), "
    "2 usage (bad arguments, unknown meter, bad value)."
)


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--config", type=Path, metavar="FILE", help="TOML config file ([headend] table)")
    g.add_argument(
        "--database", metavar="URL", help="sqlite:///path or postgresql://... (AMI_DATABASE)"
    )
    g.add_argument("--broker", metavar="URL", help="mqtt://host:port (AMI_BROKER)")
    g.add_argument("--json", action="store_true", help="machine-readable JSON output")
    g.add_argument("-v", "--verbose", action="store_true", help="more logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    root = argparse.ArgumentParser(
        prog="headend",
        description="AMI head-end: collection service (ADCS) and meter-data store (MDMS).",
        epilog=EPILOG,
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_, description=help_, parents=[common], epilog=EPILOG, **kw
        )

    p = add("serve", "run the service: MQTT and serial links, schedules, reads, events")
    p.add_argument(
        "--serial",
        action="append",
        metavar="URL",
        help="a serial line (pyserial URL: /dev/ttyUSB0, socket://h:p, loop://); repeatable",
    )
    p.add_argument("--worker", help="this worker's MQTT client id (unique per process)")
    p.add_argument("--speed", type=float, help="simulated-clock speed factor (1 = real time)")
    p.add_argument("--clock-start", type=int, metavar="UTC_S", help="simulated clock start (UTC s)")
    p.set_defaults(func=cmd_serve, overrides_from=("serial", "worker", "speed", "clock_start"))

    p = add("db", "create or migrate the store's schema, or show its version")
    p.add_argument(
        "action",
        choices=("init", "migrate", "version"),
        help="init/migrate: bring the schema to the latest version; version: show it",
    )
    p.set_defaults(func=cmd_db)

    p = add("meters", "list registered meters, or show one")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    msub.add_parser("list", help="all meters (group, link, registration)", parents=[common])
    ms = msub.add_parser("show", help="one meter: channels, links, schedules", parents=[common])
    ms.add_argument("meter", type=int)
    p.set_defaults(func=cmd_meters)

    p = add("read", "on-demand read: queue it, wait for the service to answer, print the data")
    p.add_argument("meter", type=int)
    p.add_argument("--start", help="period read from (ISO date/time in --tz, or UTC s)")
    p.add_argument("--end", help="period read until (exclusive)")
    p.add_argument("--since-ack", action="store_true", help="everything since the last acked read")
    p.add_argument(
        "--what", type=int, default=15, help="bits: 1 intervals, 2 registers, 4 midnight, 8 events"
    )
    p.add_argument("--requester", default="cli", help="who asks (gets the result; default cli)")
    p.add_argument("--tz", help="time zone of --start/--end (default: report_tz)")
    p.add_argument(
        "--timeout", type=float, metavar="S", help="give up waiting after S real seconds"
    )
    p.add_argument("--no-wait", action="store_true", help="queue the job and exit")
    p.set_defaults(func=cmd_read)

    p = add("schedule", "non-default read schedules: set, list, cancel (H07)")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ss = ssub.add_parser("set", help="set or update a slot (1-3)", parents=[common])
    ss.add_argument("meter", type=int)
    ss.add_argument("--slot", type=int, required=True, choices=(1, 2, 3))
    ss.add_argument(
        "--every", required=True, help="period: 15m, 1h, 7200 (>= the meter's interval, < 1 day)"
    )
    ss.add_argument(
        "--at", default="0", help="offset in the period (HH:MM from local midnight, or 5m)"
    )
    ss.add_argument("--start", help="first day/time (ISO, --tz); default now")
    ss.add_argument("--end", help="last day/time (ISO); default ongoing")
    ss.add_argument("--what", type=int, default=15, help="what to send (bits, default 15 = all)")
    ss.add_argument("--source", required=True, help="the system or party asking (logged)")
    ss.add_argument("--tz", help="time zone of --start/--end")
    sl = ssub.add_parser("list", help="schedules and their ack state", parents=[common])
    sl.add_argument("meter", type=int, nargs="?")
    sc = ssub.add_parser("cancel", help="cancel a slot (1-3)", parents=[common])
    sc.add_argument("meter", type=int)
    sc.add_argument("--slot", type=int, required=True, choices=(1, 2, 3))
    sc.add_argument("--source", required=True, help="the system or party asking (logged)")
    p.set_defaults(func=cmd_schedule)

    p = add("groups", "read-group loads over the nightly window (H01)")
    p.add_argument(
        "--assign",
        action="store_true",
        help="place unscheduled meters now (the service sends their schedules)",
    )
    p.set_defaults(func=cmd_groups)

    p = add("events", "meter events, deliveries, acknowledgements and routes (D09)")
    esub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    el = esub.add_parser("list", help="stored events, newest first", parents=[common])
    el.add_argument("--meter", type=int)
    el.add_argument("--since", help="ISO date/time or UTC s")
    el.add_argument("--limit", type=int, default=50)
    ed = esub.add_parser(
        "deliveries", help="messages to recipients and their acks", parents=[common]
    )
    ed.add_argument("--limit", type=int, default=50)
    ea = esub.add_parser("ack", help="acknowledge a delivery for its recipient", parents=[common])
    ea.add_argument("delivery", type=int)
    er = esub.add_parser("routes", help="the routing table: list, add, remove", parents=[common])
    rsub = er.add_subparsers(dest="route_action", required=True, metavar="ROUTE_ACTION")
    rsub.add_parser("list", help="every route", parents=[common])
    for name, text in (("add", "route an event code to a recipient"), ("remove", "delete a route")):
        r = rsub.add_parser(name, help=text, parents=[common])
        r.add_argument("code", type=int, help="event code 1-255, 0 = every event")
        r.add_argument("recipient", help="recipient name: gets <notify_topic>/<name>")
    p.set_defaults(func=cmd_events)

    p = add("log", "the activity log (registrations, acks, retries, failures, bad frames)")
    p.add_argument("--meter", type=int)
    p.add_argument("--kind", action="append", help="only this kind (repeatable), e.g. bad_frame")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_log)

    p = add("export", "a meter's intervals for a period, in engineering units, CSV or JSON")
    p.add_argument("meter", type=int)
    p.add_argument("--start", required=True, help="ISO date/time in --tz (or UTC s)")
    p.add_argument("--end", required=True, help="exclusive end")
    p.add_argument("--tz", help="IANA time zone of the output (default: report_tz)")
    p.add_argument("--format", choices=export.FORMATS, default="csv")
    p.add_argument("--output", "-o", help="write to this file (default: stdout)")
    p.set_defaults(func=cmd_export)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.overrides = {k: getattr(args, k, None) for k in getattr(args, "overrides_from", ())}
    if args.overrides.get("serial"):
        args.overrides["serial"] = ",".join(args.overrides["serial"])
    try:
        cfg = config_from(args)
        if args.command in ("serve", "db"):
            ensure_dir(cfg.database)
        code: int = args.func(args, cfg)
        return code
    except (Usage, ConfigError, InvalidData, UnknownMeter) as e:
        print(f"headend {args.command}: {e}", file=sys.stderr)
        return USAGE
    except HeadendError as e:
        print(f"headend {args.command}: {e}", file=sys.stderr)
        return FAILED
    except BrokenPipeError:
        return OK


if __name__ == "__main__":
    sys.exit(main())
