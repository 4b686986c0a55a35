"""Every code both ends of the wire share, named once (SPEC "Message types").

The head-end imports these; the meter firmware, which cannot import
`protocol` on MicroPython, keeps its own ``const()`` copies, and
tests/protocol/test_codes.py reads them from the firmware's source and checks
them against this module, so the two cannot drift apart.

Beside the wire codes, the head-end's policy on a meter's nack is here too
(which nacks end a read for good, which say nothing about a schedule), since
it is a statement about what each code means.
"""

from __future__ import annotations

import enum


class Nack(enum.IntEnum):
    """``nack.reason`` (both directions), and a schedule_ack/config_ack status != 0."""

    BAD_CRC = 1
    UNKNOWN_TYPE = 2
    AUTH_FAILED = 3
    REPLAY = 4
    NOT_HELD = 5
    BUSY = 6
    BAD_PARAMETER = 7
    UNSUPPORTED_VERSION = 8
    MALFORMED = 9
    NOT_REGISTERED = 10


class Event(enum.IntEnum):
    """Meter event codes (SPEC "Event"); ``data`` says more for some."""

    POWER_DOWN = 1
    POWER_UP = 2
    CLOCK_ADJUSTED = 3  # data = old time
    CLOCK_OUT_OF_SYNC = 4  # data = |offset| s
    SYNC_FAILED = 5
    SCHEDULE_CHANGED = 6  # data = slot
    READ_FAILED = 7
    CONFIG_CHANGED = 8  # data = key
    DOWNLOAD_GRANTED = 9  # data = operator
    DOWNLOAD_DENIED = 10
    TAMPER = 11
    SELF_TEST = 12  # data = result
    AUTH_FAILED = 13
    READ_UNANSWERABLE = 14
    INTERVAL_CHANGED = 15  # data = new interval_s
    MESSAGE_SENT = 16  # data = message type


class Flag(enum.IntFlag):
    """Per-interval status flags (SPEC "Status flags")."""

    POWER_FAILED = 0x01
    CLOCK_ADJUSTED = 0x02
    PARTIAL = 0x04
    RECOVERED = 0x08
    INVALID = 0x10


#: every defined status flag; the other bits of the byte are reserved (must be 0)
FLAG_BITS = 0x1F
RESERVED_FLAGS = 0xFF & ~FLAG_BITS


class ConfigKey(enum.IntEnum):
    """``config_set`` item keys."""

    INTERVAL_S = 1
    UTC_OFFSET_MIN = 2
    PUSH_MASK = 3
    METER_MULTIPLIER = 4
    RESET_REGISTRATION = 5


class ReadMode(enum.IntEnum):
    """``read_request.mode``."""

    PERIOD = 0  # [start, end)
    SINCE_ACK = 1  # everything since the last acknowledged interval
    ON_DEMAND = 2  # since local midnight, with the current registers


class ReadKind(enum.IntEnum):
    """``read_response.kind``: what the meter is answering."""

    SCHEDULED = 0  # a schedule slot fired (request_seq 0)
    ON_DEMAND = 1
    PERIOD = 2


class What(enum.IntFlag):
    """``what`` bits of a read_request and a schedule slot."""

    INTERVALS = 1
    REGISTERS = 2
    MIDNIGHT = 4
    EVENTS = 8


WHAT_ALL = 15


class SlotAction(enum.IntEnum):
    """``Slot.action`` of a schedule_set."""

    SET = 0
    CANCEL = 1


#: schedule slots a meter has; slot 0 is the default daily read
NSLOTS = 4


class RegisterStatus(enum.IntEnum):
    """``register_ack.status``."""

    ACCEPTED = 0
    REJECTED = 1


class ChannelKind(enum.IntEnum):
    """What a channel measures (``register`` channels)."""

    ACTIVE_IMPORT = 1
    ACTIVE_EXPORT = 2
    REACTIVE_IMPORT = 3
    REACTIVE_EXPORT = 4


class Unit(enum.IntEnum):
    """Unit of measure of a channel (``register`` channels)."""

    WH = 1
    VARH = 2

    @property
    def symbol(self) -> str:
        """The unit as written in reports: ``Wh`` or ``varh``."""
        return "Wh" if self is Unit.WH else "varh"


#: A read_request nacked with one of these cannot succeed if asked again: the
#: job fails at once (the others are retried within the job's retries).
READ_FINAL_NACKS = frozenset({Nack.NOT_HELD, Nack.BAD_PARAMETER, Nack.NOT_REGISTERED})
#: A schedule_set nacked with one of these says nothing about the schedule (a
#: counter race between workers, a busy meter): it is sent again after the ack timeout.
SCHEDULE_TRANSIENT_NACKS = frozenset({Nack.REPLAY, Nack.BUSY})


def nack_name(code: int) -> str:
    """``not_held``, ... or ``reason 42`` for a code this side does not know."""
    try:
        return Nack(code).name.lower()
    except ValueError:
        return f"reason {code}"


def event_name(code: int) -> str:
    """``tamper``, ... or ``unknown`` for a code this side does not know."""
    try:
        return Event(code).name.lower()
    except ValueError:
        return "unknown"


def read_kind_name(code: int) -> str:
    """``scheduled``, ``on_demand``, ``period``, or the number."""
    try:
        return ReadKind(code).name.lower()
    except ValueError:
        return str(code)
