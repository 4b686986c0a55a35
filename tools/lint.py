"""Project lint: the rules of this repo that ruff cannot express (`make lint`).

Each finding prints `path:line: [rule] what is wrong -- what to do instead`,
and any finding makes the exit status 1. Rules read the syntax tree, so
comments, strings and aliases (`import time as t`) neither hide nor fake a hit;
text rules (`TEXT_RULES`) read every file git tracks, whatever its kind.

    python tools/lint.py            # the whole repo (tests/ and .venv skipped)
    python tools/lint.py FILE...    # only these files or folders
"""

from __future__ import annotations

import ast
import os
import subprocess
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


def _imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import, static or dynamic with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value


# --- rule: hardware modules only in firmware/hal/ ------------------------------------


@rule("hal-import", lambda rel: not rel.startswith("firmware/hal/"))
def check_hardware_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    def msg(mod: str) -> str:
        return (
            f"imports `{mod}` outside firmware/hal/ -- hardware access belongs in a HAL "
            "module (firmware/hal/<board>.py); hand logic the values or a HAL object instead"
        )

    for line, mod in _imports(tree):
        if _top(mod) in HARDWARE_MODULES:
            yield line, msg(mod)


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


# --- rules: what hil/ and bench/ may import (DESIGN "Folders") --------------------------


def _path_into(tree: ast.Module, folder: str) -> Iterator[int]:
    """Lines that build a path into `folder` (`x / "tests"`, "tests/..."): a sys.path
    entry there is an import by another name."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Div)
            and isinstance(node.right, ast.Constant)
            and node.right.value == folder
        ) or (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith(folder + "/")
        ):
            yield node.lineno


def _layer_findings(
    tree: ast.Module, side: str, banned: tuple[str, ...]
) -> Iterator[tuple[int, str]]:
    for line, mod in _imports(tree):
        top = _top(mod)
        if top in banned:
            yield (
                line,
                f"{side}/ imports `{mod}` -- {side}/ must not depend on {top}/: move what "
                f"both need to a module both may import (hil/, protocol/, firmware/)",
            )
    if "tests" in banned:
        for line in _path_into(tree, "tests"):
            yield (
                line,
                f"{side}/ builds a path into tests/ -- importing test code through sys.path "
                "is still importing tests: move the helper out of tests/",
            )


@rule("hil-layers", lambda rel: rel.startswith("hil/"))
def check_hil_layers(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """hil/ is the rig users run: it may not import the benchmarks or the tests."""
    yield from _layer_findings(tree, "hil", ("bench", "tests"))


@rule("bench-layers", lambda rel: rel.startswith("bench/"))
def check_bench_layers(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """bench/ may import everything but the tests."""
    yield from _layer_findings(tree, "bench", ("tests",))


# --- text rule: no path to the developers' own folder -----------------------------------

# Built from parts so that this file does not hold the string it bans (a hook
# greps every tracked file for it).
_DEV_FOLDER = "shared"
DEV_PATHS = (".." + "/" + _DEV_FOLDER, "/work/" + _DEV_FOLDER)

TextCheck = Callable[[str], Iterator[tuple[int, str]]]
TEXT_RULES: list[tuple[str, TextCheck]] = []


def check_dev_folder(text: str) -> Iterator[tuple[int, str]]:
    """The developers' shared folder exists on their machines only: users clone the
    repository alone, so code, tests, Makefile and docs must not point there."""
    for n, line in enumerate(text.splitlines(), start=1):
        for needle in DEV_PATHS:
            if needle in line:
                yield (
                    n,
                    f"refers to `{needle}`, which users do not have -- ship what is needed "
                    "in the repository (data/, docs next to the code) and point there",
                )


TEXT_RULES.append(("dev-folder", check_dev_folder))


# --- rule: hil/ uses the head-end only through headend.api --------------------------

HEADEND_API = "headend.api"


@rule("hil-headend-api", lambda rel: rel.startswith("hil/"))
def check_hil_headend_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """The rig is a client of the head-end: the modules behind headend.api may change."""
    for line, mod in _imports(tree):
        if _top(mod) == "headend" and mod != HEADEND_API:
            yield (
                line,
                f"imports `{mod}` in hil/ -- import what the rig needs from `{HEADEND_API}` "
                "(add it there if it is missing), so the modules behind it can change",
            )


# --- rule: the HTTP API does not import the CLI -----------------------------------------

HEADEND_CLI = "headend.cli"


@rule("http-no-cli", lambda rel: rel.startswith("headend/http/"))
def check_http_cli_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """The CLI loads the web app (`headend api`): the API calls what both need below them."""
    found = [(line, mod) for line, mod in _imports(tree) if _top_two(mod) == HEADEND_CLI]
    found += [
        (node.lineno, HEADEND_CLI)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.level == 0
        and node.module == "headend"
        and any(a.name == "cli" for a in node.names)
    ]
    for line, mod in sorted(found):
        yield (
            line,
            f"imports `{mod}` in headend/http/ -- move what the API needs out of the CLI "
            "(next to the code it belongs with, raising InvalidData or ConfigError) and "
            "import it from there in both",
        )


def _top_two(module: str) -> str:
    return ".".join(module.split(".", 2)[:2])


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


_UNVERSIONED = frozenset(
    {".git", ".venv", ".hypothesis", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)


def _unversioned_dir(name: str) -> bool:
    """Folders a checkout does not track: git's own, the venv, caches, build output."""
    return name in _UNVERSIONED or name in SKIP_DIRS - {"tests"} or name.endswith(".egg-info")


