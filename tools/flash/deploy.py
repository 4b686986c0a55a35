"""`deploy`: a bundle and a meter's config onto a board, verified there, then the meter up.

1. hash every file on the board (sha256 computed by the board);
2. write only the files whose hash differs (a progress bar each), then hash
   them again on the board: every file of the bundle and the config must match;
3. on an ESP32, the secrets into NVS (namespace ``ami``), verified by reading
   them back (hashes only cross the link back, never the values);
4. reset the board into its firmware;
5. with ``--wait-headend CONFIG``: wait until the head-end has the meter
   registered, then until an on-demand read of it (through the running
   ``headend serve``) returns its data.

`steps` is the same as the mpremote command lines a person would type (what
``--dry-run`` prints); the run itself is one mpremote session (`Session`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from headend.api import (
    Config,
    Headend,
    HeadendError,
    Job,
    JobState,
    Meter,
    ReadSpec,
    UnknownMeter,
    load,
)
from tools.flash import bundle as bundles
from tools.flash import config as configs
from tools.flash.errors import FlashError
from tools.flash.progress import Bar
from tools.flash.session import Session

POLL_S = 0.5
REQUESTER = "tools.flash"


@dataclass
class Report:
    """What a deploy did (printed as the tool's last line, JSON)."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    verified: int = 0
    nvs_written: int = 0
    registered_fw: str | None = None
    read_intervals: int | None = None  # of the first read after the reset
    read_registers: list[int] | None = None

    def summary(self) -> dict[str, object]:
        return {
            "written": len(self.written),
            "unchanged": len(self.unchanged),
            "verified": self.verified,
            "nvs_written": self.nvs_written,
            "registered_fw": self.registered_fw,
            "read_intervals": self.read_intervals,
            "read_registers": self.read_registers,
        }


def _check_pair(bundle: bundles.Bundle | None, cfg: configs.Config) -> None:
    if bundle is not None and bundle.board != cfg.target:
        raise FlashError(
            f"--bundle is built for {bundle.board}, --config is provisioned for {cfg.target}: "
            f"build with --board {cfg.target} or provision with --target {bundle.board}"
        )


def _payload(bundle: bundles.Bundle | None, cfg: configs.Config) -> dict[str, Path]:
    """Board path -> local file: the bundle's fs (none: frozen firmware), then the config's."""
    files = {name: bundle.local(name) for name in bundle.files} if bundle else {}
    files.update({name: cfg.path / name for name in cfg.files})
    return files


def steps(
    bundle: bundles.Bundle | None, cfg: configs.Config, port: str, headend: Path | None
) -> list[str]:
    """What `run` does, as mpremote command lines (``--dry-run``); no secret in them."""
    _check_pair(bundle, cfg)
    mp = ["mpremote", "connect", port]
    files = _payload(bundle, cfg)
    out = [shlex.join([*mp, "fs", "sha256sum", *(f":{n}" for n in files)])]
    dirs = sorted({n.rsplit("/", 1)[0] for n in files if "/" in n})
    out += [shlex.join([*mp, "fs", "mkdir", f":{d}"]) for d in dirs]
    out += [
        shlex.join([*mp, "fs", "cp", str(local), f":{n}"]) + "   # only if its hash differs"
        for n, local in files.items()
    ]
    out.append(shlex.join([*mp, "fs", "sha256sum", *(f":{n}" for n in files)]) + "   # verify")
    if cfg.target == "esp32":
        blobs = ", ".join(cfg.secrets)
        out.append(
            shlex.join([*mp, "exec", f"<esp32.NVS('ami').set_blob() of {blobs}; commit()>"])
            + f"   # values from {cfg.path / configs.SECRETS}, not shown"
        )
        out.append(shlex.join([*mp, "reset"]))
    else:
        out.append(f"{shlex.join([*mp, 'repl'])}   # Ctrl-D: soft reset, the board runs main.py")
    if headend is not None:
        out.append(
            f"headend meters list --config {shlex.quote(str(headend))}   "
            f"# until meter {cfg.meter_id} is registered; then `headend read {cfg.meter_id}` "
            "until it answers"
        )
    return out


def _write_files(s: Session, files: dict[str, Path], rep: Report, err: TextIO) -> None:
    local = {n: p.read_bytes() for n, p in files.items()}
    want = {n: bundles.sha256(d) for n, d in local.items()}
    on_board = s.hashes(list(files))
    for name, data in local.items():
        if on_board.get(name) == want[name]:
            rep.unchanged.append(name)
            continue
        bar = Bar(name, len(data), err)
        s.write(name, data, bar.update)
        bar.finish()
        rep.written.append(name)
    if rep.written:
        on_board.update(s.hashes(rep.written))
    bad = [n for n in files if on_board.get(n) != want[n]]
    if bad:
        raise FlashError(f"{s.port}: {', '.join(bad)}: the board's sha256 differs after writing")
    rep.verified = len(files)


def _write_nvs(s: Session, secrets: dict[str, str], rep: Report) -> None:
    blobs = {k: bytes.fromhex(v) for k, v in secrets.items()}
    back = s.write_nvs(blobs)
    bad = [k for k, v in blobs.items() if back.get(k) != bundles.sha256(v)]
    if bad:
        raise FlashError(f"{s.port}: NVS {', '.join(bad)}: not as written when read back")
    rep.nvs_written = len(blobs)


def _open(cfg: Config) -> Headend:
    try:
        return Headend.open(cfg)
    except HeadendError as e:
        raise FlashError(f"--wait-headend: the head-end's database: {e}") from None


def headend_config(path: Path) -> Config:
    try:
        return load(path)
    except HeadendError as e:
        raise FlashError(f"--wait-headend {path}: {e}") from None


def _registered(cfg: Config, meter_id: int) -> Meter | None:
    with _open(cfg) as he:
        try:
            return he.meter(meter_id)
        except UnknownMeter:
            return None


def _read(cfg: Config, meter_id: int, budget_s: float) -> Job:
    """One on-demand read (H05) through the running service, as `headend read` makes it."""
    created = int(time.time() * 1000) if cfg.speed == 1 and cfg.clock_start == 0 else 0
    with _open(cfg) as he:
        job_id = he.request_read(ReadSpec(meter_id), REQUESTER, created)
        job = he.wait_job(job_id, budget_s)
        if job.closed:
            he.acknowledge_job(job_id, int(time.time() * 1000) if created else job.done_ms or 0)
    return job


def wait_headend(
    cfg: Config, meter_id: int, timeout_s: float, say: Callable[[str], None], rep: Report
) -> None:
    """Until the head-end has the meter registered, then until a read of it returns data.

    A meter answers a read once it holds an interval (until then it nacks
    not_held), and an on-demand read gives the intervals since its local midnight:
    none in the first interval of a day. Either way the read is asked again every
    quarter interval (real seconds), until one returns an interval.
    """
    end = time.monotonic() + timeout_s

    def left(what: str) -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise FlashError(
                f"meter {meter_id}: no {what} at the head-end within {timeout_s:g} s "
                "(is the broker reachable from the board? `headend log` says more)"
            )
        return remaining

    while (m := _registered(cfg, meter_id)) is None:
        left("registration")
        time.sleep(POLL_S)
    rep.registered_fw = m.fw_version
    say(f"meter {meter_id} registered at the head-end ({m.fw_version})")
    every = min(60.0, max(1.0, m.interval_s / cfg.speed / 4))
    while True:
        job = _read(cfg, meter_id, left("data"))
        if job.state is JobState.DONE:
            data = json.loads(job.result or "{}")
            rep.read_intervals = len(data.get("intervals", []))
            rep.read_registers = (data.get("registers") or {}).get("values")
            say(f"meter {meter_id}: a read returned {rep.read_intervals} interval(s)")
            if rep.read_intervals:
                return
        time.sleep(min(every, left("data")))


def run(
    bundle: bundles.Bundle | None,
    cfg: configs.Config,
    port: str,
    headend: Path | None = None,
    timeout_s: float = 1200.0,
    say: Callable[[str], None] = print,
    err: TextIO | None = None,
) -> Report:
    """Deploy (see the module doc); FlashError at the first step that fails."""
    _check_pair(bundle, cfg)
    rep = Report()
    files = _payload(bundle, cfg)
    he_cfg = headend_config(headend) if headend is not None else None
    s = Session(port)
    try:
        if (s.platform == "esp32") != (cfg.target == "esp32"):
            raise FlashError(
                f"{port}: the board is a {s.platform} one, the config is for {cfg.target}"
            )
        _write_files(s, files, rep, err or sys.stderr)
        say(
            f"files: {len(rep.written)} written, {len(rep.unchanged)} unchanged, "
            f"{rep.verified} verified by sha256 on the board"
        )
        if cfg.secrets:
            _write_nvs(s, cfg.secrets, rep)
            say(f"NVS: {rep.nvs_written} secret(s) written and verified (values not shown)")
        say("resetting the board")
        s.reset()
    finally:
        s.close()
    if he_cfg is not None:
        wait_headend(he_cfg, cfg.meter_id, timeout_s, say, rep)
    return rep
