"""IEC 62056-21 client core (the probe's side): sign-on, identification, option
select, data readout with its BCC; mode E's switch to the binary protocol.

Sans-IO (STYLE item 6, after h11): `Client.send(event)` returns the bytes to
write, `receive_data(data)` takes what the port read, `next_event()` returns a
parsed `Identification` or `Readout` (or `NEED_DATA`). Which event may come in
which state is the table `TRANSITIONS`; anything else raises `IllegalEvent`.
The caller owns the port, the baud rates and the timeouts (`timeout()`
returns the core to idle, as the meter does).

Messages (the meter's dialect, mode C and E):
- sign-on ``/?!CRLF`` or ``/?<address>!CRLF`` (300 baud 7E1);
- identification ``/XXXZ\\W<ident>CRLF``: manufacturer XXX, baud char Z
  ('0'..'6' = 300..19,200 baud), ``\\2`` = mode E (binary) capable;
- option select ``ACK V Z Y CRLF``: V Y = '0' '0' readout, '2' '2' binary at Z;
- readout ``STX <OBIS(value*unit) CRLF>... ! CRLF ETX BCC``, BCC = XOR of every
  byte after STX up to and including ETX.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from protocol.errors import ProtocolError

SOH, STX, ETX, ACK, NAK = 0x01, 0x02, 0x03, 0x06, 0x15
CRLF = b"\r\n"
#: baud chars of mode C/E (index = char - '0')
BAUDS = (300, 600, 1200, 2400, 4800, 9600, 19200)
SIGN_ON_BAUD = 300
#: longest identification / readout the client buffers (a meter's readout is < 1 KB)
MAX_MESSAGE = 8192

#: OBIS codes the meter reads out, with a name for people (the *01 suffix: last midnight)
OBIS_NAMES = {
    "0.0.0": "meter id",
    "C.1.0": "serial number",
    "0.9.1": "time (hh:mm:ss)",
    "0.9.2": "date (YYMMDD)",
    "1.8.0": "active energy import",
    "2.8.0": "active energy export",
    "3.8.0": "reactive energy import",
    "4.8.0": "reactive energy export",
    "F.F": "error / status code",
    "0.2.0": "firmware version",
}


class IecError(ProtocolError):
    """An IEC 62056-21 message that cannot be used (root of this module's errors)."""


class BadMessage(IecError):
    """Bytes that are not the message the state expects (framing, syntax)."""


class BadBcc(IecError):
    """A readout whose block check character does not match its bytes."""


class IllegalEvent(IecError):
    """An event the current state does not allow (the transition table says which)."""


class State(enum.Enum):
    """Where the client is in the conversation."""

    IDLE = "idle"
    AWAIT_ID = "awaiting identification"
    IDENTIFIED = "identified"
    AWAIT_READOUT = "awaiting readout"
    BINARY = "binary mode"


class Mode(enum.Enum):
    """What the option select asks for."""

    READOUT = "0"
    BINARY = "2"


@dataclass(frozen=True, slots=True)
class SignOn:
    """probe → meter: the request; ``address`` the meter id in decimal (None: any)."""

    address: str | None = None

    def __post_init__(self) -> None:
        if self.address is not None and not re.fullmatch(r"[0-9]{1,32}", self.address):
            raise BadMessage("sign-on address", "1..32 decimal digits", self.address)


@dataclass(frozen=True, slots=True)
class Identification:
    """meter → probe: who it is and how fast it can talk."""

    manufacturer: str
    max_baud: int
    mode_e: bool
    ident: str


@dataclass(frozen=True, slots=True)
class OptionSelect:
    """probe → meter: readout or binary mode, at ``baud`` (one of `BAUDS`)."""

    mode: Mode
    baud: int

    def __post_init__(self) -> None:
        if self.baud not in BAUDS:
            raise BadMessage("option select baud", f"one of {BAUDS}", self.baud)


@dataclass(frozen=True, slots=True)
class DataSet:
    """One ``OBIS(value*unit)`` of a readout; ``unit`` empty when none."""

    obis: str
    value: str
    unit: str

    @property
    def name(self) -> str:
        """What the code means, for people ('' for a code outside `OBIS_NAMES`)."""
        base, _, period = self.obis.partition("*")
        name = OBIS_NAMES.get(base, "")
        return f"{name}, last midnight" if name and period == "01" else name


@dataclass(frozen=True, slots=True)
class Readout:
    """meter → probe: the data sets of a readout, in order."""

    data: tuple[DataSet, ...]

    def get(self, obis: str) -> DataSet | None:
        """The first data set with this code, or None."""
        return next((d for d in self.data if d.obis == obis), None)


class _Need(enum.Enum):
    NEED_DATA = "need data"


NEED_DATA = _Need.NEED_DATA
Event = SignOn | Identification | OptionSelect | Readout

#: state -> event type -> next state (option select: by mode, see `_after_option`)
TRANSITIONS: dict[State, dict[type, State]] = {
    State.IDLE: {SignOn: State.AWAIT_ID},
    State.AWAIT_ID: {Identification: State.IDENTIFIED},
    State.IDENTIFIED: {OptionSelect: State.AWAIT_READOUT},
    State.AWAIT_READOUT: {Readout: State.IDLE},
    State.BINARY: {},
}

_IDENT = re.compile(rb"/([A-Za-z]{3})([0-9A-Z])((?:\\[0-9])*)([\x20-\x7e]{1,32})\r\n")
_DATASET = re.compile(r"([0-9A-Z.:*\-]{1,20})\(([^()*]*)(?:\*([^()]*))?\)")


def baud_of(char: str) -> int:
    """Baud rate of a mode C/E baud char ('0'..'6'). BadMessage otherwise."""
    if len(char) != 1 or not "0" <= char <= "6":
        raise BadMessage("baud char", "'0'..'6'", char)
    return BAUDS[ord(char) - 48]


def bcc(data: bytes) -> int:
    """XOR of ``data`` (pass every byte after STX up to and including ETX)."""
    x = 0
    for b in data:
        x ^= b
    return x


def parse_identification(line: bytes) -> Identification:
    """``/XXXZ[\\W]ident CRLF`` → Identification. BadMessage when it is not one."""
    m = _IDENT.fullmatch(line)
    if m is None:
        raise BadMessage("identification", "/XXXZ[\\W]ident CRLF", line[:40])
    maker, z, enhanced, ident = (g.decode("ascii") for g in m.groups())
    try:
        top = baud_of(z)
    except BadMessage:
        top = SIGN_ON_BAUD  # a mode A/B char: 300 baud only
    return Identification(maker, top, "\\2" in enhanced, ident)


def parse_readout(block: bytes) -> Readout:
    """``STX ... ! CRLF ETX BCC`` → Readout. BadBcc, BadMessage."""
    if len(block) < 4 or block[0] != STX or block[-2] != ETX:
        raise BadMessage("readout block", "STX ... ETX BCC", block[:16])
    want = bcc(block[1:-1])
    if block[-1] != want:
        raise BadBcc("readout BCC", f"{want:#04x}", f"{block[-1]:#04x}")
    body = block[1:-2]
    if not body.endswith(b"!" + CRLF):
        raise BadMessage("readout end", "'!' CRLF before ETX", body[-8:])
    try:
        text = body[:-3].decode("ascii")
    except UnicodeDecodeError as e:
        raise BadMessage("readout text", "ASCII", repr(body[:40])) from e
    data: list[DataSet] = []
    for n, line in enumerate(text.split("\r\n")):
        if not line:
            continue
        pos = 0
        while pos < len(line):
            m = _DATASET.match(line, pos)
            if m is None:
                raise BadMessage(f"readout line {n + 1}", "OBIS(value*unit)", line[pos : pos + 40])
            data.append(DataSet(m.group(1), m.group(2), m.group(3) or ""))
            pos = m.end()
    return Readout(tuple(data))


def encode_sign_on(event: SignOn) -> bytes:
    return b"/?" + (event.address or "").encode() + b"!" + CRLF


def encode_option(event: OptionSelect) -> bytes:
    z = str(BAUDS.index(event.baud)).encode()
    v = event.mode.value.encode()
    return bytes([ACK]) + v + z + v + CRLF


class Client:
    """The probe's side of one IEC 62056-21 conversation (see the module doc)."""

    def __init__(self) -> None:
        self.state = State.IDLE
        self.identification: Identification | None = None
        self._buf = bytearray()

    def _fire(self, event: Event) -> None:
        nxt = TRANSITIONS[self.state].get(type(event))
        if nxt is None:
            raise IllegalEvent(
                f"{type(event).__name__} in state {self.state.value}",
                ", ".join(t.__name__ for t in TRANSITIONS[self.state]) or "nothing",
                type(event).__name__,
            )
        if isinstance(event, OptionSelect) and event.mode is Mode.BINARY:
            nxt = State.BINARY
        self.state = nxt

    def send(self, event: SignOn | OptionSelect) -> bytes:
        """The bytes of an outgoing message; moves the state on."""
        if isinstance(event, OptionSelect):
            ident = self.identification
            if ident is not None and event.baud > ident.max_baud:
                raise BadMessage("option select baud", f"<= {ident.max_baud}", event.baud)
            if ident is not None and event.mode is Mode.BINARY and not ident.mode_e:
                raise BadMessage("binary mode", "a mode E meter (\\2)", ident.ident)
        self._fire(event)
        self._buf.clear()
        if isinstance(event, SignOn):
            return encode_sign_on(event)
        return encode_option(event)

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the port (any chunking)."""
        if self.state in (State.IDLE, State.BINARY, State.IDENTIFIED):
            return  # nothing expected: an echo or noise
        self._buf += data
        if len(self._buf) > MAX_MESSAGE:
            self.timeout()
            raise BadMessage("message length", f"<= {MAX_MESSAGE} bytes", "more")

    def next_event(self) -> Identification | Readout | _Need:
        """The next complete message from the meter, or NEED_DATA.

        Raises BadMessage / BadBcc (the state returns to idle, as the meter's does).
        """
        buf = self._buf
        try:
            if self.state is State.AWAIT_ID:
                start = buf.find(b"/")
                end = buf.find(CRLF, max(start, 0))
                if start < 0 or end < 0:
                    return NEED_DATA
                ident = parse_identification(bytes(buf[start : end + 2]))
                del buf[: end + 2]
                self._fire(ident)
                self.identification = ident
                return ident
            if self.state is State.AWAIT_READOUT:
                start = buf.find(bytes([STX]))
                end = buf.find(bytes([ETX]), max(start, 0))
                if start < 0 or end < 0 or len(buf) < end + 2:
                    return NEED_DATA
                readout = parse_readout(bytes(buf[start : end + 2]))
                del buf[: end + 2]
                self._fire(readout)
                return readout
        except IecError:
            self.timeout()
            raise
        return NEED_DATA

    def timeout(self) -> None:
        """No answer in time (or the caller gives up): back to idle, as the meter goes."""
        self.state = State.IDLE
        self.identification = None
        self._buf.clear()
