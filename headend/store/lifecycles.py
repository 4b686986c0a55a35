"""The life of an on-demand read job and of a schedule push: one table each.

Each lifecycle is its states, its events and ``TABLE[state][event] -> next
state``, written once here. The store derives its conditional UPDATEs from
it (`Lifecycle.sql_set` / `sql_where`: ``SET state = CASE state WHEN ... END
WHERE state IN (<states that allow the event>)``), and `fire` is the only
code that writes a job's or a schedule's state; the ADCS reads the same
table to ask which rows can take an event. An event the row's state does not
allow raises `IllegalTransition`, naming the row, its state and the states
that would allow it.

Several workers (and the CLI in another process) may race for one row: the
conditional UPDATE lets exactly one win, and the loser gets
`IllegalTransition` (the state moved on), which callers that expect the race
catch.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from headend.errors import IllegalTransition, InvalidData
from headend.store.db import Db

S = TypeVar("S", bound=enum.StrEnum)
E = TypeVar("E", bound=enum.StrEnum)
_WORD = re.compile(r"^[a-z_]+$")  # states go into SQL as literals: only these characters


@dataclass(frozen=True)
class Lifecycle(Generic[S, E]):
    """A state machine over one column ``state`` of one table.

    Attributes:
        name: what a row is ("job", "schedule"), for error messages.
        states: the state enum; ``start`` is the state a new row is created in.
        table: state -> event -> next state; an event missing from a state's
            row is illegal in that state.
    """

    name: str
    states: type[S]
    start: S
    table: Mapping[S, Mapping[E, S]]

    def __post_init__(self) -> None:
        if set(self.table) != set(self.states):
            raise ValueError(f"{self.name}: the table needs a row for every state")
        for s in self.states:
            if not _WORD.match(s.value):
                raise ValueError(f"{self.name}: state {s.value!r} must be [a-z_]+ (SQL literal)")

    def next(self, state: S, event: E, what: str = "") -> S:
        """The state after ``event``; IllegalTransition if ``state`` does not allow it.

        ``what`` names the row in the error (default: the lifecycle's name).
        """
        try:
            return self.table[state][event]
        except KeyError:
            allowed = ", ".join(s.value for s in self.allowed(event)) or "no state"
            raise IllegalTransition(
                f"{what or self.name}: {event.value!r} is not allowed in state {state.value} "
                f"(only in: {allowed})"
            ) from None

    def allowed(self, event: E) -> tuple[S, ...]:
        """The states in which ``event`` is allowed, in table order."""
        return tuple(s for s, row in self.table.items() if event in row)

    def sql_where(self, event: E, column: str = "state") -> str:
        """``state IN ('a', 'b')``: the rows that may take ``event``.

        ``column`` may be qualified (``schedule.state`` in an upsert's DO UPDATE).
        """
        states = self.allowed(event)
        if not states:
            raise ValueError(f"{self.name}: event {event.value!r} is allowed in no state")
        return f"{column} IN (" + ", ".join(f"'{s.value}'" for s in states) + ")"

    def sql_set(self, event: E, column: str = "state") -> str:
        """``state = CASE state WHEN 'a' THEN 'b' ... END``: the next state of each row."""
        whens = " ".join(
            f"WHEN '{s.value}' THEN '{row[event].value}'"
            for s, row in self.table.items()
            if event in row
        )
        return f"state = CASE {column} {whens} END"

    def fire(
        self,
        db: Db,
        table: str,
        key: Mapping[str, Any],
        event: E,
        what: str,
        sets: str = "",
        params: Sequence[Any] = (),
        guard: str = "",
        guard_params: Sequence[Any] = (),
    ) -> bool:
        """Apply ``event`` to the row of ``table`` with ``key`` (column -> value).

        ``what`` names the row in errors ("job 7"). ``sets`` (``", col = ?"``...)
        and ``params`` change more columns in the same UPDATE; ``guard``
        (``" AND col IS NULL"``...) can hold it back.

        Returns True if the row took the event, False if only ``guard`` held it
        back. Raises IllegalTransition if the row's state does not allow the
        event, InvalidData if there is no such row.
        """
        where = " AND ".join(f"{col} = ?" for col in key)
        with db.transaction():
            n = db.execute(
                f"UPDATE {table} SET {self.sql_set(event)}{sets} "
                f"WHERE {where} AND {self.sql_where(event)}{guard}",
                [*params, *key.values(), *guard_params],
            )
            if n:
                return True
            rows = db.query(f"SELECT state FROM {table} WHERE {where}", list(key.values()))
        if not rows:
            raise InvalidData(f"no {what}")
        self.next(self.states(rows[0][0]), event, what)
        return False


# -- on-demand read jobs (H05, H06) ---------------------------------------------------------


class JobState(enum.StrEnum):
    """Life of an on-demand read."""

    QUEUED = "queued"  # written by anyone (CLI, API, a system), no worker has it yet
    SENT = "sent"  # a worker claimed it: its read_request is out, the answer awaited
    DONE = "done"  # every part of the answer is stored
    FAILED = "failed"  # a final nack, or no answer after the last retry


class JobEvent(enum.StrEnum):
    CLAIM = "claim"  # a worker takes a queued job
    SEND = "send"  # a read_request goes out (first attempt or retry)
    PART = "part"  # a part of the answer is stored
    COMPLETE = "complete"  # the last part is in
    FAIL = "fail"  # a final nack, or the last attempt timed out
    REQUEUE = "requeue"  # the worker restarted: what it had sent is queued again
    ACK = "ack"  # the requester acknowledged the result


JOB: Lifecycle[JobState, JobEvent] = Lifecycle(
    "job",
    JobState,
    JobState.QUEUED,
    {
        JobState.QUEUED: {JobEvent.CLAIM: JobState.SENT},
        JobState.SENT: {
            JobEvent.SEND: JobState.SENT,
            JobEvent.PART: JobState.SENT,
            JobEvent.COMPLETE: JobState.DONE,
            JobEvent.FAIL: JobState.FAILED,
            JobEvent.REQUEUE: JobState.QUEUED,
        },
        JobState.DONE: {JobEvent.ACK: JobState.DONE},
        JobState.FAILED: {JobEvent.ACK: JobState.FAILED},
    },
)

# -- schedule pushes (H02, H07) -------------------------------------------------------------


class ScheduleState(enum.StrEnum):
    """Where a schedule is between the head-end and the meter."""

    PENDING = "pending"  # written, not sent yet (the service sends it)
    SENT = "sent"  # sent, ack not yet received
    ACKED = "acked"  # the meter acknowledged it (status 0)
    NACKED = "nacked"  # the meter refused it (reason recorded); nothing applied
    FLAGGED = "flagged"  # no ack within the timeout: flagged and re-sent
    CANCELLED = "cancelled"  # a cancel the meter acknowledged


class ScheduleEvent(enum.StrEnum):
    WRITE = "write"  # set, update or cancel written (by the system or a party)
    SEND = "send"  # the first schedule_set goes out
    RESEND = "resend"  # no ack within the timeout: flagged and sent again
    ACK = "ack"  # the meter acknowledged a set
    ACK_CANCEL = "ack_cancel"  # the meter acknowledged a cancel
    NACK = "nack"  # the meter refused it
    BUSY = "busy"  # a nack that says nothing about the schedule (replay, busy): re-sent later


_ANSWERS = {
    ScheduleEvent.WRITE: ScheduleState.PENDING,
    ScheduleEvent.RESEND: ScheduleState.FLAGGED,
    ScheduleEvent.ACK: ScheduleState.ACKED,
    ScheduleEvent.ACK_CANCEL: ScheduleState.CANCELLED,
    ScheduleEvent.NACK: ScheduleState.NACKED,
    ScheduleEvent.BUSY: ScheduleState.SENT,
}
_WRITE = {ScheduleEvent.WRITE: ScheduleState.PENDING}

SCHEDULE: Lifecycle[ScheduleState, ScheduleEvent] = Lifecycle(
    "schedule",
    ScheduleState,
    ScheduleState.PENDING,
    {
        ScheduleState.PENDING: {**_WRITE, ScheduleEvent.SEND: ScheduleState.SENT},
        ScheduleState.SENT: _ANSWERS,
        ScheduleState.FLAGGED: _ANSWERS,
        ScheduleState.ACKED: _WRITE,
        ScheduleState.NACKED: _WRITE,
        ScheduleState.CANCELLED: _WRITE,
    },
)

# -- key rotations (M20) --------------------------------------------------------------------


class KeyState(enum.StrEnum):
    """Where a meter's key is: current only, or a new version on its way."""

    CURRENT = "current"  # one key; uplinks only under it
    QUEUED = "queued"  # an operator asked for a new version; no key_set sent yet
    SENT = "sent"  # key_set out (repeated until answered); uplinks under both keys


class KeyEvent(enum.StrEnum):
    ROTATE = "rotate"  # `headend keys rotate`: the next version is pending
    SEND = "send"  # a key_set goes out (first or repeat)
    CONFIRM = "confirm"  # an uplink (key_ack or any) verified under the new key


KEY: Lifecycle[KeyState, KeyEvent] = Lifecycle(
    "key",
    KeyState,
    KeyState.CURRENT,
    {
        KeyState.CURRENT: {KeyEvent.ROTATE: KeyState.QUEUED},
        KeyState.QUEUED: {KeyEvent.SEND: KeyState.SENT},
        KeyState.SENT: {KeyEvent.SEND: KeyState.SENT, KeyEvent.CONFIRM: KeyState.CURRENT},
    },
)

# -- missing meter-days and their recovery (D02-D05) ----------------------------------------


class MissingState(enum.StrEnum):
    """Where a missing or incomplete meter-day is on its way back."""

    MISSING = "missing"  # found by the daily check (or a failed read): a read is due
    RECOVERING = "recovering"  # a recovery read (job) naming the day is out
    PARTIAL = "partial"  # a read brought some of the day, not all (re-read within the attempts)
    RECOVERED = "recovered"  # complete: by a recovery read, or the scheduled data came by itself
    UNSUCCESSFUL = "unsuccessful"  # the attempts ran out and nothing came back


class MissingEvent(enum.StrEnum):
    REQUEST = "request"  # a recovery read naming the day is queued (one attempt)
    COMPLETE = "complete"  # the day is complete in the store, however the data came
    SOME = "some"  # the read ended with part of the day
    NONE = "none"  # the read failed, nothing new: due again after the retry delay
    GIVE_UP = "give_up"  # the read failed, no attempt left
    REOPEN = "reopen"  # given up, but its meter was heard since and still holds it: a second round


MISSING: Lifecycle[MissingState, MissingEvent] = Lifecycle(
    "missing day",
    MissingState,
    MissingState.MISSING,
    {
        MissingState.MISSING: {
            MissingEvent.REQUEST: MissingState.RECOVERING,
            MissingEvent.COMPLETE: MissingState.RECOVERED,
        },
        MissingState.RECOVERING: {
            MissingEvent.COMPLETE: MissingState.RECOVERED,
            MissingEvent.SOME: MissingState.PARTIAL,
            MissingEvent.NONE: MissingState.MISSING,
            MissingEvent.GIVE_UP: MissingState.UNSUCCESSFUL,
        },
        MissingState.PARTIAL: {
            MissingEvent.REQUEST: MissingState.RECOVERING,
            MissingEvent.COMPLETE: MissingState.RECOVERED,
        },
        MissingState.RECOVERED: {},
        MissingState.UNSUCCESSFUL: {
            MissingEvent.COMPLETE: MissingState.RECOVERED,
            MissingEvent.REOPEN: MissingState.MISSING,
        },
    },
)

# -- trouble reports (D06) ------------------------------------------------------------------


class TroubleState(enum.StrEnum):
    """A meter's trouble report: outstanding, or closed because data flows again."""

    OPEN = "open"
    CLOSED = "closed"


class TroubleEvent(enum.StrEnum):
    CLOSE = "close"  # a complete day arrived after the report opened


TROUBLE: Lifecycle[TroubleState, TroubleEvent] = Lifecycle(
    "trouble report",
    TroubleState,
    TroubleState.OPEN,
    {
        TroubleState.OPEN: {TroubleEvent.CLOSE: TroubleState.CLOSED},
        TroubleState.CLOSED: {},
    },
)

# -- missed reads of non-default schedules (D07) --------------------------------------------


class GapState(enum.StrEnum):
    """A non-default schedule's read that did not arrive within its grace."""

    OPEN = "open"  # detected; recovery reads queued every offschedule_retry_s
    RECOVERED = "recovered"  # the data is in (by a recovery read or the meter's next read)
    FAILED = "failed"  # still missing after the last attempt


class GapEvent(enum.StrEnum):
    RETRY = "retry"  # another recovery read queued
    RECOVER = "recover"
    FAIL = "fail"


GAP: Lifecycle[GapState, GapEvent] = Lifecycle(
    "off-schedule gap",
    GapState,
    GapState.OPEN,
    {
        GapState.OPEN: {
            GapEvent.RETRY: GapState.OPEN,
            GapEvent.RECOVER: GapState.RECOVERED,
            GapEvent.FAIL: GapState.FAILED,
        },
        GapState.RECOVERED: {},
        GapState.FAILED: {},
    },
)
