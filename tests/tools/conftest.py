"""Fixtures of the tool tests (flash, probe): the HIL parts, as tests/hil has them."""

from tests.hil.conftest import mpy_present, rig_parts

__all__ = ["mpy_present", "rig_parts"]
