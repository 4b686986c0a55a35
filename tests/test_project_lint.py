"""The project's own machinery: tools/lint.py rules, the make menu, the lock, the fixtures."""

from __future__ import annotations

import ast
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import missing
from tests.support.broker import Broker
from tests.support.db import PgSchema
from tools import lint

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def hits(root: Path, rule: str) -> list[tuple[str, int]]:
    return [(f.path, f.line) for f in lint.lint_tree(root) if f.rule == rule]


# --- hal-import ----------------------------------------------------------------------


def test_hardware_imports_outside_hal_are_found(tmp_path: Path) -> None:
    write(
        tmp_path,
        "firmware/meter/recorder.py",
        "import gc\n"
        "import machine\n"
        "from esp32 import NVS\n"
        "import network as net\n"
        "def f():\n"
        "    import machine.Pin\n"
        "    return __import__('network')\n",
    )
    write(tmp_path, "headend/x.py", "from machine import Pin  # even on CPython\n")
    assert hits(tmp_path, "hal-import") == [
        ("firmware/meter/recorder.py", 2),
        ("firmware/meter/recorder.py", 3),
        ("firmware/meter/recorder.py", 4),
        ("firmware/meter/recorder.py", 6),
        ("firmware/meter/recorder.py", 7),
        ("headend/x.py", 1),
    ]


def test_hardware_imports_inside_hal_and_lookalikes_pass(tmp_path: Path) -> None:
    write(tmp_path, "firmware/hal/esp32.py", "import machine\nimport esp32\nimport network\n")
    write(
        tmp_path,
        "firmware/app/main.py",
        "from hal import network\nfrom . import machine\nimport machinery\n"
        "s = 'import machine'  # a string is not an import\n",
    )
    assert hits(tmp_path, "hal-import") == []


# --- meter-clock ---------------------------------------------------------------------


def test_clock_reads_and_sleeps_in_meter_logic_are_found(tmp_path: Path) -> None:
    write(
        tmp_path,
        "firmware/meter/clock.py",
        "import time\n"
        "import utime as ut\n"
        "from time import gmtime, mktime\n"
        "def close(now):\n"
        "    t = time.time()\n"
        "    ut.sleep_ms(5)\n"
        "    read = time.ticks_ms\n"
        "    return time.localtime(now), mktime(gmtime(now)), time.ticks_diff(t, 1)\n",
    )
    assert hits(tmp_path, "meter-clock") == [
        ("firmware/meter/clock.py", 3),  # from time import gmtime
        ("firmware/meter/clock.py", 5),
        ("firmware/meter/clock.py", 6),
        ("firmware/meter/clock.py", 7),
        ("firmware/meter/clock.py", 8),  # time.localtime; mktime/ticks_diff are pure
    ]


def test_clock_is_allowed_outside_meter_logic(tmp_path: Path) -> None:
    src = "import time\nnow = int(time.time())\ntime.sleep(1)\n"
    write(tmp_path, "firmware/app/loop.py", src)
    write(tmp_path, "firmware/hal/unix.py", src)
    write(tmp_path, "firmware/meter/ok.py", "def due(now, period):\n    return now % period\n")
    assert hits(tmp_path, "meter-clock") == []


# --- no-assert -----------------------------------------------------------------------


def test_asserts_in_firmware_and_protocol_are_found(tmp_path: Path) -> None:
    write(tmp_path, "firmware/meter/ring.py", "def put(n):\n    assert n < 8, 'full'\n")
    write(tmp_path, "protocol/frame.py", "x = 1\nassert x\n")
    write(tmp_path, "protocol/test_frame.py", "assert True\n")
    write(tmp_path, "headend/session.py", "assert True\n")  # rule covers shipped codec only
    assert hits(tmp_path, "no-assert") == [("firmware/meter/ring.py", 2), ("protocol/frame.py", 2)]


# --- hil-layers, bench-layers --------------------------------------------------------


def test_hil_importing_bench_or_tests_is_found(tmp_path: Path) -> None:
    write(
        tmp_path,
        "hil/rig.py",
        "import bench.wire\n"
        "from tests.support import broker\n"
        "import importlib\n"
        "m = importlib.import_module('tests.conftest')\n"
        "from hil.broker import Broker\n"
        "import headend\n",
    )
    assert hits(tmp_path, "hil-layers") == [("hil/rig.py", 1), ("hil/rig.py", 2), ("hil/rig.py", 4)]