def iter_tracked_files(root: Path, paths: Iterable[Path] = ()) -> Iterator[Path]:
    """The files git tracks under `root` (or the named `paths`); outside a git
    checkout, every file not in a skipped folder (tests/ included)."""
    root = root.resolve()
    proc = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--full-name", *map(str, paths)],
        capture_output=True,
        check=False,
    )
    if proc.returncode == 0 and (root / ".git").exists():
        for rel in sorted(filter(None, proc.stdout.decode().split("\0"))):
            if (root / rel).is_file():  # a deletion not yet committed is not a file
                yield root / rel
        return
    for target in list(paths) or [root]:
        target = target.resolve()
        if target.is_file():
            yield target
            continue
        for dirpath, dirnames, filenames in os.walk(target):
            dirnames[:] = sorted(d for d in dirnames if not _unversioned_dir(d))
            for name in sorted(filenames):
                yield Path(dirpath) / name


def lint_text(rel: str, text: str) -> list[Finding]:
    """Findings of the text rules for one file's text."""
    return sorted(
        {Finding(rel, line, name, msg) for name, check in TEXT_RULES for line, msg in check(text)}
    )


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def lint_text_files(root: Path = ROOT, paths: Iterable[Path] = ()) -> list[Finding]:
    """Text-rule findings in every tracked file (binary ones read as latin-1)."""
    out: list[Finding] = []
    for path in iter_tracked_files(root, paths):
        out += lint_text(_rel(path, root), path.read_bytes().decode("latin-1"))
    return sorted(out)


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
    return lint_source(_rel(path, root), path.read_text(encoding="utf-8"))


def lint_tree(root: Path = ROOT, paths: Iterable[Path] = ()) -> list[Finding]:
    root = root.resolve()
    found = [f for path in iter_python_files(root, paths) for f in lint_file(path, root)]
    return found + lint_text_files(root, paths)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv]
    files = list(iter_python_files(ROOT, paths))
    findings = [f for path in files for f in lint_file(path, ROOT)]
    findings += lint_text_files(ROOT, paths)
    for f in findings:
        print(f)
    if findings:
        print(f"tools/lint.py: {len(findings)} finding(s)", file=sys.stderr)
        return 1
    names = [r.name for r in RULES] + [name for name, _ in TEXT_RULES]
    print(f"tools/lint.py: {len(files)} files clean ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
