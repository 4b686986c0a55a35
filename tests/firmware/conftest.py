"""Firmware tests import firmware modules the way the board does: `from meter import wire`."""

import sys
from pathlib import Path

_FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
if str(_FIRMWARE) not in sys.path:
    sys.path.insert(0, str(_FIRMWARE))

# link/loop's awaitables are generators, which CPython cannot await: its tests
# run on the MicroPython binary only (tests/test_loop_micropython.py runs them
# under pytest and fails when the binary is missing), so pytest does not
# collect them here.
collect_ignore = ["test_loop.py"]
