"""Where the firmware's heap goes, quickly (`python -m bench heap-map`).

The firmware as `firmware-heap` places it (ROMFS image of .mpy, run in place,
the image buffer excluded), without a broker: imports each module on its own
(heap after gc.collect(), qstrs added), then the running state of a booted
board (Board, App + Store + Meter, boot, a day of ticks). Seconds instead of
the 2-day run; the figures that count are `firmware-heap`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.cli import refuse
from bench.firmware_heap import CSV, build
from hil.loadprofile import ProfileError
from hil.loadprofile import read as read_profile
from tools.fwimage import ImageError, tool_path

MODULES = (
    "link.loop link.mqtt meter.errors meter.crc meter.auth meter.blocks meter.wire "
    "meter.ring meter.config_log meter.store meter.timeutil meter.recorder meter.events "
    "meter.clock meter.schedules meter.reads meter.meter hal.unix main"
)

_PROBE = """
import gc, sys, vfs, micropython
img = open(@IMG@, 'rb').read()
vfs.mount(vfs.VfsRom(img), '/rom')
sys.path.insert(0, '/rom')
def mark(tag, _l=[0]):
    gc.collect()
    a = gc.mem_alloc() - @N@
    print('@', tag, a, a - _l[0])
    _l[0] = a
mark('base')
for m in @MODS@.split():
    __import__(m)
    mark('import ' + m)
micropython.qstr_info()
import main
from hal import unix as hal
b = hal.Board(@BOARD@)
mark('Board')
app = main.App(b)
mark('App')
app.m.boot(b.now())
mark('boot')
t = b.now()
for i in range(96):
    app.m.tick(t + i * 900, False)
mark('ticks')
from meter import meter as core
core.drop_cold()
mark('idle (cold dropped)')
import time
ts = []
for i in range(21):  # what the next frame pays: importing the cold set again
    t0 = time.ticks_us()
    for m in ("downlink", "wire", "auth", "reads"):
        core.cold(m)
    ts.append(time.ticks_diff(time.ticks_us(), t0))
    core.drop_cold()
ts.sort()
print('cold re-import us median', ts[10], 'max', ts[-1])
"""


def _probe(tmp: Path, mpy: str, heap_kb: int) -> subprocess.CompletedProcess[str]:
    """Build the image, boot a board from it under `_PROBE`; the finished process."""
    img, n = build(tmp, "romfs")
    board = tmp / "board"
    board.mkdir()
    cfg = {
        "meter_id": 4711,
        "key": bytes(range(32)).hex(),
        "broker": None,
        "tick_ms": 50,
        "energy": {"csv": str(CSV)},  # as firmware-heap's board
    }
    (board / "board.json").write_text(json.dumps(cfg))
    code = (
        _PROBE.replace("@IMG@", repr(str(img)))
        .replace("@BOARD@", repr(str(board)))
        .replace("@MODS@", repr(MODULES))
        .replace("@N@", str(n))
    )
    env = dict(os.environ, MICROPYPATH=".frozen")
    return subprocess.run(
        [mpy, "-X", f"heapsize={heap_kb * 1024}", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench heap-map", description=__doc__)
    parser.add_argument("--heap-kb", type=int, default=400)
    args = parser.parse_args(argv)
    if args.heap_kb < 1:
        parser.error("--heap-kb must be >= 1")
    try:
        read_profile(CSV)  # the board refuses a CSV it cannot use: say so here, in one line
        mpy = tool_path("micropython")
        with tempfile.TemporaryDirectory(prefix="ami-heapmap-") as t:
            out = _probe(Path(t), mpy, args.heap_kb)
    except (ProfileError, ImageError) as e:
        return refuse(e)
    for line in out.stdout.splitlines():
        if line.startswith("@ "):
            parts = line.split()
            print(f"{' '.join(parts[1:-2]):<24} {int(parts[-1]):>7}  (total {int(parts[-2])})")
        elif line.startswith(("qstr pool", "cold re-import")):
            print(line)
    if out.returncode:
        print(out.stdout[-2000:], out.stderr[-2000:])
    return out.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
