"""What every `headend` command shares: parsing, opening the database, output.

Exit codes: 0 ok; 1 failed (a read failed or timed out, the database is
missing, unreachable or at another schema version); 2 usage (bad arguments,
unknown meter, a value the rules refuse, a path that cannot be used).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from headend.api import Config, Headend, MissingDatabase, SchemaError, load
from headend.errors import HeadendError
from headend.mdms.ingest import iso
from headend.timetext import is_duration, parse_duration
from headend.timetext import zone as zone  # the commands' zone: the API's (InvalidData, exit 2)

OK, FAILED, USAGE = 0, 1, 2

EPILOG = (
    "Configuration: defaults < --config FILE (TOML, [headend] table) < AMI_<KEY> env "
    "< flags. Exit codes: 0 ok, 1 failed (read failed or timed out, database missing, "
    "down or at another schema version), 2 usage (bad arguments, unknown meter, bad value)."
)


class Usage(HeadendError):
    """A command-line argument that cannot be used (exit 2)."""


class Failed(HeadendError):
    """The command could not do its work (exit 1); the message says why and what to do."""


# -- parsing (durations, clock times, zones: headend.timetext) ---------------------------


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


def parse_since(text: str, tz: ZoneInfo, now_s: float) -> int:
    """``--since``: an ISO date/time, UTC s, or a duration back from now (``10m``, ``2h``)."""
    if is_duration(text):
        return int(now_s) - parse_duration(text)
    try:
        return parse_time(text, tz)
    except Usage:
        raise Usage(
            f"expected an ISO date/time (2024-04-01T06:00), UTC s, or a time back from now "
            f"(10m, 2h, 1d), got {text!r}"
        ) from None


def non_negative(text: str) -> int:
    """An argparse type: a count (0 or more)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {n}")
    return n


def now_ms() -> int:
    return int(time.time() * 1000)


# -- configuration and the database ------------------------------------------------------


def config_from(args: argparse.Namespace) -> Config:
    overrides = {
        "database": args.database,
        "broker": args.broker,
        "insecure": getattr(args, "insecure", None),
        **{k: v for k, v in getattr(args, "overrides", {}).items() if v is not None},
    }
    return load(args.config, **overrides)


def redact(url: str) -> str:
    """A URL fit for logs and messages: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL (None for PostgreSQL or in-memory)."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    if "://" in path or path in ("", ":memory:"):
        return None
    return Path(path)


@contextlib.contextmanager
def open_headend(cfg: Config) -> Iterator[Headend]:
    """The database of ``cfg``, at this head-end's schema, closed on exit.

    Raises Failed with what to do when it is missing or at another version.
    """
    db = redact(cfg.database)
    try:
        he = Headend.open(cfg)
    except MissingDatabase:
        raise Failed(
            f"no database at {db}: create it with `headend db init` "
            "(or point --database / AMI_DATABASE at an existing one)"
        ) from None
    except SchemaError as e:
        if e.have is not None and e.want is not None and e.have < e.want:
            raise Failed(
                f"database {db} is at schema version {e.have}, this head-end needs "
                f"{e.want}: run `headend db migrate`"
            ) from None
        raise
    try:
        yield he
    finally:
        he.close()


# -- output ------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def secs(ms: object) -> str:
    return f"{ms / 1000:.1f} s" if isinstance(ms, int) else "-"


def dash(v: object) -> str:
    """A value for a human: ``-`` for nothing (never ``None``)."""
    return "-" if v is None else str(v)


def when(ms: int | None) -> str:
    return "-" if ms is None else iso(ms // 1000)


def emit(args: argparse.Namespace, obj: Any, human: Callable[[], str]) -> None:
    print(json.dumps(obj, indent=1, default=str) if args.json else human())


def screen_lines(default: int = 20) -> int:
    """Lines that fill the terminal (less 2 for the prompt); ``default`` when not one."""
    if not sys.stdout.isatty():
        return default
    return max(1, shutil.get_terminal_size((80, default + 2)).lines - 2)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (see `atomic_text`)."""
    with atomic_text(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_text(path: Path) -> Iterator[TextIO]:
    """A text file object on a temp file beside ``path``, renamed to ``path`` only when
    the block ends without an error (streamed output, whole or not at all).

    Raises Usage when the folder is not there or cannot be written.
    """
    folder = path.parent
    if not folder.is_dir():
        raise Usage(f"cannot write {path}: no folder {folder}")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise Usage(f"cannot write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise Usage(f"cannot write {path}: {e.strerror}") from e
        raise


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
            self.shown = False


# -- the parser --------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--config", type=Path, metavar="FILE", help="TOML config file ([headend] table)")
    g.add_argument(
        "--database", metavar="URL", help="sqlite:///path or postgresql://... (AMI_DATABASE)"
    )
    g.add_argument(
        "--broker", metavar="URL", help="mqtts://user@host:port (AMI_BROKER; TLS, port 8883)"
    )
    g.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="allow a plain mqtt:// broker (no TLS; a lab only; AMI_INSECURE)",
    )
    g.add_argument("--json", action="store_true", help="machine-readable JSON output")
    g.add_argument("-v", "--verbose", action="store_true", help="more logging")
    return p


Sub = Any  # argparse's _SubParsersAction (private type)


def add_command(sub: Sub, common: argparse.ArgumentParser, name: str, help_: str) -> Any:
    """A command's parser, with the common options and the epilog."""
    return sub.add_parser(name, help=help_, description=help_, parents=[common], epilog=EPILOG)