def test_bench_importing_tests_is_found_also_through_sys_path(tmp_path: Path) -> None:
    write(
        tmp_path,
        "bench/wear.py",
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.support.broker import running_broker\n"
        "sys.path.insert(0, str(Path(__file__).parents[1] / 'tests' / 'firmware'))\n"
        "sys.path.insert(0, 'tests/firmware')\n"
        "from hil.broker import Broker\n"
        "import bench.cli, protocol.frame, headend\n",
    )
    assert hits(tmp_path, "bench-layers") == [
        ("bench/wear.py", 3),
        ("bench/wear.py", 4),
        ("bench/wear.py", 5),
    ]


def test_layers_allow_what_the_design_allows(tmp_path: Path) -> None:
    write(
        tmp_path, "hil/a.py", "import protocol.frame\nfrom hil import board\ns = 'import tests'\n"
    )
    write(tmp_path, "bench/b.py", "import hil.loadprofile\nimport bench.cli\nimport testsuite\n")
    write(tmp_path, "tools/c.py", "import tests.support\n")  # not a layer these rules guard
    assert hits(tmp_path, "hil-layers") == [] and hits(tmp_path, "bench-layers") == []


# --- dev-folder (text rule) ---------------------------------------------------------------

DEV = lint.DEV_PATHS[0]  # never written out: a hook greps every tracked file for it


def test_dev_folder_is_found_in_every_kind_of_file(tmp_path: Path) -> None:
    for rel in (
        "hil/x.py",
        "tests/test_x.py",
        "README.md",
        "Makefile",
        "pyproject.toml",
        "tools/setup.sh",
        ".ci/run",
        "data/notes.txt",
    ):
        write(tmp_path, rel, f"first line\nsee {DEV}/DESIGN.md\n")
    write(tmp_path, "docs/abs.md", f"x\ny\n{lint.DEV_PATHS[1]}/STYLE.md\n")
    write(tmp_path, "docs/ok.md", "./shared, shared/ and ../share are other things\n")
    write(tmp_path, ".venv/lib/site.py", f"{DEV}\n")  # not the project's
    assert hits(tmp_path, "dev-folder") == sorted(
        [
            (".ci/run", 2),
            ("Makefile", 2),
            ("README.md", 2),
            ("data/notes.txt", 2),
            ("docs/abs.md", 3),
            ("hil/x.py", 2),
            ("pyproject.toml", 2),
            ("tests/test_x.py", 2),
            ("tools/setup.sh", 2),
        ]
    )


