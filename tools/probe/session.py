"""The probe's conversations over a `Port`: a mode C readout, and the mode E
authenticated download (M18, N06; SPEC "Conversations", optical download).

Timing (IEC 62056-21): the meter answers within 200-1500 ms, characters of one
message are at most 1500 ms apart; silence past that is `NoAnswer` and the
meter is back at its idle sign-on state. The download is half-duplex: the
probe sends download_open, download_auth, then listens to every part back to
back; a gap (a part lost to noise, silence mid-stream) makes it wait for the
line to go quiet and open again, at most `ATTEMPTS` times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import iec62056 as iec
from protocol.auth import download_mac, verify_frame
from protocol.codes import Nack
from protocol.errors import ProtocolError
from protocol.frame import decode, encode
from protocol.hdlc import Deframer, stuff
from tools.probe.errors import LockedOut, NoAnswer, Noisy, ProbeError, WrongKey
from tools.probe.port import Port

ANSWER_S = 1.5  # tr max: the meter answers within this
GAP_S = 1.5  # inter-character timeout, and the longest pause between two parts
ATTEMPTS = 3  # download_open sent at most this often per download
SWITCH_S = 0.05  # after the option select has left: the meter's baud switch
FRAME_S = 5.0  # a frame that takes longer than this to arrive is noise, not a frame
Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    return None


def _await(client: iec.Client, port: Port, what: str) -> iec.Identification | iec.Readout:
    deadline = time.monotonic() + ANSWER_S + 0.5
    while True:
        try:
            ev = client.next_event()
        except iec.IecError as e:
            raise ProbeError(f"the meter's {what} is garbled: {e}") from None
        if isinstance(ev, iec.Identification | iec.Readout):
            return ev
        data = port.read(deadline)
        if not data:
            client.timeout()
            raise NoAnswer(
                f"no {what} from the meter on {port.url} within {ANSWER_S + 0.5:.1f} s "
                "(head not on the port, wrong --address, or the port is busy)"
            )
        client.receive_data(data)
        deadline = time.monotonic() + GAP_S


def _switch(port: Port, option: bytes, rate: int, binary: bool) -> None:
    """Send the option select at 300 baud, then change baud once it is on its way and
    the meter has switched: the meter answers a readout at the new baud, and in
    binary mode takes nothing before its switch (mode E has no acknowledgement)."""
    port.write(option)
    time.sleep(len(option) * 10 / iec.SIGN_ON_BAUD + SWITCH_S)
    port.set_line(rate, binary=binary)


def sign_on(port: Port, client: iec.Client, address: str | None) -> iec.Identification:
    """Sign-on at 300 baud; the meter's identification."""
    port.set_line(iec.SIGN_ON_BAUD, binary=False)
    port.discard()
    port.write(client.send(iec.SignOn(address)))
    ident = _await(client, port, "identification")
    if not isinstance(ident, iec.Identification):
        raise ProbeError(f"expected an identification, got {type(ident).__name__}")
    return ident


def readout(
    port: Port, address: str | None = None, baud: int = 19200
) -> tuple[iec.Identification, iec.Readout]:
    """A mode C data readout at the highest baud both ends support (at most ``baud``)."""
    client = iec.Client()
    ident = sign_on(port, client, address)
    rate = max(b for b in iec.BAUDS if b <= min(baud, ident.max_baud))
    _switch(port, client.send(iec.OptionSelect(iec.Mode.READOUT, rate)), rate, binary=False)
    try:
        data = _await(client, port, "readout")
    finally:
        port.set_line(iec.SIGN_ON_BAUD, binary=False)
    if not isinstance(data, iec.Readout):
        raise ProbeError(f"expected a readout, got {type(data).__name__}")
    return ident, data


def enter_binary(
    port: Port, baud: int = 19200, address: str | None = None
) -> tuple[iec.Identification, int]:
    """Sign on and switch to mode E's binary mode; (identification, baud agreed)."""
    client = iec.Client()
    ident = sign_on(port, client, address)
    if not ident.mode_e:
        raise ProbeError(f"meter {ident.ident} has no binary mode (identification without \\2)")
    rate = max(b for b in iec.BAUDS if b <= min(baud, ident.max_baud))
    _switch(port, client.send(iec.OptionSelect(iec.Mode.BINARY, rate)), rate, binary=True)
    return ident, rate


@dataclass
class Downloaded:
    """What `download` got: the meter, the baud, the frames as received, the link's figures."""

    meter: int
    baud: int
    frames: list[bytes]
    attempts: int
    noise: int  # frames dropped (bad framing, CRC, not for this conversation)


class _Gap(Exception):
    """A part did not come (noise or silence): open again."""


