"""Firmware tests import firmware modules the way the board does: `from meter import wire`."""

import sys
from pathlib import Path

_FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
if str(_FIRMWARE) not in sys.path:
    sys.path.insert(0, str(_FIRMWARE))
