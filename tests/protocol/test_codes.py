"""protocol/codes.py against the firmware's own constants and against SPEC.md.

The firmware cannot import `protocol` on MicroPython, so it names each code
again with ``const()``. These tests read those constants from the firmware's
source (the syntax tree, as mpy-cross sees it) and check every one against
`protocol.codes`, both ways where the firmware names the whole set: a code
added, renumbered or dropped on one side fails here.
"""

from __future__ import annotations

import ast
import enum
import re
from functools import cache
from pathlib import Path

import pytest

from protocol import codes
from protocol.codes import (
    ChannelKind,
    ConfigKey,
    Event,
    Flag,
    Nack,
    ReadKind,
    ReadMode,
    SlotAction,
    Unit,
    What,
)

ROOT = Path(__file__).resolve().parents[2]
METER = ROOT / "firmware" / "meter"


@cache
def consts(module: str) -> dict[str, object]:
    """``NAME = const(literal)`` assignments of one firmware/meter module."""
    tree = ast.parse((METER / f"{module}.py").read_text(encoding="utf-8"))
    out: dict[str, object] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "const"
        ):
            out[node.targets[0].id] = ast.literal_eval(node.value.args[0])
    return out


def _named(module: str, prefix: str) -> dict[str, object]:
    """Constants whose name starts with ``prefix`` (or ``_`` + prefix), prefix removed."""
    out = {}
    for name, v in consts(module).items():
        bare = name.removeprefix("_")
        if bare.startswith(prefix):
            out[bare.removeprefix(prefix)] = v
    return out


def _members(e: type[enum.Enum]) -> dict[str, int]:
    return {m.name: int(m.value) for m in e}


def test_nack_reasons_match_the_firmware_both_ways() -> None:
    assert _named("downlink", "NACK_") == _members(Nack)


def test_optical_download_codes_match_the_firmware() -> None:
    # optical.py names the nack reasons and events it uses (a subset)
    nacks = _named("optical", "NACK_")
    assert nacks and nacks.items() <= _members(Nack).items()
    events = {k: v for k, v in consts("optical").items() if k.startswith("_DOWNLOAD_")}
    assert {k.removeprefix("_"): v for k, v in events.items()} == {
        "DOWNLOAD_GRANTED": Event.DOWNLOAD_GRANTED,
        "DOWNLOAD_DENIED": Event.DOWNLOAD_DENIED,
    }
    assert consts("optical")["_WHAT_ALL"] == codes.WHAT_ALL


def test_event_codes_match_the_firmware_both_ways() -> None:
    fw = consts("events")
    got = {m.name: fw.get(m.name, fw.get("_" + m.name)) for m in Event}
    assert got == _members(Event)
    assert fw["_MAX_CODE"] == max(Event)
    assert fw["_ALWAYS_PUSH"] == 1 << Event.CLOCK_OUT_OF_SYNC
    assert fw["_NEVER_PUSH"] == 1 << Event.MESSAGE_SENT
    assert fw["MASK_ALL"] == sum(1 << e for e in Event)


def test_status_flags_match_the_recorder_and_the_block_codec() -> None:
    fw = consts("recorder")
    written = {f.name: int(f) for f in Flag if f is not Flag.RECOVERED}  # the head-end sets it
    assert {k: fw[k] for k in written} == written
    assert consts("ivblock")["_FLAG_BITS"] == codes.FLAG_BITS == sum(Flag)
    assert codes.RESERVED_FLAGS == 0xE0


def test_config_keys_match_the_firmware_both_ways() -> None:
    names = {
        "INTERVAL": "INTERVAL_S",
        "UTC_OFFSET": "UTC_OFFSET_MIN",
        "PUSH_MASK": "PUSH_MASK",
        "MULTIPLIER": "METER_MULTIPLIER",
        "RESET_REGISTRATION": "RESET_REGISTRATION",
    }
    fw = {names[k]: v for k, v in _named("downlink", "CFG_").items()}
    assert fw == _members(ConfigKey)


def test_read_modes_kinds_what_bits_and_slots_match_the_firmware() -> None:
    assert _named("schedules", "MODE_") == _members(ReadMode)
    kinds = {**_named("meter", "KIND_"), **_named("downlink", "KIND_")}
    assert kinds == _members(ReadKind)
    assert _named("reads", "WHAT_") == _members(What)
    sched = consts("schedules")
    assert sched["WHAT_ALL"] == codes.WHAT_ALL == sum(What)
    assert sched["NSLOTS"] == codes.NSLOTS
    assert {"SET": sched["_SET"], "CANCEL": sched["_CANCEL"]} == _members(SlotAction)


def test_default_channels_use_known_kinds_and_their_units() -> None:
    for kind, unit, multiplier, _scaler in consts("meter")["_CHANNELS"]:  # type: ignore[attr-defined]
        k = ChannelKind(kind)
        assert Unit(unit) is (Unit.WH if k.name.startswith("ACTIVE") else Unit.VARH)
        assert multiplier >= 1


SPEC = (ROOT / "protocol" / "SPEC.md").read_text(encoding="utf-8")


def _spec_list(label: str) -> dict[str, int]:
    """``1 bad_crc, 2 unknown_type, ...`` after ``label`` in SPEC.md, up to ``.`` or ``;``."""
    start = SPEC.index(label) + len(label)
    text = re.split(r"[.;]", SPEC[start:], maxsplit=1)[0]
    text = re.sub(r"\([^)]*\)", "", text)  # "(data = old time)"
    return {name.upper(): int(num, 0) for num, name in re.findall(r"(0x[0-9a-f]+|\d+) (\w+)", text)}


@pytest.mark.parametrize(
    ("label", "enum_"),
    [
        ("Nack reasons:", Nack),
        ("Codes:", Event),
        ("Config keys:", ConfigKey),
        ("`what` bits:", What),
        ("Channel kinds:", ChannelKind),
        ("Status flags:", Flag),
    ],
)
def test_spec_lists_the_same_codes(label: str, enum_: type[enum.Enum]) -> None:
    assert _spec_list(label) == _members(enum_)


def test_spec_units_and_names() -> None:
    assert _spec_list("Units:") == {u.symbol.upper(): int(u) for u in Unit}
    assert codes.nack_name(5) == "not_held" and codes.nack_name(42) == "reason 42"
    assert codes.event_name(11) == "tamper" and codes.event_name(99) == "unknown"
    assert codes.read_kind_name(2) == "period" and codes.read_kind_name(7) == "7"
