"""`Board`: what a scenario does with a board, virtual or real.

`hil.board.VirtualBoard` (the firmware on the MicroPython binary) and
`hil.realboard.RealBoard` (an ESP32 on a serial line, reset through its
console's RTS/DTR) both implement it, so the scenario code that cuts power
and reads meters (`hil.scenarios.powercut`, `hil.scenarios.ondemand`) is the
same for both; only what a real board cannot give (its flash) is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hil.board import FlashImage


class Board(Protocol):
    """One meter under test."""

    @property
    def meter_id(self) -> int: ...

    @property
    def powered(self) -> bool: ...

    async def power_cut(self) -> None:
        """Take the power away without warning (RAM lost; flash and RTC stay)."""
        ...

    async def power_up(self) -> None:
        """Power on and wait until the firmware runs again."""
        ...

    async def last_closed(self) -> int | None:
        """Start of the last interval the meter has closed (None: none yet)."""
        ...

    async def flash_at_rest(self) -> FlashImage | None:
        """Power the board off and decode its flash; None if out of the rig's reach."""
        ...
