"""M18: the probe's IEC 62056-21 client core, sans-IO: messages, BCC, the state table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import iec62056 as iec

pytestmark = pytest.mark.req("M18")

READOUT_TEXT = (
    b"0.0.0(1001)\r\nC.1.0(1001)\r\n0.9.1(13:05:00)\r\n0.9.2(260301)\r\n"
    b"1.8.0(00012345*Wh)\r\n2.8.0(00000000*Wh)\r\n3.8.0(00004567*varh)\r\n"
    b"4.8.0(00000000*varh)\r\n1.8.0*01(00012000*Wh)\r\nF.F(00000000)\r\n0.2.0(ami-fw 0.3.0)\r\n"
    b"!\r\n\x03"
)
READOUT = b"\x02" + READOUT_TEXT + bytes([iec.bcc(READOUT_TEXT)])
IDENT = b"/AMI6\\21001\r\n"


def _identified(client: iec.Client) -> iec.Identification:
    assert client.send(iec.SignOn("1001")) == b"/?1001!\r\n"
    client.receive_data(IDENT)
    ev = client.next_event()
    assert isinstance(ev, iec.Identification)
    return ev


def test_m18_sign_on_identification_and_option_select_bytes() -> None:
    c = iec.Client()
    assert c.send(iec.SignOn()) == b"/?!\r\n"
    assert c.next_event() is iec.NEED_DATA
    c.timeout()
    ident = _identified(c)
    assert ident == iec.Identification("AMI", 19200, True, "1001")
    assert c.send(iec.OptionSelect(iec.Mode.BINARY, 19200)) == b"\x06262\r\n"
    assert c.state is iec.State.BINARY
    c2 = iec.Client()
    _identified(c2)
    assert c2.send(iec.OptionSelect(iec.Mode.READOUT, 9600)) == b"\x06050\r\n"
    assert c2.state is iec.State.AWAIT_READOUT


@given(st.lists(st.integers(1, 40), max_size=12))
def test_m18_readout_in_any_chunking_parses_with_names_and_units(cuts: list[int]) -> None:
    c = iec.Client()
    _identified(c)
    c.send(iec.OptionSelect(iec.Mode.READOUT, 19200))
    data, ev = READOUT, iec.NEED_DATA
    for n in cuts:
        c.receive_data(data[:n])
        data = data[n:]
        ev = c.next_event()
        if ev is not iec.NEED_DATA:
            break
    if ev is iec.NEED_DATA:
        c.receive_data(data)
        ev = c.next_event()
    assert isinstance(ev, iec.Readout) and c.state is iec.State.IDLE
    assert ev.get("1.8.0") == iec.DataSet("1.8.0", "00012345", "Wh")
    assert ev.get("1.8.0*01") is not None and ev.get("1.8.0*01").name == (  # type: ignore[union-attr]
        "active energy import, last midnight"
    )
    assert ev.get("0.2.0") == iec.DataSet("0.2.0", "ami-fw 0.3.0", "")
    assert len(ev.data) == 11


def test_m18_a_bad_bcc_or_a_garbled_message_is_refused_and_back_to_idle() -> None:
    c = iec.Client()
    _identified(c)
    c.send(iec.OptionSelect(iec.Mode.READOUT, 19200))
    c.receive_data(READOUT[:-1] + bytes([READOUT[-1] ^ 0x40]))
    with pytest.raises(iec.BadBcc):
        c.next_event()
    assert c.state is iec.State.IDLE
    c.send(iec.SignOn())
    c.receive_data(b"/AM\r\n")
    with pytest.raises(iec.BadMessage):
        c.next_event()
    assert c.state is iec.State.IDLE and isinstance(iec.BadBcc("x"), iec.ProtocolError)


def test_m18_the_state_table_refuses_events_out_of_order() -> None:
    c = iec.Client()
    with pytest.raises(iec.IllegalEvent, match="OptionSelect in state idle"):
        c.send(iec.OptionSelect(iec.Mode.READOUT, 300))
    c.send(iec.SignOn())
    with pytest.raises(iec.IllegalEvent):
        c.send(iec.SignOn())
    assert set(iec.TRANSITIONS) == set(iec.State)


def test_m18_option_select_refuses_what_the_meter_cannot_do() -> None:
    c = iec.Client()
    c.send(iec.SignOn())
    c.receive_data(b"/AMI4meter9\r\n")  # 4800 baud, no mode E
    ident = c.next_event()
    assert ident == iec.Identification("AMI", 4800, False, "meter9")
    with pytest.raises(iec.BadMessage, match="<= 4800"):
        c.send(iec.OptionSelect(iec.Mode.READOUT, 9600))
    with pytest.raises(iec.BadMessage, match="mode E"):
        c.send(iec.OptionSelect(iec.Mode.BINARY, 4800))
    with pytest.raises(iec.BadMessage):
        iec.OptionSelect(iec.Mode.READOUT, 115200)
    with pytest.raises(iec.BadMessage):
        iec.SignOn("12ab")
