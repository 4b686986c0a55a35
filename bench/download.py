"""Optical download benchmark (M18, N06): a real download from a virtual board
holding ``--days`` of the reference profile, over a link paced like the optical
port, with figures as one JSON line.

    python -m bench download --days 45 --baud 19200 [--baud 9600] [--json]

1. Prefill: the firmware's own meter core runs on CPython against a NOR-flash
   model for ``--days`` simulated days of the profile (15-minute rows, every
   channel), offline, then the image becomes the board's ``flash.bin``.
2. The virtual board (MicroPython binary, `hil.board`) boots on that flash at
   the end of those days.
3. For each ``--baud``: the probe's own download (`tools.probe.session`) through
   a pacing proxy: every byte takes 10 bit times (start, 8 data, stop; 7E1's
   parity bit in place of the 8th) at the line's baud, which is 300 until the
   option select and the agreed baud after it; the line is half-duplex, and
   each change of direction costs a turnaround of 2 character times plus
   ``--turnaround-ms`` (default 200 ms, IEC 62056-21's minimum reaction time
   tr). ``seconds`` runs from the sign-on to the last part; ``bytes`` counts
   both directions on the line (HDLC flags and escapes included).

The first ``--baud`` is the headline (``baud``, ``seconds``, ``bytes``); every
run is in ``runs``. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import refuse
from hil.board import BoardError, BoardSpec, VirtualBoard
from hil.broker import free_port
from hil.loadprofile import DEFAULT_CSV, ProfileError
from hil.loadprofile import read as read_profile
from protocol import download as dl
from protocol import iec62056 as iec
from protocol.auth import probe_key
from tools.probe.errors import ProbeError
from tools.probe.port import Port
from tools.probe.session import download

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
METER_ID = 4711  # hal.hostkit's meter: the prefill runs as it, the board boots as it
OPERATOR = 7
T_END = 1772323200  # 2026-03-01T00:00:00Z: the board boots here, the days end here
STEP = 300  # prefill tick (3 a 15-minute row)
TURNAROUND_CHARS = 2
_OPTION = re.compile(rb"\x06[02]([0-6])[02]\r\n")


def prefill(flash_file: Path, days: int, csv: Path) -> int:
    """Run the meter core for ``days`` ending at T_END, online with a head-end that
    acknowledges everything (normal operation); write its flash; intervals held."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    from hal.hostkit import Board, Head
    from meter import store

    rows = read_profile(csv).rows
    board = Board(now=T_END - days * 86400)
    board.boot()
    head = Head(keep=False)
    per_row = 900 // STEP
    for n in range(days * 86400 // 900):
        row = rows[n % len(rows)]
        for k in range(per_row):
            wh = tuple(v // per_row + (1 if k < v % per_row else 0) for v in row)
            board.run(STEP, step=STEP, wh=wh, head=head)
    flash_file.write_bytes(bytes(board.flash.data))
    return len(list(store.Store(board.flash).mount().intervals()))


class PacedLine:
    """A half-duplex optical line between the probe (TCP client) and the board."""

    def __init__(self, board_port: int, turnaround_s: float) -> None:
        self.board_port = board_port
        self.turnaround_s = turnaround_s
        self.baud = iec.SIGN_ON_BAUD
        self.bytes = 0
        self.line_s = 0.0  # the bytes' own time on the line (at the baud of the moment)
        self.turnarounds = 0
        self._free_at = 0.0
        self._last: str | None = None
        self._lock = asyncio.Lock()
        self._tail = b""
        self._tasks: set[asyncio.Task[None]] = set()

    async def _carry(self, direction: str, data: bytes, w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            at = max(loop.time(), self._free_at)
            if self._last is not None and direction != self._last:
                at += TURNAROUND_CHARS * 10 / self.baud + self.turnaround_s
                self.turnarounds += 1
            self._last = direction
            piece = max(1, self.baud // 100)  # ~10 ms of line time per write
            for i in range(0, len(data), piece):
                chunk = data[i : i + piece]
                at += len(chunk) * 10 / self.baud
                self.line_s += len(chunk) * 10 / self.baud
                await asyncio.sleep(max(0.0, at - loop.time()))
                w.write(chunk)
                await w.drain()
                self.bytes += len(chunk)
            self._free_at = at
            if direction == "up":
                self._tail = (self._tail + data)[-16:]
                m = _OPTION.search(self._tail)
                if m is not None:
                    self.baud = iec.BAUDS[int(m.group(1))]
                    self._tail = b""

    async def _pump(self, direction: str, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(4096):
                await self._carry(direction, data, w)
        w.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", self.board_port)
        ups = asyncio.create_task(self._pump("up", r, bw))
        downs = asyncio.create_task(self._pump("down", br, w))
        self._tasks |= {ups, downs}
        await asyncio.gather(ups, downs, return_exceptions=True)

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._client, "127.0.0.1", free_port())

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    spec = BoardSpec(meter_id=METER_ID, flash_dir=tmp / "board", sim_start=T_END, csv=args.csv)
    spec.flash_dir.mkdir()
    t0 = time.perf_counter()
    held = prefill(spec.flash_dir / "flash.bin", args.days, args.csv)
    prefill_s = time.perf_counter() - t0
    print(
        f"prefill: {args.days} days, {held} intervals on flash ({prefill_s:.1f} s)", file=sys.stderr
    )
    k_op = probe_key(spec.key, OPERATOR)
    runs = []
    async with VirtualBoard(spec) as board:
        port = int(board.optical_url.rsplit(":", 1)[1])
        for baud in args.baud:
            line = PacedLine(port, args.turnaround_ms / 1000)
            server = await line.serve()
            url = f"socket://127.0.0.1:{server.sockets[0].getsockname()[1]}"

            def probe(url: str = url, baud: int = baud) -> tuple[float, dl.Content, int]:
                with Port(url) as p:
                    t = time.perf_counter()
                    got = download(p, meter=METER_ID, operator=OPERATOR, k_op=k_op, baud=baud)
                    took = time.perf_counter() - t
                doc = dl.build(
                    meter=METER_ID,
                    operator=OPERATOR,
                    key_version=0,
                    downloaded_at="",
                    tool="bench",
                    frames=got.frames,
                    k_op=k_op,
                )
                return took, dl.verify(doc, k_op), got.attempts

            try:
                took, content, attempts = await asyncio.to_thread(probe)
            finally:
                server.close()
                await line.close()
                await server.wait_closed()
            counts = dl.summary(content)
            run = {
                "baud": baud,
                "seconds": round(took, 2),
                "bytes": line.bytes,
                "line_s": round(line.line_s, 2),
                "turnarounds": line.turnarounds,
                "intervals": counts["intervals"],
                "frames": counts["frames"],
                "events": counts["events"],
                "midnight": counts["midnight"],
                "attempts": attempts,
            }
            runs.append(run)
            print(
                f"{baud:>6} baud: {run['bytes']} bytes on the line, {run['seconds']} s, "
                f"{run['intervals']} intervals in {run['frames']} parts",
                file=sys.stderr,
            )
            # the meter's binary mode ends 5 s after the last byte: the next run signs on anew
            await asyncio.sleep(5.5)
    head = runs[0]
    out: dict[str, Any] = {
        "bench": "download",
        "days": args.days,
        "baud": head["baud"],
        "bytes": head["bytes"],
        "seconds": head["seconds"],
        "intervals": head["intervals"],
        "held_on_flash": held,
        "turnaround_ms": args.turnaround_ms,
        "prefill_s": round(prefill_s, 1),
        "runs": runs,
    }
    for r in runs[1:]:
        out[f"seconds_at_{r['baud']}"] = r["seconds"]
    return out


def _baud(text: str) -> int:
    if not text.isdigit() or int(text) not in iec.BAUDS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, iec.BAUDS))}")
    return int(text)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench download", description=__doc__)
    p.add_argument("--days", type=int, default=45, help="days of data on the board (default 45)")
    p.add_argument(
        "--baud",
        type=_baud,
        action="append",
        help="line speed after the option select; repeat for more runs (default 19200 and 9600)",
    )
    p.add_argument("--turnaround-ms", type=int, default=200, help="per direction change, + 2 chars")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="load profile (15-minute rows)")
    p.add_argument("--json", action="store_true", help="(the last line is JSON in any case)")
    args = p.parse_args(argv)
    if not 1 <= args.days <= 60:
        p.error("--days must be 1..60 (the board's flash holds 45 days and some)")
    args.baud = args.baud or [19200, 9600]
    if args.baud == [19200] or args.baud == [9600]:
        args.baud.append(9600 if args.baud[0] == 19200 else 19200)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            out = asyncio.run(_run(args, Path(tmp)))
    except (BoardError, ProbeError, ProfileError, dl.BadDownload) as e:
        return refuse(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(out))
    return 0
