"""The reference load profile that ships with the project (data/), and its one reader.

`DEFAULT_CSV` is the one default every part uses: the virtual board, the
fleet, the demo, the scenarios, the benchmarks and the tests. `read()` is the
one parser of such a CSV (`utc_start` + the four channels, one row per
interval, consecutive): `load_days` (whole days, for the benchmarks) and the
fleet's `LoadProfile` both build on it, so a CSV is read, and refused, alike
everywhere: a missing or malformed file is a `ProfileError` whose message is
one line saying where and what.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "data" / "household_45d_15min.csv"
CHANNELS = ("import_wh", "export_wh", "import_varh", "export_varh")
DAY = 86_400

Row = tuple[int, int, int, int]


class ProfileError(ValueError):
    """A load profile or a fleet plan that cannot be used (one-line message).

    The CSV is missing, unreadable, has the wrong columns, a bad value, rows
    that do not follow each other; or (hil.fleet_profile) a bad --profile-mix
    or an impossible fleet plan.
    """


@dataclass(frozen=True)
class Profile:
    """A load-profile CSV as integers.

    Attributes:
        path: where it was read from.
        t0: start of the first row (UTC s).
        step: seconds per row (divides a day).
        rows: the four channels' values of each row, in order.
    """

    path: Path
    t0: int
    step: int
    rows: list[Row]


def _utc(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def read(path: Path) -> Profile:
    """Parse a load-profile CSV; ProfileError (one line) if it cannot be used."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _parse(path, csv.reader(f))
    except FileNotFoundError:
        raise ProfileError(f"load profile CSV not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ProfileError(f"load profile CSV {path}: cannot read ({e})") from None


def _parse(path: Path, reader: Iterator[list[str]]) -> Profile:
    header = next(reader, [])
    cols = ("utc_start", *CHANNELS)
    missing = [c for c in cols if c not in header]
    if missing:
        raise ProfileError(
            f"{path}: missing columns {', '.join(missing)} (expected {','.join(cols)})"
        )
    idx = [header.index(c) for c in cols]
    width = max(idx) + 1
    starts: list[int] = []
    rows: list[Row] = []
    for line, r in enumerate(reader, start=2):
        if not r:
            continue  # a blank line (e.g. at the end)
        try:
            if len(r) < width:
                raise ValueError(f"{len(r)} columns, expected {len(header)}")
            t = _utc(r[idx[0]])
            a, b, c, d = (int(r[i]) for i in idx[1:])
        except ValueError as e:
            raise ProfileError(f"{path}: line {line}: {e}") from None
        if min(a, b, c, d) < 0:
            raise ProfileError(f"{path}: line {line}: negative energy")
        if len(starts) > 1 and t - starts[-1] != starts[1] - starts[0]:
            raise ProfileError(
                f"{path}: line {line}: {r[idx[0]]} is not {starts[1] - starts[0]} s "
                "after the row before"
            )
        starts.append(t)
        rows.append((a, b, c, d))
    if not rows:
        raise ProfileError(f"{path}: no rows")
    step = starts[1] - starts[0] if len(starts) > 1 else 900
    if step <= 0 or DAY % step:
        raise ProfileError(f"{path}: rows {step} s apart; expected a step that divides a day")
    return Profile(path, starts[0], step, rows)


def load_days(path: Path) -> list[tuple[int, list[list[int]]]]:
    """[(day start UTC s, [channel][interval] values)] of every whole day in the CSV."""
    p = read(path)
    per_day = DAY // p.step
    days = []
    for d in range(len(p.rows) // per_day):
        chunk = p.rows[d * per_day : (d + 1) * per_day]
        days.append((p.t0 + d * DAY, [list(ch) for ch in zip(*chunk, strict=True)]))
    if not days:
        raise ProfileError(f"{path}: less than one whole day ({len(p.rows)} rows)")
    return days
