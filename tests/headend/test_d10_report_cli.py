"""D10 (with D03, D08): every report at once from the CLI (`headend report`) and the API."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from headend.api import Headend, InvalidData
from headend.cli import main
from headend.store import open_store
from hil.fleet_profile import MeterPlan
from tests.headend.test_d02_d08_recovery import T0, D
from tests.support.direct import DAY, Direct, never, worker


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two meters for two days; 1006 never answers after its first day."""
    path = Path(tmp_path_factory.mktemp("cli")) / "headend.db"
    store = open_store(f"sqlite:///{path}")
    x = Direct(
        [worker(store)],
        [MeterPlan(1001), MeterPlan(1006, "offline", outages=never(D + DAY))],
        T0 + 12 * 3600,
        step_s=900,
    )
    x.run_until(D + 2 * DAY + 12 * 3600)
    store.close()
    return f"sqlite:///{path}"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_d03_d10_report_is_a_human_table_by_default(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "report", "exceptions", "--database", url)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "Still missing after 3 recovery attempts (meters 1, meter_days 2)",
        "meter  day         kind      state         present  expected  attempts  last_job  found",
        "-----  ----------  --------  ------------  -------  --------  --------  --------  "
        "-------------------------",
        "1006   2026-03-02  prev_day  unsuccessful  0        96        3         3         "
        "2026-03-03T06:00:00+00:00",
        "1006   2026-03-03  prev_day  unsuccessful  0        96        3         6         "
        "2026-03-04T06:00:00+00:00",
    ]


def test_d08_d10_report_json_and_csv(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, "report", "stats", "--day", "2026-03-03", "--database", url, "--json"
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "report": "Collection statistics per day",
        "totals": {"days": 1},
        "rows": [
            {
                "day": "2026-03-03",
                "meters": 2,
                "on_schedule": 1,
                "recovered_by_read": 0,
                "recovered_by_meter": 0,
                "unsuccessful": 1,
                "in_progress": 0,
            }
        ],
    }
    code, out, err = cli(capsys, "report", "missing", "--database", url, "--csv")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "meter,days_missing,days,states",
        "1006,2,2026-03-02 2026-03-03,unsuccessful unsuccessful",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--day", "2026-13-01"), "headend report: --day: expected YYYY-MM-DD, got '2026-13-01'"),
        (("--json", "--csv"), "headend report: --json and --csv: choose one"),
    ],
)
def test_d10_report_bad_option_is_one_line_and_exit_2(
    url: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = cli(capsys, "report", "history", "--database", url, *argv)
    assert (code, out, err) == (2, "", message + "\n")


def test_d10_report_names_come_from_the_registry_a_new_family_appears(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from headend import reports
    from headend.reports import Report, Table

    def build(ctx: object, now_ms: int) -> Table:
        return Table("Groups", ("group", "meters"), [(1, 2)], {"groups": 1})

    family = types.SimpleNamespace(REPORTS={"groups": Report("groups", "read groups", build)})
    monkeypatch.setattr(reports, "_families", lambda: [*_real(), family])
    code, out, err = cli(capsys, "report", "groups", "--database", url, "--csv")
    assert (code, out, err) == (0, "group,meters\n1,2\n", "")


def _real() -> list[object]:
    from headend.reports import missing

    return [missing]


def test_d10_api_report_for_other_systems(url: str) -> None:
    with Headend.open(url) as he:
        t = he.report("recovery", (D + 3 * DAY) * 1000)
        assert t.records() == [
            {
                "meter": 1006,
                "days_missing": 2,
                "recovered_by_read": 0,
                "recovered_by_itself": 0,
                "partial": 0,
                "unsuccessful": 2,
                "in_progress": 0,
                "intermittent_failures": 1,
                "failed_reads": 6,
                "result": "unsuccessful",
            }
        ]
        with pytest.raises(
            InvalidData,
            match="no report 'nope'; choose one of aging, exceptions, groups, history, missing, ",
        ):
            he.report("nope", 0)
        with pytest.raises(InvalidData, match=r"report stats: unknown option\(s\) \['since'\]"):
            he.report("stats", 0, since="x")
