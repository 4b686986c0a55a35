"""Fixtures of the HIL tests: the real MicroPython binary and a private mosquitto.

On a developer machine a missing one skips; under CI=true it fails (never a skip).
"""

from __future__ import annotations

import pytest

from hil.broker import find_mosquitto
from tests.conftest import missing
from tests.support.mpy import MicroPythonMissing, micropython_binary


@pytest.fixture
def mpy_present() -> None:
    """The venv's micropython binary (`make setup`)."""
    try:
        micropython_binary()
    except MicroPythonMissing as e:
        missing(str(e))


@pytest.fixture
def rig_parts(mpy_present: None) -> None:
    """MicroPython and mosquitto, for anything that runs a Rig."""
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
