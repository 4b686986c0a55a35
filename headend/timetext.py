"""Times as people type them: durations (``15m``), clock times (``06:30``), zone names.

Shared by the CLI and the HTTP API (the same input reads the same in both); a value
that does not parse is InvalidData with what was expected and what arrived.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from headend.errors import InvalidData

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``900``, ``15m``, ``2h``, ``1d`` -> seconds."""
    t = text.strip().lower()
    try:
        if t and t[-1] in _UNITS:
            return int(t[:-1]) * _UNITS[t[-1]]
        return int(t)
    except ValueError as e:
        raise InvalidData(f"expected a duration like 900, 15m, 2h, got {text!r}") from e


def is_duration(text: str) -> bool:
    """``10m``, ``2h``: a number with a unit (a bare number is not told from UTC s)."""
    t = text.strip().lower()
    return len(t) > 1 and t[-1] in _UNITS and t[:-1].isdigit()


def parse_clock(text: str) -> int:
    """``HH:MM[:SS]`` -> seconds after midnight."""
    try:
        parts = [int(p) for p in text.split(":")]
        h, m, s = (parts + [0, 0])[:3]
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 60) or len(parts) > 3:
            raise ValueError(text)
    except ValueError as e:
        raise InvalidData(f"expected HH:MM or HH:MM:SS, got {text!r}") from e
    return h * 3600 + m * 60 + s


def zone(name: str) -> ZoneInfo:
    """An IANA time zone by name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidData(f"expected an IANA time zone (e.g. Europe/Paris), got {name!r}") from e