def test_dev_folder_rule_reads_what_git_tracks(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        missing("git not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    write(tmp_path, "docs/tracked.md", f"{DEV}\n")
    write(tmp_path, "notes.txt", f"a\n{DEV}\n")
    write(tmp_path, "untracked.md", f"{DEV}\n")  # not in the repository: not the rule's
    subprocess.run(["git", "-C", str(tmp_path), "add", "docs", "notes.txt"], check=True)
    assert hits(tmp_path, "dev-folder") == [("docs/tracked.md", 1), ("notes.txt", 2)]


def test_the_banned_path_is_written_nowhere() -> None:
    # the rule and its tests build it from parts, so the hook's grep finds nothing
    for path in (ROOT / "tools" / "lint.py", Path(__file__)):
        assert not [n for n in lint.DEV_PATHS if n in path.read_text()], path


# --- hil-headend-api -----------------------------------------------------------------


def test_hil_imports_of_headend_internals_are_found(tmp_path: Path) -> None:
    write(
        tmp_path,
        "hil/rig.py",
        "import headend.api\n"
        "from headend import api\n"
        "from headend.api import Service, meter_key\n"
        "import headend.store\n"
        "from headend.config import DEV_MASTER_KEY\n"
        "from headend import config, api as a\n"
        "def f():\n"
        "    from headend.store.records import JobState\n"
        "    return __import__('headend.service'), __import__('headend.api')\n",
    )
    write(tmp_path, "hil/scenarios/x.py", "import headend\nfrom headendx import y\n")
    assert hits(tmp_path, "hil-headend-api") == [
        ("hil/rig.py", 2),  # the one way in is the module headend.api itself
        ("hil/rig.py", 4),
        ("hil/rig.py", 5),
        ("hil/rig.py", 6),  # config, not api
        ("hil/rig.py", 8),
        ("hil/rig.py", 9),  # a dynamic import counts too
        ("hil/scenarios/x.py", 1),
    ]


def test_headend_internals_are_fine_outside_hil(tmp_path: Path) -> None:
    src = "from headend.store.records import JobState\nimport headend.config\n"
    write(tmp_path, "headend/cli/read.py", src)
    write(tmp_path, "bench/ingest.py", src)
    write(tmp_path, "tools/probe.py", src)
    assert hits(tmp_path, "hil-headend-api") == []


def test_hil_message_says_what_to_do(tmp_path: Path) -> None:
    path = write(tmp_path, "hil/fleet.py", "from headend.keys import meter_key\n")
    (finding,) = lint.lint_file(path, tmp_path)
    assert str(finding).startswith("hil/fleet.py:1: [hil-headend-api] imports `headend.keys`")
    assert "headend.api" in str(finding)


# --- http-no-cli ---------------------------------------------------------------------


def test_http_imports_of_the_cli_are_found(tmp_path: Path) -> None:
    write(
        tmp_path,
        "headend/http/operator.py",
        "from headend.api import Headend\n"
        "import headend.cli.common\n"
        "from headend import cli\n"
        "from headend import api, cli as c\n"
        "def f():\n"
        "    from headend.cli.validate import rules\n"
        "    return __import__('headend.cli')\n"
        "from headend.client import x\n"
        "import headend.clock\n",
    )
    write(tmp_path, "headend/cli/api.py", "from headend.cli.common import zone\n")
    assert hits(tmp_path, "http-no-cli") == [
        ("headend/http/operator.py", 2),
        ("headend/http/operator.py", 3),
        ("headend/http/operator.py", 4),
        ("headend/http/operator.py", 6),  # a deferred import counts too
        ("headend/http/operator.py", 7),
    ]


# --- driver --------------------------------------------------------------------------


def test_skipped_folders_and_syntax_errors(tmp_path: Path) -> None:
    write(tmp_path, "tests/test_x.py", "import machine\nassert True\n")
    write(tmp_path, ".venv/lib/machine_user.py", "import machine\n")
    write(tmp_path, "protocol/broken.py", "def f(:\n")
    found = lint.lint_tree(tmp_path)
    assert [(f.path, f.rule) for f in found] == [("protocol/broken.py", "syntax")]


def test_finding_says_where_what_and_what_instead(tmp_path: Path) -> None:
    path = write(tmp_path, "protocol/crc.py", "assert 1\n")
    (finding,) = lint.lint_file(path, tmp_path)
    text = str(finding)
    assert text.startswith("protocol/crc.py:1: [no-assert] ")
    assert " -- " in text and "raise" in text


def test_the_repo_is_clean() -> None:
    findings = lint.lint_tree(ROOT)
    assert findings == [], "\n".join(map(str, findings))
    proc = subprocess.run(
        [sys.executable, "tools/lint.py"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hypothesis_profile_follows_ci() -> None:
    import os

    from hypothesis import settings

    from tests.conftest import in_ci

    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:  # a profile picked by hand is the one in force
        assert settings().max_examples == settings.get_profile(chosen).max_examples
        return
    assert settings().max_examples == (300 if in_ci() else 30)
    assert settings().deadline is None


# --- make menu and lock ----------------------------------------------------------------


def test_make_help_lists_the_menu() -> None:
    if shutil.which("make") is None:
        missing("make not installed")  # a skip on a laptop, a failure under CI=true
    out = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    listed = set(re.findall(r"^  (\S+) ", out, re.MULTILINE))
    wanted = {"setup", "check", "lint", "test", "test-mpy", "vectors", "demo", "bench", "clean"}
    assert wanted <= listed, out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_what_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    lock: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"unpinned line in requirements.lock: {line!r}"
            lock[_norm(name)] = version
    for spec in wanted:
        name, _, version = spec.partition("==")
        name = name.split("[", 1)[0]
        assert lock.get(_norm(name)) == version, f"{spec} vs lock {lock.get(_norm(name))}"


# --- the service fixtures themselves -----------------------------------------------------

# MQTT 3.1.1 CONNECT, clean session, empty client id; the broker must answer CONNACK 0.
_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0])


def _mqtt_handshake(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(_CONNECT)
        return s.recv(4)


def test_mqtt_broker_answers_and_restarts_on_the_same_port(mqtt_broker: Broker) -> None:
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"
    assert _mqtt_handshake(mqtt_broker.host, mqtt_broker.port) == b"\x20\x02\x00\x00"
    port = mqtt_broker.port
    mqtt_broker.restart()
    assert mqtt_broker.port == port
    assert _mqtt_handshake(mqtt_broker.host, mqtt_broker.port) == b"\x20\x02\x00\x00"


def test_pg_schema_is_private_and_dropped(pg_dsn: str) -> None:
    import psycopg

    from tests.support.db import throwaway_schema

    with throwaway_schema(pg_dsn) as pg_schema:
        dsn, schema = pg_schema
        assert dsn == pg_dsn
        with psycopg.connect(pg_schema.scoped_dsn) as conn:
            conn.execute("CREATE TABLE probe (x int)")
            assert conn.execute("SELECT current_schema()").fetchone() == (schema,)
    with psycopg.connect(pg_dsn) as conn:
        gone = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    assert gone == (0,)


def test_pg_schema_fixture_unpacks(pg_schema: PgSchema) -> None:
    dsn, schema = pg_schema
    assert dsn and schema.startswith("t_")


# --- no sleeping instead of waiting, in tests (issue 10) ---------------------------------

_SLEEP_MODULES = {"time", "asyncio", "utime", "uasyncio"}
_SLEEPS = {"sleep", "sleep_ms", "sleep_us"}
# (file, enclosing function): why its sleep is not a wait for something. Keep it short.
SLEEP_ALLOWED: dict[tuple[str, str], str] = {}


class _SleepFinder(ast.NodeVisitor):
    """Every use of a sleep of time/asyncio (calls, references, any import alias) in a module;
    comments and strings are not code, so they never count."""

    def __init__(self) -> None:
        self.modules: set[str] = set()  # local names of the sleeping modules
        self.funcs: set[str] = set()  # local names of their sleep functions
        self.scope: list[str] = []
        self.found: list[tuple[int, str]] = []  # (line, enclosing qualname)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name in _SLEEP_MODULES:
                self.modules.add(a.asname or a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module in _SLEEP_MODULES:
            for a in node.names:
                if a.name in _SLEEPS:
                    self.funcs.add(a.asname or a.name)

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def visit_Attribute(self, node: ast.Attribute) -> None:
        v = node.value
        if node.attr in _SLEEPS and isinstance(v, ast.Name) and v.id in self.modules:
            self.found.append((node.lineno, ".".join(self.scope)))
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.funcs and isinstance(node.ctx, ast.Load):
            self.found.append((node.lineno, ".".join(self.scope)))


def _sleeps(path: Path) -> list[tuple[int, str]]:
    finder = _SleepFinder()
    finder.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return finder.found


def test_sleep_finder_sees_code_not_comments_or_strings(tmp_path: Path) -> None:
    src = write(
        tmp_path,
        "t.py",
        "import asyncio, time as t\n"
        "from asyncio import sleep as nap\n"
        "# time.sleep(1) in a comment\n"
        "CODE = 'time.sleep(1)'\n"
        "class A:\n"
        "    async def f(self):\n"
        "        await asyncio.sleep(0.1)\n"
        "        await nap(1)\n"
        "def g(loop):\n"
        "    t.sleep(1)\n"
        "    loop.run_in_executor(None, t.sleep, 1)\n"
        "    other.sleep(1)\n",
    )
    assert _sleeps(src) == [(7, "A.f"), (8, "A.f"), (10, "g"), (11, "g")]


def test_tests_wait_on_conditions_not_sleeps() -> None:
    found = [
        (str(p.relative_to(ROOT)), line, where)
        for p in sorted((ROOT / "tests").rglob("*.py"))
        for line, where in _sleeps(p)
    ]
    unexplained = [
        f"{path}:{line} in {where or 'the module'}"
        for path, line, where in found
        if (path, where) not in SLEEP_ALLOWED
    ]
    assert unexplained == [], (
        "a sleep in a test waits for something: use hil.wait.wait_until(condition, timeout, "
        "what) on that condition; if the sleep IS what is tested (pacing a sender, letting "
        "simulated time pass), wait on what it is for, or add it to SLEEP_ALLOWED with why"
    )
    stale = set(SLEEP_ALLOWED) - {(path, where) for path, _, where in found}
    assert not stale, f"SLEEP_ALLOWED names sleeps that are gone: {sorted(stale)}"
