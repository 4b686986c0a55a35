"""H04: received data is translated to engineering units exactly (no floats)."""

from __future__ import annotations

from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.errors import InvalidData
from headend.store import Channel, ChannelKind, Meter, Quantity, Scale, Unit
from headend.store.sqlite import SqliteStore
from tests.test_d01_store import STEP, T0, block, ing


def test_h04_raw_times_multipliers_times_power_of_ten() -> None:
    s = Scale(Unit.WH, channel_multiplier=3, scaler=-2, meter_multiplier=40)
    assert s.engineering(123) == Decimal("147.60")  # 123 x 3 x 40 / 100
    assert str(s.quantity(123)) == "147.60 Wh"
    assert s.milli(123) == 147_600
    assert Scale(Unit.VARH, 1, 3, 1).engineering(5) == 5000
    assert Scale(Unit.VARH, 1, 3, 1).quantity(5) == Quantity(Decimal(5000), Unit.VARH)


def test_h04_exact_where_a_float_would_not_be() -> None:
    raw, cm, mm = (1 << 31) - 1, 65_535, 65_535
    s = Scale(Unit.WH, cm, -1, mm)
    exact = raw * cm * mm  # 63 bits: beyond a double's 53-bit mantissa
    assert float(exact) != exact
    assert s.engineering(raw) * 10 == exact
    assert isinstance(s.engineering(raw), Decimal)
    assert isinstance(s.milli(raw), int) and s.milli(raw) == exact * 100
    big = (1 << 63) - 1  # a register at its limit; exact even under a 5-digit context
    with localcontext() as ctx:
        ctx.prec = 5
        assert Fraction(Scale(Unit.WH, cm, -7, mm).engineering(big)) == Fraction(
            big * cm * mm, 10**7
        )


def test_h04_milli_units_refuse_to_round() -> None:
    assert Scale(Unit.WH, 1, -3, 1).milli(7) == 7
    assert Scale(Unit.WH, 1, -4, 1).milli(70) == 7
    with pytest.raises(InvalidData, match="milli"):
        Scale(Unit.WH, 1, -4, 1).milli(7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channel_multiplier": 0},
        {"channel_multiplier": 65_536},
        {"meter_multiplier": 0},
        {"meter_multiplier": True},
        {"scaler": 128},
        {"scaler": -129},
        {"scaler": 1.0},
    ],
)
def test_h04_bad_factors_are_invalid_data(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidData):
        Scale(Unit.WH, **kwargs)  # type: ignore[arg-type]


def test_h04_only_wh_and_varh() -> None:
    with pytest.raises(InvalidData):
        Scale(3, 1, 0, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidData):
        Channel(ChannelKind.ACTIVE_IMPORT, 9)  # type: ignore[arg-type]
    assert Unit.WH.symbol == "Wh" and Unit.VARH.symbol == "varh"


@given(
    raw=st.integers(0, (1 << 63) - 1),
    cm=st.integers(1, 65_535),
    mm=st.integers(1, 65_535),
    scaler=st.integers(-128, 127),
)
def test_h04_translation_is_exact_for_every_factor(raw: int, cm: int, mm: int, scaler: int) -> None:
    s = Scale(Unit.WH, cm, scaler, mm)
    want = Fraction(raw * cm * mm) * Fraction(10) ** scaler
    assert Fraction(s.engineering(raw)) == want
    m = want * 1000
    if m.denominator == 1:
        assert s.milli(raw) == m.numerator
    else:
        with pytest.raises(InvalidData):
            s.milli(raw)


def test_h04_stored_raw_values_translate_with_the_registered_factors(tmp_path: object) -> None:
    chans = (
        Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH, 10, -1),
        Channel(ChannelKind.ACTIVE_EXPORT, Unit.WH, 1, 0),
        Channel(ChannelKind.REACTIVE_IMPORT, Unit.VARH, 5, 2),
        Channel(ChannelKind.REACTIVE_EXPORT, Unit.VARH, 1, -3),
    )
    with SqliteStore(f"{tmp_path}/u.db") as store:
        store.register_meter(Meter(5, "1", STEP, 0, 80, chans, T0))
        store.ingest([ing(5, block(T0, 3))])
        meter = store.get_meter(5)
        got = [
            [meter.scale(c).quantity(iv.value) for iv in store.intervals(5, c, T0, T0 + 3 * STEP)]
            for c in range(4)
        ]
    # raw values of block(): 100 + c * 1000 + i
    assert got[0] == [Quantity(Decimal(v * 10 * 80) / 10, Unit.WH) for v in (100, 101, 102)]
    assert got[2] == [Quantity(Decimal(v * 5 * 80 * 100), Unit.VARH) for v in (2100, 2101, 2102)]
    assert [q.value for q in got[3]] == [Decimal("248.000"), Decimal("248.080"), Decimal("248.160")]
    assert all(isinstance(q.value, Decimal) for row in got for q in row)
    with pytest.raises(InvalidData):
        meter.scale(4)
