"""hil.loadprofile: the one reader of a load-profile CSV, for the benchmarks and the fleet."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.fleet_profile import LoadProfile
from hil.loadprofile import DEFAULT_CSV, ProfileError, load_days, read
from tests.support.cli import refused, run_module

HEADER = "utc_start,import_wh,export_wh,import_varh,export_varh\n"


def test_the_reference_profile_is_45_days_of_15_minute_rows() -> None:
    p = read(DEFAULT_CSV)
    assert (p.step, len(p.rows), p.t0) == (900, 45 * 96, 1711929600)  # 2024-04-01T00:00:00Z
    assert p.rows[0] == (45, 0, 19, 0)
    days = load_days(DEFAULT_CSV)
    assert len(days) == 45 and days[1][0] == p.t0 + 86400
    assert [v[0] for v in days[0][1]] == list(p.rows[0])  # [channel][interval]
    fleet = LoadProfile(DEFAULT_CSV)
    assert (fleet.t0, fleet.rows) == (p.t0, p.rows)  # the same content for both


def test_columns_are_found_by_name(tmp_path: Path) -> None:
    text = "export_wh,utc_start,import_varh,import_wh,export_varh,note\n"
    rows = [f"{i},2024-04-01T{i // 4:02d}:{i % 4 * 15:02d}:00Z,3,{i + 10},0,x" for i in range(96)]
    path = tmp_path / "p.csv"
    path.write_text(text + "\n".join(rows) + "\n\n")  # a blank line at the end is no row
    p = read(path)
    assert p.rows[5] == (15, 5, 3, 0) and p.step == 900 and len(p.rows) == 96


BAD = {
    "missing": (None, "load profile CSV not found"),
    "columns": ("utc_start,import_wh,export_wh\n2024-04-01T00:00:00Z,1,2\n", "missing columns"),
    "empty": (HEADER, "no rows"),
    "value": (HEADER + "2024-04-01T00:00:00Z,4x5,0,19,0\n", "line 2: invalid literal"),
    "time": (HEADER + "yesterday,1,0,1,0\n", "line 2: Invalid isoformat"),
    "short": (HEADER + "2024-04-01T00:00:00Z,1,0\n", "line 2: 3 columns, expected 5"),
    "negative": (HEADER + "2024-04-01T00:00:00Z,1,-1,0,0\n", "line 2: negative"),
    "gap": (
        HEADER
        + "2024-04-01T00:00:00Z,1,0,0,0\n2024-04-01T00:15:00Z,1,0,0,0\n"
        + "2024-04-01T00:45:00Z,1,0,0,0\n",
        "line 4: 2024-04-01T00:45:00Z is not 900 s after",
    ),
    "binary": (b"\xff\xfe\x00garbage", "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_csv_is_one_line_profile_error_for_every_reader(tmp_path: Path, case: str) -> None:
    content, expected = BAD[case]
    path = tmp_path / "p.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    for reader in (read, load_days, LoadProfile):
        with pytest.raises(ProfileError) as e:
            reader(path)
        assert expected in str(e.value) and "\n" not in str(e.value), (reader, e.value)
        assert str(path) in str(e.value)


@pytest.mark.parametrize("command", ["fleet", "demo"])
def test_fleet_and_demo_refuse_a_bad_csv_before_anything_starts(
    tmp_path: Path, command: str
) -> None:
    gone = tmp_path / "gone.csv"
    line = refused(run_module("hil", command, "--csv", str(gone), timeout=60))
    assert line == f"error: load profile CSV not found: {gone}"