class FrameLink:
    """Protocol frames over the port in binary mode (HDLC framing): the probe's
    unsigned frames out, the meter's good frames in (noise counted, dropped)."""

    def __init__(self, port: Port, meter: int, operator: int) -> None:
        self.port = port
        self.meter = meter
        self.operator = operator
        self.deframer = Deframer()
        self.pending: list[bytes] = []
        self.noise = 0
        self.seq = 0

    def send(self, mtype: str, body: dict[str, Any]) -> None:
        self.seq = self.seq % 0xFFFF + 1
        fields = {
            "type": mtype,
            "seq": self.seq,
            "meter_id": self.meter,
            "timestamp": int(time.time()),
            "auth": None,
            "body": body,
        }
        self.port.write(stuff(encode(fields)))

    def frame(self, wait_s: float) -> tuple[bytes, dict[str, Any]] | None:
        """The next good frame from this meter within ``wait_s``; None on silence."""
        deadline = time.monotonic() + wait_s
        give_up = deadline + FRAME_S  # bytes that never make a frame (noise) end too
        while True:
            while self.pending:
                raw = self.pending.pop(0)
                try:
                    fields = decode(raw)
                except ProtocolError:
                    self.noise += 1
                    continue
                if fields["meter_id"] != self.meter:
                    self.noise += 1
                    continue
                return raw, fields
            data = self.port.read(deadline)
            if not data:
                return None
            before = self.deframer.errors
            self.pending += self.deframer.feed(data)
            self.noise += self.deframer.errors - before
            deadline = min(time.monotonic() + GAP_S, give_up)

    def quiet(self) -> None:
        """Wait until nothing has arrived for `GAP_S` (the meter's stream is over)."""
        while self.frame(GAP_S) is not None:
            pass
        self.pending.clear()


def _nack(raw: bytes, fields: dict[str, Any], k_op: bytes, meter: int) -> ProbeError:
    reason = fields["body"]["reason"]
    try:
        verify_frame(raw, k_op)
        sure = ""
    except ProtocolError:
        sure = " (its MAC does not verify under this key either)"
    if reason == Nack.BUSY:
        return LockedOut(
            f"meter {meter} refuses downloads for now: its optical port is locked after "
            f"repeated wrong keys{sure}; try again in 5 minutes"
        )
    if reason == Nack.AUTH_FAILED:
        return WrongKey(
            f"meter {meter} refused the probe key (auth_failed){sure}: the key file is not for "
            "this meter and operator, or the meter's key was rotated since it was issued "
            "(issue a new one: headend keys probe-key)"
        )
    if reason == Nack.REPLAY:
        return WrongKey(f"meter {meter} refused the answer as a replay (its challenge was used)")
    return ProbeError(f"meter {meter} answered nack reason {reason}{sure}")


def _attempt(link: FrameLink, k_op: bytes, progress: Progress) -> list[bytes]:
    """One download_open .. last part. _Gap on a lost part; ProbeError on a refusal."""
    meter = link.meter
    got = None
    for _ in range(ATTEMPTS):
        link.send("download_open", {"operator": link.operator})
        got = link.frame(ANSWER_S + 0.5)
        if got is not None:
            break
    if got is None:
        raise NoAnswer(f"meter {meter} does not answer download_open in binary mode")
    raw, fields = got
    if fields["type"] == "nack":
        raise _nack(raw, fields, k_op, meter)
    if fields["type"] != "download_challenge":
        raise _Gap()
    try:
        last = verify_frame(raw, k_op)
        genuine = True
    except ProtocolError:
        last, genuine = 0, False
    nonce = fields["body"]["nonce"]
    # answered even when the challenge does not verify: the meter logs the denied
    # attempt (M20); the answer is useless to anyone without the meter's next nonce
    link.send(
        "download_auth",
        {"operator": link.operator, "mac": download_mac(k_op, nonce, link.operator)},
    )
    frames: list[bytes] = []
    parts = None
    while parts is None or len(frames) < parts:
        got = link.frame(ANSWER_S + 0.5 if not frames else GAP_S)
        if got is None:
            if not frames and not genuine:
                raise WrongKey(
                    f"meter {meter}'s challenge does not verify under this probe key and it "
                    "sent no data: wrong key file for this meter (or its key was rotated)"
                )
            raise _Gap()
        raw, fields = got
        if fields["type"] == "nack":
            raise _nack(raw, fields, k_op, meter)
        if fields["type"] != "download_data":
            link.noise += 1
            continue
        try:
            last = verify_frame(raw, k_op, last)
        except ProtocolError as e:
            raise WrongKey(f"meter {meter}'s data frame does not verify: {e}") from None
        body = fields["body"]
        if body["part"] != len(frames) or (parts is not None and body["parts"] != parts):
            raise _Gap()  # a part lost on the way
        parts = body["parts"]
        frames.append(raw)
        progress(len(frames), parts)
    return frames


def download(
    port: Port,
    *,
    meter: int,
    operator: int,
    k_op: bytes,
    baud: int = 19200,
    address: str | None = None,
    progress: Progress = _no_progress,
) -> Downloaded:
    """Sign on, switch to binary mode, authenticate, take every part.

    Raises:
        NoAnswer, LockedOut, WrongKey, Noisy, PortError, ProbeError.
    """
    ident, rate = enter_binary(port, baud, address)
    if ident.ident != str(meter):
        raise WrongKey(f"the key file is for meter {meter}, the meter on the port is {ident.ident}")
    link = FrameLink(port, meter, operator)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            frames = _attempt(link, k_op, progress)
        except _Gap:
            link.quiet()
            continue
        return Downloaded(meter, rate, frames, attempt, link.noise)
    raise Noisy(
        f"meter {meter}: the download did not get through in {ATTEMPTS} attempts "
        f"({link.noise} frames lost to line noise): clean the optical head and hold it still"
    )
