"""K_op, the optical probe's key (M18, M20): the golden vectors the firmware twin also passes."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.auth import download_mac, meter_key, probe_key
from protocol.vectors import load


@pytest.mark.parametrize("row", load("keys.jsonl"), ids=lambda r: r["name"])
def test_m18_m20_probe_key_vectors(row: dict[str, Any]) -> None:
    k_op = probe_key(bytes.fromhex(row["meter_key"]), row["operator"])
    assert k_op.hex() == row["probe_key"]
    mac = download_mac(k_op, bytes.fromhex(row["nonce"]), row["operator"])
    assert mac.hex() == row["download_mac"]


def test_m20_probe_key_is_per_operator_and_never_the_meter_key() -> None:
    key = meter_key(bytes(32), 1001)
    keys = {probe_key(key, op) for op in (0, 1, 2, 0xFFFF)}
    assert len(keys) == 4 and key not in keys
    assert probe_key(meter_key(bytes(32), 1001, 1), 1) != probe_key(key, 1)  # follows rotation


@pytest.mark.parametrize("operator", [-1, 0x10000])
def test_m20_probe_key_refuses_an_operator_off_u16(operator: int) -> None:
    with pytest.raises(ValueError, match="operator"):
        probe_key(bytes(32), operator)
