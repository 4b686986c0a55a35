"""The firmware's interned names stay in 5 qstr pools (firmware/README.md "Heap").

MicroPython interns every name a .mpy brings (also for cold modules, for good)
in pools of 20, 40, 80, 160 and 320 entries: the 621st name opens a 6th pool of
640 entries, 7 KB of heap at once, which alone would break the 48 KB budget.
This loads the whole firmware as the board does (the ROMFS image of .mpy), every
cold module included, and checks the count stays below that cliff.
"""

import os
import re
import subprocess
from pathlib import Path

from tools.fwimage import build_image, tool_path

POOLS_OF_5 = 20 + 40 + 80 + 160 + 320  # names that fit before the 6th pool opens
MODULES = (
    "main hal.unix link.loop link.mqtt meter.meter meter.store meter.recorder meter.events "
    "meter.clock meter.schedules meter.downlink meter.wire meter.auth meter.reads meter.blocks "
    "meter.crc meter.hdlc meter.errors meter.optical"
)
_PROBE = """
import sys, vfs, micropython
vfs.mount(vfs.VfsRom(open(@IMG@, 'rb').read()), '/rom')
sys.path.insert(0, '/rom')
for m in @MODS@.split():
    __import__(m)
micropython.qstr_info()
"""


def test_every_firmware_module_loaded_keeps_the_names_in_five_pools(tmp_path: Path) -> None:
    img = tmp_path / "fw.romfs"
    img.write_bytes(build_image("unix"))
    code = _PROBE.replace("@IMG@", repr(str(img))).replace("@MODS@", repr(MODULES))
    out = subprocess.run(
        [tool_path("micropython"), "-X", "heapsize=1M", "-c", code],
        env=dict(os.environ, MICROPYPATH=".frozen"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = re.search(r"n_pool=(\d+), n_qstr=(\d+)", out)
    assert found, out
    pools, names = int(found.group(1)), int(found.group(2))
    print(f"{names} names in {pools} pools")
    assert names < POOLS_OF_5 and pools == 5, (pools, names)
