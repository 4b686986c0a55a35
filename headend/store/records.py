"""Rows of the operational tables (schema v2) as frozen, validated values.

(The states of jobs and schedules, and their transition tables, are in
`lifecycles.py`; they are re-exported here with the rows that carry them.)

The meter-data rows (intervals, registers, events) are in `base`; these are
the ADCS's own records: schedules per meter and slot, on-demand read jobs,
the activity log, event routes and deliveries to recipients. Times here are
UTC *milliseconds* (latency is measured in them); schedule parameters are
seconds as on the wire.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from headend.errors import InvalidData
from headend.store.base import DAY_S, U32_MAX, Source
from headend.store.lifecycles import JobState, ScheduleState
from protocol.codes import NSLOTS, WHAT_ALL, ReadMode, SlotAction

__all__ = [
    "Activity",
    "Delivery",
    "DeliveryState",
    "Job",
    "JobState",
    "ReadSpec",
    "Route",
    "Schedule",
    "ScheduleSpec",
    "ScheduleState",
    "check_recipient",
]

_RECIPIENT = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    ACKED = "acked"
    EXPIRED = "expired"  # re-sent the maximum number of times without an ack


def check_recipient(name: str) -> str:
    """A recipient name: letters, digits and ``_.:@-`` (it becomes an MQTT topic level)."""
    if not isinstance(name, str) or not _RECIPIENT.match(name):
        raise InvalidData(f"recipient: expected 1-64 of [A-Za-z0-9_.:@-], got {name!r}")
    return name


def _u32(name: str, v: object) -> None:
    if type(v) is not int or not 0 <= v <= U32_MAX:
        raise InvalidData(f"{name}: expected an int 0..{U32_MAX}, got {v!r}")


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """What a schedule slot should hold (SPEC "Slot"); ``cancel`` clears the slot.

    Slot 0 is the default daily read (period 86400, ongoing, never cancelled);
    the frequency rule against the meter's interval is checked by the ADCS,
    which knows the meter (`headend.adcs.scheduling.check_spec`).
    """

    meter_id: int
    slot: int
    period_s: int = DAY_S
    offset_s: int = 0
    start: int = 0
    end: int = 0
    what: int = WHAT_ALL
    cancel: bool = False

    def __post_init__(self) -> None:
        _u32("meter_id", self.meter_id)
        if type(self.slot) is not int or not 0 <= self.slot < NSLOTS:
            raise InvalidData(f"slot: expected 0..{NSLOTS - 1}, got {self.slot!r}")
        for name in ("period_s", "offset_s", "start", "end"):
            _u32(name, getattr(self, name))
        if type(self.what) is not int or not 1 <= self.what <= WHAT_ALL:
            raise InvalidData(f"what: expected 1..{WHAT_ALL}, got {self.what!r}")
        if self.slot == 0:
            if self.cancel:
                raise InvalidData("slot 0 is the default daily read: it cannot be cancelled")
            if self.period_s != DAY_S or self.end != 0:
                raise InvalidData("slot 0 is daily and ongoing: period_s=86400, end=0")
        if self.period_s <= 0 or self.offset_s >= self.period_s:
            raise InvalidData(
                f"offset_s: expected 0 <= offset_s < period_s, "
                f"got {self.offset_s} / {self.period_s}"
            )
        if self.end and self.end <= self.start:
            raise InvalidData(f"end {self.end} must be 0 (ongoing) or after start {self.start}")

    def wire(self) -> dict[str, int]:
        """The Slot dict of a schedule_set body."""
        return {
            "slot": self.slot,
            "action": int(SlotAction.CANCEL if self.cancel else SlotAction.SET),
            "start": self.start,
            "end": self.end,
            "period_s": self.period_s,
            "offset_s": self.offset_s,
            "what": self.what,
        }


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule row: the spec, who asked for it, and how far it got."""

    spec: ScheduleSpec
    source: str
    state: ScheduleState
    seqs: tuple[int, ...]
    attempts: int
    requested_ms: int
    sent_ms: int | None
    acked_ms: int | None
    flagged_ms: int | None
    reason: int | None


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """An on-demand read to make (SPEC read_request)."""

    meter_id: int
    mode: ReadMode = ReadMode.ON_DEMAND
    start: int = 0
    end: int = 0
    what: int = WHAT_ALL
    source: Source = Source.ON_DEMAND

    def __post_init__(self) -> None:
        _u32("meter_id", self.meter_id)
        try:
            object.__setattr__(self, "mode", ReadMode(self.mode))
        except ValueError:
            raise InvalidData(
                f"mode: expected 0 period, 1 since_ack or 2 on_demand, got {self.mode!r}"
            ) from None
        _u32("start", self.start)
        _u32("end", self.end)
        if self.mode is ReadMode.PERIOD and self.end <= self.start:
            raise InvalidData(f"a period read needs start < end, got {self.start}..{self.end}")
        if type(self.what) is not int or not 1 <= self.what <= WHAT_ALL:
            raise InvalidData(f"what: expected 1..{WHAT_ALL}, got {self.what!r}")
        if self.source not in (Source.ON_DEMAND, Source.RECOVERY):
            raise InvalidData(f"source of a read: on_demand or recovery, got {self.source!r}")

    def wire(self) -> dict[str, int]:
        """The body of a read_request."""
        return {"mode": int(self.mode), "start": self.start, "end": self.end, "what": self.what}


@dataclass(frozen=True, slots=True)
class Job:
    """An on-demand read job row."""

    job_id: int
    spec: ReadSpec
    requester: str
    state: JobState
    worker: str | None
    seqs: tuple[int, ...]
    attempts: int
    parts: int
    parts_seen: tuple[int, ...]
    created_ms: int
    sent_ms: int | None
    deadline_ms: int | None
    done_ms: int | None
    latency_ms: int | None
    requester_ack_ms: int | None
    result: str | None
    trouble: str | None
    priority: int = 1  # 0 routine (system recovery), 1 ad hoc (CLI, API): store.jobs

    @property
    def closed(self) -> bool:
        """Done or failed: nothing more will happen to it but the requester's ack."""
        return self.state in (JobState.DONE, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class Activity:
    """One line of the activity log: what happened, to which meter, and why."""

    activity_id: int
    at_ms: int
    meter_id: int | None
    kind: str
    detail: str
    ref: str | None


@dataclass(frozen=True, slots=True)
class Route:
    """Events with ``code`` (0 = every code) go to ``recipient``."""

    code: int
    recipient: str
    added_ms: int

    def __post_init__(self) -> None:
        # an IntEnum (protocol.codes.Event) is welcome; a bool or a str is not
        if (
            isinstance(self.code, bool)
            or not isinstance(self.code, int)
            or not 0 <= self.code <= 255
        ):
            raise InvalidData(f"event code: expected 0 (all) or 1..255, got {self.code!r}")
        object.__setattr__(self, "code", int(self.code))
        check_recipient(self.recipient)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one recipient, re-sent until acknowledged (D09, H06)."""

    delivery_id: int
    recipient: str
    kind: str
    event_id: int | None
    job_id: int | None
    payload: str
    state: DeliveryState
    created_ms: int
    sent_ms: int | None
    next_ms: int
    attempts: int
    acked_ms: int | None
