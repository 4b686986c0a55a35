"""The reference load profile that ships with the project (data/), and its reader.

`DEFAULT_CSV` is the one default every part uses: the virtual board, the
fleet, the demo, the scenarios, the benchmarks and the tests.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "data" / "household_45d_15min.csv"
CHANNELS = ("import_wh", "export_wh", "import_varh", "export_varh")


class ProfileError(ValueError):
    """The CSV is missing, has the wrong columns, or does not hold whole days."""


def load_days(path: Path) -> list[tuple[int, list[list[int]]]]:
    """[(day start UTC s, [channel][interval] values)] of every whole day in the CSV."""
    if not path.exists():
        raise ProfileError(f"profile CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("utc_start", *CHANNELS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ProfileError(f"{path}: missing columns {missing}")
        rows = list(reader)
    if not rows:
        raise ProfileError(f"{path}: no rows")
    starts = [
        int(datetime.fromisoformat(r["utc_start"].replace("Z", "+00:00")).timestamp()) for r in rows
    ]
    step = starts[1] - starts[0] if len(starts) > 1 else 900
    per_day = 86400 // step
    days = []
    for d in range(len(rows) // per_day):
        chunk = rows[d * per_day : (d + 1) * per_day]
        values = [[int(r[c]) for r in chunk] for c in CHANNELS]
        days.append((starts[d * per_day], values))
    return days
