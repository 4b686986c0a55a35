"""Project lint: the rules of this repo that ruff cannot express (`make lint`).

Each finding prints `path:line: [rule] what is wrong -- what to do instead`,
and any finding makes the exit status 1. Rules read the syntax tree, so
comments, strings and aliases (`import time as t`) neither hide nor fake a hit.

    python tools/lint.py            # the whole repo (tests/ and .venv skipped)
    python tools/lint.py FILE...    # only these files or folders
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Test code may use anything; build output and venvs are not ours.
SKIP_DIRS = frozenset({"tests", "build", "dist", "node_modules", "__pycache__", "var"})

HARDWARE_MODULES = frozenset({"machine", "esp32", "network"})
CLOCK_MODULES = frozenset({"time", "utime"})
# Reading a clock, or blocking: meter logic gets `now` as an argument instead.
CLOCK_READ = frozenset(
    {"time", "time_ns", "ticks_ms", "ticks_us", "ticks_cpu"}
    | {"monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"}
)
CLOCK_SLEEP = frozenset({"sleep", "sleep_ms", "sleep_us"})
# Epoch/zone conversions: the ESP32 counts from 2000, so only the HAL converts.
CLOCK_CONVERT = frozenset({"localtime", "gmtime"})
CLOCK_BANNED = CLOCK_READ | CLOCK_SLEEP | CLOCK_CONVERT


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


Check = Callable[[ast.Module], Iterator[tuple[int, str]]]


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[str], bool]  # gets the repo-relative posix path
    check: Check


RULES: list[Rule] = []


def rule(name: str, applies: Callable[[str], bool]) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        RULES.append(Rule(name, applies, check))
        return check

    return register


def _is_test_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def _top(module: str) -> str:
    return module.split(".", 1)[0]


# --- rule: hardware modules only in firmware/hal/ ------------------------------------


@rule("hal-import", lambda rel: not rel.startswith("firmware/hal/"))
def check_hardware_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    def msg(mod: str) -> str:
        return (
            f"imports `{mod}` outside firmware/hal/ -- hardware access belongs in a HAL "
            "module (firmware/hal/<board>.py); hand logic the values or a HAL object instead"
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _top(alias.name) in HARDWARE_MODULES:
                    yield node.lineno, msg(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and _top(node.module) in HARDWARE_MODULES:
                yield node.lineno, msg(node.module)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            arg = node.args[0] if node.args else None
            if (
                isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _top(arg.value) in HARDWARE_MODULES
            ):
                yield node.lineno, msg(arg.value)


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


# --- rule: no clocks or sleeps in firmware/meter/ -----------------------------------


def _clock_advice(name: str) -> str:
    if name in CLOCK_SLEEP:
        return "meter logic must not block: return when to act next and let the app loop wait"
    if name in CLOCK_CONVERT:
        return (
            "convert with integer arithmetic on UTC seconds (e.g. now // 86400): gmtime "
            "counts from 2000 on the ESP32 and localtime applies a zone; the HAL converts"
        )
    return "meter logic is handed `now` (UTC seconds) by the app loop: take it as an argument"


@rule("meter-clock", lambda rel: rel.startswith("firmware/meter/"))
def check_meter_clock(tree: ast.Module) -> Iterator[tuple[int, str]]:
    module_names: set[str] = set()  # local names bound to the time/utime module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in CLOCK_MODULES:
                    module_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in CLOCK_MODULES:
            for alias in node.names:
                if alias.name in CLOCK_BANNED or alias.name == "*":
                    yield (
                        node.lineno,
                        f"imports `{alias.name}` from `{node.module}` in meter logic -- "
                        + _clock_advice(alias.name),
                    )
    # Attribute access, called or not: `f = time.time` is the same leak as `time.time()`.
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_names
            and node.attr in CLOCK_BANNED
        ):
            yield (
                node.lineno,
                f"uses `{node.value.id}.{node.attr}` in meter logic -- " + _clock_advice(node.attr),
            )


# --- rule: no assert in shipped firmware/protocol code -------------------------------


@rule(
    "no-assert",
    lambda rel: rel.startswith(("firmware/", "protocol/")) and not _is_test_file(rel),
)
def check_asserts(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            yield (
                node.lineno,
                "`assert` vanishes under -O (and mpy-cross -O) and must not validate input -- "
                "check explicitly and raise this side's error (e.g. `if n > MAX: raise "
                "FrameError(...)`)",
            )


# --- rule: hil/ uses the head-end only through headend.api --------------------------

HEADEND_API = "headend.api"


def _headend_module(module: str) -> bool:
    return module == "headend" or module.startswith("headend.")


@rule("hil-headend-api", lambda rel: rel.startswith("hil/"))
def check_hil_headend_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    def msg(mod: str) -> str:
        return (
            f"imports `{mod}` in hil/ -- the rig is a client of the head-end: import what it "
            f"needs from `{HEADEND_API}` (add it there if it is missing), so the modules "
            "behind it can change"
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _headend_module(alias.name) and alias.name != HEADEND_API:
                    yield node.lineno, msg(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "headend":  # `from headend import api` is the one way in
                bad = [a.name for a in node.names if a.name != "api"]
                for name in bad:
                    yield node.lineno, msg(f"headend.{name}")
            elif _headend_module(node.module) and node.module != HEADEND_API:
                yield node.lineno, msg(node.module)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            arg = node.args[0] if node.args else None
            if (
                isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _headend_module(arg.value)
                and arg.value != HEADEND_API
            ):
                yield node.lineno, msg(arg.value)


# --- driver ------------------------------------------------------------------------


def _skipped_dir(name: str) -> bool:
    return name in SKIP_DIRS or name.startswith(".") or name.endswith(".egg-info")


def iter_python_files(root: Path, paths: Iterable[Path] = ()) -> Iterator[Path]:
    """The .py files to lint under `root` (or under `paths`), in a stable order.

    A file named explicitly is linted even inside a skipped folder.
    """
    for target in list(paths) or [root]:
        target = target.resolve()
        if target.is_file():
            if target.suffix == ".py":
                yield target
            continue
        # os.walk with pruning: never descend into .venv and friends at all.
        for dirpath, dirnames, filenames in os.walk(target):
            dirnames[:] = sorted(d for d in dirnames if not _skipped_dir(d))
            for name in sorted(filenames):
                if name.endswith(".py"):
                    yield Path(dirpath) / name


def lint_source(rel: str, source: str) -> list[Finding]:
    """Findings for one file's text; `rel` is its repo-relative posix path."""
    rules = [r for r in RULES if r.applies(rel)]
    if not rules:
        return []
    try:
        tree = ast.parse(source, filename=rel)
    except SyntaxError as e:
        return [Finding(rel, e.lineno or 1, "syntax", f"cannot parse: {e.msg} -- fix the syntax")]
    found = {Finding(rel, line, r.name, msg) for r in rules for line, msg in r.check(tree)}
    return sorted(found)


def lint_file(path: Path, root: Path = ROOT) -> list[Finding]:
    path = path.resolve()
    try:
        rel = path.relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = path.as_posix()
    return lint_source(rel, path.read_text(encoding="utf-8"))


def lint_tree(root: Path = ROOT, paths: Iterable[Path] = ()) -> list[Finding]:
    root = root.resolve()
    return [f for path in iter_python_files(root, paths) for f in lint_file(path, root)]


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv]
    files = list(iter_python_files(ROOT, paths))
    findings = [f for path in files for f in lint_file(path, ROOT)]
    for f in findings:
        print(f)
    if findings:
        print(f"tools/lint.py: {len(findings)} finding(s)", file=sys.stderr)
        return 1
    print(f"tools/lint.py: {len(files)} files clean ({', '.join(r.name for r in RULES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
