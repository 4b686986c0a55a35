"""Engineering units: raw register counts to Wh/varh, exactly.

A stored datum is the meter's raw integer. Its engineering value is

    raw x channel multiplier x 10**scaler x meter multiplier   (in the channel's unit)

computed with Python integers and `decimal.Decimal` built from exact digits,
never floats (STYLE 5: energy is integer). Stores keep the raw integer and the
factors (meter and channel rows), so a translation can always be redone.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from headend.errors import InvalidData
from protocol.codes import ChannelKind, Unit

__all__ = ["ChannelKind", "Quantity", "Scale", "Unit"]

U16_MAX = 0xFFFF


@dataclass(frozen=True, slots=True)
class Quantity:
    """An exact engineering value with its unit."""

    value: Decimal
    unit: Unit

    def __str__(self) -> str:
        return f"{self.value} {self.unit.symbol}"


@dataclass(frozen=True, slots=True)
class Scale:
    """The factors that turn a channel's raw integer into engineering units.

    Attributes:
        unit: unit of the channel.
        channel_multiplier: u16, >= 1, reported by the meter per channel.
        scaler: power of ten, i8 (-128..127).
        meter_multiplier: u16, >= 1 (e.g. CT ratio), per meter.
    """

    unit: Unit
    channel_multiplier: int = 1
    scaler: int = 0
    meter_multiplier: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", _unit(self.unit))
        for name in ("channel_multiplier", "meter_multiplier"):
            v = getattr(self, name)
            if type(v) is not int or not 1 <= v <= U16_MAX:
                raise InvalidData(f"{name}: expected an int 1..{U16_MAX}, got {v!r}")
        if type(self.scaler) is not int or not -128 <= self.scaler <= 127:
            raise InvalidData(f"scaler: expected an int -128..127, got {self.scaler!r}")

    @property
    def factor(self) -> int:
        """channel multiplier x meter multiplier (the integer part of the scale)."""
        return self.channel_multiplier * self.meter_multiplier

    def engineering(self, raw: int) -> Decimal:
        """Exact engineering value of ``raw`` as a Decimal (no rounding, any size)."""
        # A Decimal built from a digit string is exact whatever the context precision;
        # scaleb() or multiplication would round to the context's 28 digits.
        return Decimal(f"{raw * self.factor}E{self.scaler}")

    def quantity(self, raw: int) -> Quantity:
        """``raw`` as an exact `Quantity` in the channel's unit."""
        return Quantity(self.engineering(raw), self.unit)

    def milli(self, raw: int) -> int:
        """Engineering value in milli-units (mWh, mvarh) as an exact int.

        Raises:
            InvalidData: the value is not a whole number of milli-units
                (only possible when ``scaler < -3``).
        """
        n = raw * self.factor
        e = self.scaler + 3
        if e >= 0:
            return n * _pow10(e)
        q, r = divmod(n, _pow10(-e))
        if r:
            raise InvalidData(f"{raw} x 10^{self.scaler} is not a whole number of milli-units")
        return q


def _pow10(e: int) -> int:
    """10**e for e >= 0, typed as int."""
    return int("1" + "0" * e)


def _unit(u: int) -> Unit:
    try:
        return Unit(u)
    except ValueError:
        raise InvalidData(f"unit: expected one of {[int(x) for x in Unit]}, got {u!r}") from None
