"""The benchmarks refuse bad input in one line: no traceback, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import refused, run_module, run_python

HEADER = "utc_start,import_wh,export_wh,import_varh,export_varh\n"

# `python -m bench ARGS` in a clone without data/: DEFAULT_CSV points at a missing file
_WITHOUT_DATA = (
    "import sys; from pathlib import Path; import hil.loadprofile as lp; "
    "lp.DEFAULT_CSV = Path(sys.argv[1]); from bench.__main__ import main; "
    "sys.exit(main(sys.argv[2:]))"
)


def _csv(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.csv"
    if kind == "columns":
        path.write_text("utc_start,import_wh\n2024-04-01T00:00:00Z,1\n")
    elif kind == "value":
        path.write_text(HEADER + "2024-04-01T00:00:00Z,4x5,0,19,0\n")
    return path  # "missing": not written


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("missing", "load profile CSV not found"),
        ("columns", "missing columns export_wh, import_varh, export_varh"),
        ("value", "line 2: invalid literal"),
    ],
)
@pytest.mark.parametrize("bench", ["wire", "ingest"])
def test_a_bad_csv_is_refused_in_one_line(tmp_path: Path, bench: str, kind: str, says: str) -> None:
    path = _csv(tmp_path, kind)
    before = sorted(tmp_path.iterdir())
    line = refused(run_module("bench", bench, "--csv", str(path)))
    assert line.startswith("error: ") and says in line and str(path) in line
    assert sorted(tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("bench", ["wire", "ingest", "flash-wear", "firmware-heap", "heap-map"])
def test_the_default_profile_missing_is_refused_in_one_line(tmp_path: Path, bench: str) -> None:
    gone = tmp_path / "data" / "household_45d_15min.csv"
    line = refused(run_python("-c", _WITHOUT_DATA, str(gone), bench))
    assert line == f"error: load profile CSV not found: {gone}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_ingest_refuses_a_database_it_cannot_open(tmp_path: Path, where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    db = afile / "bench.db" if where == "under-a-file" else tmp_path
    line = refused(run_module("bench", "ingest", "--meter-days", "5", "--db", str(db)))
    assert line.startswith(f"error: cannot open SQLite database {db}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_ingest_refuses_a_bad_option_before_it_makes_a_database(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    line = refused(
        run_module(
            "bench", "ingest", "--meter-days", "5", "--db", str(db), "--utc-offset-min", "9999"
        )
    )
    assert line == "error: utc_offset_min: expected an int -720..840, got 9999"
    assert not db.exists()


def test_ingest_folds_a_multi_line_library_error_onto_one_line() -> None:
    # psycopg's "connection refused" message has a second line; port 1 has no server
    args = ("--backend", "postgres", "--dsn", "postgresql://nobody@127.0.0.1:1/x")
    line = refused(run_module("bench", "ingest", "--meter-days", "5", *args))
    assert line.startswith("error: cannot connect to PostgreSQL:")
