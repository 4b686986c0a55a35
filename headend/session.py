"""Sans-IO protocol state of one meter: requests in flight, replies, timeouts.

No sockets and no clock here: the service hands in decoded frames and `now`,
and gets back frames to send and outcomes to act on, so MQTT, serial and the
probe tool share one core. Each request moves through `TRANSITIONS`; an event
the table does not allow raises `IllegalTransition` (after h11 / dlms-cosem).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headend.errors import HeadendError
from protocol.frame import encode


class RState(enum.Enum):
    SENT = "sent"
    PARTIAL = "partial"
    DONE = "done"
    NACKED = "nacked"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


TRANSITIONS: dict[RState, dict[str, RState]] = {
    RState.SENT: {
        "part": RState.PARTIAL,
        "last_part": RState.DONE,
        "ack": RState.DONE,
        "nack": RState.NACKED,
        "timeout": RState.TIMED_OUT,
    },
    RState.PARTIAL: {
        "part": RState.PARTIAL,
        "last_part": RState.DONE,
        "nack": RState.NACKED,
        "timeout": RState.TIMED_OUT,
    },
    RState.TIMED_OUT: {"retry": RState.SENT, "give_up": RState.FAILED},
    RState.DONE: {},
    RState.NACKED: {},
    RState.FAILED: {},
}

# the reply type that completes each request type
REPLIES = {
    "schedule_set": ("schedule_ack",),
    "config_set": ("config_ack",),
    "read_request": ("read_response",),
    "time_set": (),  # the meter answers with a clock_adjusted event, not a reply
}


class IllegalTransition(HeadendError):
    """A request got an event its state does not allow."""


@dataclass
class Request:
    """One head-end request to a meter and what has come back for it."""

    mtype: str
    body: dict[str, Any]
    auth: bool
    timeout_s: float
    retries: int
    requester: str | None
    created: float
    deadline: float
    seqs: list[int] = field(default_factory=list)
    state: RState = RState.SENT
    attempts: int = 1
    parts: set[int] = field(default_factory=set)
    replies: list[dict[str, Any]] = field(default_factory=list)
    nack_reason: int | None = None
    finished: float | None = None

    def fire(self, event: str) -> RState:
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise IllegalTransition(
                f"{self.mtype} seq {self.seqs[-1]}: {event!r} not allowed in {self.state.value}"
            ) from None
        return self.state

    @property
    def open(self) -> bool:
        return self.state in (RState.SENT, RState.PARTIAL, RState.TIMED_OUT)


@dataclass(frozen=True)
class Reply:
    """A reply matched to its request; `complete` when the request is done."""

    request: Request
    fields: dict[str, Any]
    complete: bool


@dataclass(frozen=True)
class Nacked:
    request: Request
    reason: int


@dataclass(frozen=True)
class Unsolicited:
    """An uplink that answers no request of ours (register, scheduled read, event…)."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class Retry:
    request: Request
    frame: bytes


@dataclass(frozen=True)
class GaveUp:
    request: Request


Outcome = Reply | Nacked | Unsolicited | Retry | GaveUp


class MeterSession:
    """Args:
    meter_id: the meter.
    key: its 32-byte key (signs downlinks).
    next_counter: the replay-guard counter source (must only grow, across restarts).
    first_seq: where this session's seq numbers start (a random one after a restart
        keeps a late answer to the previous run's frames from matching a new one).
    """

    def __init__(
        self, meter_id: int, key: bytes, next_counter: Callable[[], int], first_seq: int = 0
    ) -> None:
        self.meter_id = meter_id
        self.key = key
        self._next_counter = next_counter
        self._seq = first_seq & 0xFFFF
        self.requests: dict[int, Request] = {}  # every seq we sent a request under

    def frame(self, mtype: str, body: dict[str, Any], now: float, auth: bool) -> tuple[int, bytes]:
        """(seq, frame) of one downlink whose answer the caller tracks itself (durably)."""
        return self._frame(mtype, body, now, auth)

    def _frame(self, mtype: str, body: dict[str, Any], now: float, auth: bool) -> tuple[int, bytes]:
        # 1..65535: seq 0 would read as "no request" in a read_response's request_seq
        self._seq = self._seq % 0xFFFF + 1
        fields = {
            "type": mtype,
            "seq": self._seq,
            "meter_id": self.meter_id,
            "timestamp": int(now),
            "auth": {"counter": self._next_counter(), "mac": b""} if auth else None,
            "body": body,
        }
        return self._seq, encode(fields, key=self.key if auth else None)

    def reply(self, mtype: str, body: dict[str, Any], now: float) -> bytes:
        """A frame that needs no answer (acks, time-sync response)."""
        return self._frame(mtype, body, now, auth=False)[1]

    def request(
        self,
        mtype: str,
        body: dict[str, Any],
        now: float,
        timeout_s: float,
        retries: int = 0,
        auth: bool = True,
        requester: str | None = None,
    ) -> tuple[Request, bytes]:
        """Start a request; returns it and the frame to send."""
        seq, raw = self._frame(mtype, body, now, auth)
        req = Request(mtype, body, auth, timeout_s, retries, requester, now, now + timeout_s, [seq])
        if not REPLIES.get(mtype):
            req.fire("ack")  # fire-and-forget (time_set): done once sent
            req.finished = now
        self.requests[seq] = req
        return req, raw

    def on_frame(self, fields: dict[str, Any], now: float) -> Outcome:
        """Match an uplink to the request it answers, if any."""
        mtype = fields["type"]
        body = fields["body"]
        ref = None
        if mtype in ("schedule_ack", "config_ack"):
            ref = body["acked_seq"]
        elif mtype == "read_response" and body["request_seq"]:
            ref = body["request_seq"]
        elif mtype == "nack":
            ref = body["nacked_seq"]
        req = self.requests.get(ref) if ref is not None else None
        if req is None or mtype not in (*REPLIES.get(req.mtype, ()), "nack"):
            return Unsolicited(fields)
        if not req.open:
            return Reply(req, fields, complete=False) if mtype != "nack" else Unsolicited(fields)
        if req.state is RState.TIMED_OUT:
            req.fire("retry")  # a late answer to an earlier attempt still counts
        if mtype == "nack":
            req.fire("nack")
            req.nack_reason = body["reason"]
            req.finished = now
            return Nacked(req, body["reason"])
        req.replies.append(fields)
        if mtype == "read_response":
            req.parts.add(body["part"])
            last = len(req.parts) >= max(body["parts"], 1)
            req.fire("last_part" if last else "part")
        else:
            req.fire("ack")
        if req.state is RState.DONE:
            req.finished = now
        return Reply(req, fields, complete=req.state is RState.DONE)

    def expire(self, now: float) -> list[Outcome]:
        """Time out overdue requests: re-send (new seq, new counter) or give up."""
        out: list[Outcome] = []
        for req in {id(r): r for r in self.requests.values()}.values():
            if not req.open or now < req.deadline:
                continue
            req.fire("timeout")
            if req.attempts <= req.retries:
                req.fire("retry")
                req.attempts += 1
                req.deadline = now + req.timeout_s
                seq, raw = self._frame(req.mtype, req.body, now, req.auth)
                req.seqs.append(seq)
                self.requests[seq] = req
                out.append(Retry(req, raw))
            else:
                req.fire("give_up")
                req.finished = now
                out.append(GaveUp(req))
        return out

    def forget_finished(self, older_than: float) -> None:
        """Drop finished requests so a long-running service stays bounded."""
        for seq, req in list(self.requests.items()):
            if not req.open and req.finished is not None and req.finished < older_than:
                del self.requests[seq]
