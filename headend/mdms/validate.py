"""Usage validation (D14): per meter and billing period, the checks a billing
system runs before it bills (B1 "validation" narrative).

- ``sum``: per channel, the intervals between the first and the last midnight
  register of the period add up to the registers' difference, within the
  meter's resolution (``tolerance`` raw counts; one count = the resolution);
- ``missing``: every interval of the meter's grid in the period is there;
- ``contiguous``: no run of identical non-zero values longer than ``stuck``
  intervals on any channel (a stuck register);
- ``zero``: no local day (of the period's zone) whose channel-0 intervals (active
  import, what is billed) are all zero;
- ``high_low``: each complete local day's usage (channel 0) lies within the
  meter's own history (the ``history_days`` complete days before the period):
  at most ``high`` x the highest, at least ``low`` x the lowest non-zero day.

A check that cannot be decided (no registers, too little history) says
``skip`` and why. The data is read a local day at a time (`export.day_slots`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from headend.errors import InvalidData, UnknownMeter
from headend.mdms.export import channel_names, day_slots, local, local_days, number, registers
from headend.store import Meter, SqlStore
from headend.store import exports as store_exports
from headend.store.base import DAY_S
from headend.store.exports import Selection
from headend.store.validations import Validations

CHECKS = ("sum", "missing", "contiguous", "zero", "high_low")
PASS, FAIL, SKIP = "pass", "fail", "skip"
MIN_HISTORY_DAYS = 7


@dataclass(frozen=True)
class Rules:
    """Thresholds of the checks (see the module doc)."""

    stuck: int = 8
    history_days: int = 30
    high: Decimal = Decimal(3)
    low: Decimal = Decimal("0.2")
    tolerance: int = 1

    def __post_init__(self) -> None:
        if self.stuck < 1 or self.history_days < 0 or self.tolerance < 0:
            raise InvalidData("validation rules: stuck >= 1, history_days >= 0, tolerance >= 0")
        if not (self.high >= 1 and 0 <= self.low <= 1):
            raise InvalidData("validation rules: expected high >= 1 and 0 <= low <= 1")


@dataclass(frozen=True)
class Result:
    meter_id: int
    check: str
    status: str
    detail: str


@dataclass
class _Day:
    lo: int
    total: int  # raw, channel 0
    present: int
    expected: int
    all_zero: bool


class _Scan:
    """What the checks need from one pass over the period, a local day at a time."""

    def __init__(self, meter: Meter, tz: ZoneInfo) -> None:
        self.meter, self.tz = meter, tz
        n = len(meter.channels)
        self.days: list[_Day] = []
        self.missing = 0
        self.expected = 0
        self.first_missing: int | None = None
        self.run_len = [0] * n
        self.run_val: list[int | None] = [None] * n
        self.run_at = [0] * n
        self.stuck: tuple[int, int, int, int] | None = None  # channel, value, start, length

    def day(self, lo: int, slots: Iterable[tuple[int, tuple[int | None, ...]]], rules: Rules
            ) -> None:  # fmt: skip
        total = present = expected = 0
        nonzero = False
        for t, raw in slots:
            expected += 1
            if raw[0] is None:
                self.missing += 1
                if self.first_missing is None:
                    self.first_missing = t
            else:
                present += 1
                total += raw[0]
                nonzero = nonzero or raw[0] != 0
            for c, v in enumerate(raw):
                self._run(c, v, t, rules)
        self.expected += expected
        self.days.append(_Day(lo, total, present, expected, present > 0 and not nonzero))

    def _run(self, c: int, v: int | None, t: int, rules: Rules) -> None:
        if v is not None and v != 0 and v == self.run_val[c]:
            self.run_len[c] += 1
        else:
            self.run_val[c], self.run_len[c], self.run_at[c] = v, 1, t
        longest = self.stuck is None or self.run_len[c] > self.stuck[3]
        if self.run_len[c] > rules.stuck and v is not None and longest:
            self.stuck = (c, v, self.run_at[c], self.run_len[c])


def history(store: SqlStore, meter: Meter, start: int, rules: Rules, tz: ZoneInfo) -> list[int]:
    """Channel-0 raw totals of the complete local days in the ``history_days`` before."""
    out: list[int] = []
    if rules.history_days == 0:
        return out
    for lo, hi in local_days(start - rules.history_days * DAY_S, start, tz):
        slots = day_slots(store, meter, lo, hi)
        if slots and all(s.raw[0] is not None for s in slots):
            out.append(sum(s.raw[0] or 0 for s in slots))
    return out


def validate(
    store: SqlStore, meter_id: int, start: int, end: int, tz: ZoneInfo, rules: Rules = Rules()
) -> list[Result]:
    """The results of every check for one meter and period [start, end)."""
    if end <= start:
        raise InvalidData(f"validation period: start {start} must be before end {end}")
    meter = store.get_meter(meter_id)
    scan = _Scan(meter, tz)
    for lo, hi in local_days(start, end, tz):
        scan.day(lo, ((s.start, s.raw) for s in day_slots(store, meter, lo, hi)), rules)
    return [
        _sum(store, meter, start, end, rules, tz),
        _missing(scan, tz),
        _contiguous(scan, rules, tz),
        _zero(scan, tz),
        _high_low(scan, history(store, meter, start, rules, tz), rules, tz),
    ]


def _eng(meter: Meter, c: int, raw: int) -> str:
    return f"{number(meter.scale(c).engineering(raw))} {meter.channels[c].unit.symbol}"


def _sum(store: SqlStore, meter: Meter, start: int, end: int, rules: Rules, tz: ZoneInfo) -> Result:
    mid = meter.meter_id
    regs = registers(store, mid, start, end)
    if len(regs) < 2:
        return Result(mid, "sum", SKIP, f"{len(regs)} midnight register(s) in the period")
    a, b = regs[0], regs[-1]
    names = channel_names(meter)
    bad: list[str] = []
    for c in range(len(meter.channels)):
        ivs = store.intervals(mid, c, a.day, b.day)
        total = sum(iv.value for iv in ivs)
        delta = b.values[c] - a.values[c]
        if abs(total - delta) > rules.tolerance:
            bad.append(
                f"{names[c]}: intervals {_eng(meter, c, total)}, registers {_eng(meter, c, delta)}"
            )
    span = f"{local(a.day, tz)} .. {local(b.day, tz)}"
    if bad:
        return Result(mid, "sum", FAIL, f"{span}: " + "; ".join(bad))
    return Result(mid, "sum", PASS, f"{span}: intervals match the register difference")


def _missing(scan: _Scan, tz: ZoneInfo) -> Result:
    mid = scan.meter.meter_id
    if scan.missing:
        first = local(scan.first_missing or 0, tz)
        return Result(
            mid, "missing", FAIL, f"{scan.missing} of {scan.expected} intervals, first {first}"
        )
    return Result(mid, "missing", PASS, f"{scan.expected} of {scan.expected} intervals")


def _contiguous(scan: _Scan, rules: Rules, tz: ZoneInfo) -> Result:
    mid = scan.meter.meter_id
    if scan.stuck is None:
        return Result(mid, "contiguous", PASS, f"no run of more than {rules.stuck} equal values")
    c, v, at, n = scan.stuck
    name = channel_names(scan.meter)[c]
    return Result(
        mid, "contiguous", FAIL,
        f"{name}: {n} intervals of {_eng(scan.meter, c, v)} from {local(at, tz)}",
    )  # fmt: skip


def _zero(scan: _Scan, tz: ZoneInfo) -> Result:
    mid = scan.meter.meter_id
    zero = [d for d in scan.days if d.all_zero]
    if zero:
        days = ", ".join(local(d.lo, tz)[:10] for d in zero)
        return Result(mid, "zero", FAIL, f"{len(zero)} day(s) of zero usage: {days}")
    return Result(mid, "zero", PASS, "no day of zero usage")


def _high_low(scan: _Scan, hist: list[int], rules: Rules, tz: ZoneInfo) -> Result:
    m = scan.meter
    if len(hist) < MIN_HISTORY_DAYS:
        return Result(m.meter_id, "high_low", SKIP, f"{len(hist)} complete day(s) of history")
    hi = max(hist)
    nonzero = [h for h in hist if h]
    lo = min(nonzero) if nonzero else 0
    out: list[str] = []
    for d in scan.days:
        if d.present < d.expected or d.all_zero:
            continue  # incomplete and zero days are the other checks' findings
        day = local(d.lo, tz)[:10]
        if d.total > rules.high * hi:
            out.append(f"{day} high {_eng(m, 0, d.total)} > {rules.high} x {_eng(m, 0, hi)}")
        elif d.total < rules.low * lo:
            out.append(f"{day} low {_eng(m, 0, d.total)} < {rules.low} x {_eng(m, 0, lo)}")
    if out:
        return Result(m.meter_id, "high_low", FAIL, "; ".join(out))
    return Result(
        m.meter_id, "high_low", PASS,
        f"within {rules.low} x {_eng(m, 0, lo)} .. {rules.high} x {_eng(m, 0, hi)} "
        f"({len(hist)} days of history)",
    )  # fmt: skip


def validate_all(
    store: SqlStore, meters: Iterable[int], start: int, end: int, tz: ZoneInfo,
    rules: Rules = Rules(),
) -> Iterator[Result]:  # fmt: skip
    """`validate` for each meter in turn (a generator: one meter in memory at a time)."""
    for mid in meters:
        yield from validate(store, mid, start, end, tz, rules)


# -- a validation run (``headend validate``, ``POST /api/v1/validation``) -----------------

#: a stored result: (meter, check, status, detail)
Row = tuple[int, str, str, str]


def parse_rules(stuck: int, history_days: int, high: object, low: object, tolerance: int) -> Rules:
    """The thresholds; high and low as text or numbers, read as decimals (never binary
    floats). Raises InvalidData."""
    try:
        hi, lo = Decimal(str(high)), Decimal(str(low))
    except InvalidOperation:
        raise InvalidData(f"high/low: expected numbers, got {high!r}, {low!r}") from None
    return Rules(stuck, history_days, hi, lo, tolerance)


def validate_stored(
    store: SqlStore,
    sel: Selection,
    start: int,
    end: int,
    tz: ZoneInfo,
    thresholds: Rules,
    now_ms: int,
    note: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Validate the selected meters over [start, end) and store the results: (meter,
    check, status, detail) rows. Raises UnknownMeter (a meter named alone is not
    registered), InvalidData."""
    if end <= start:  # said even when the selection names no meter
        raise InvalidData(f"validation period: start {start} must be before end {end}")
    unknown = store_exports.missing_ids(store.db, sel)
    if unknown:
        raise UnknownMeter(unknown[0])
    rows: list[Row] = []
    for n, mid in enumerate(store_exports.meter_ids(store.db, sel), 1):
        found = validate(store, mid, start, end, tz, thresholds)
        rows += ((r.meter_id, r.check, r.status, r.detail) for r in found)
        note(f"{n} meter(s)")
    Validations(store.db).save(start, end, rows, now_ms)
    return rows


def totals_of(rows: list[Row]) -> dict[str, int]:
    """How many checks passed, failed, were skipped."""
    return {s: sum(1 for r in rows if r[2] == s) for s in (PASS, FAIL, SKIP)}
