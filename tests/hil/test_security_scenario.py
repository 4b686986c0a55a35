"""The security scenario (`python -m hil scenario security`): issue 11's attacks, CI-sized.

Runs the broker with the generated configuration (TLS, logins, ACLs), the
head-end and 2 boards on the real MicroPython binary, and every attack of
the scenario; then a run on the all-zero development key shows the scenario
sees an attack that works.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from headend.api import DEV_MASTER_KEY
from hil.scenarios import security
from hil.scenarios.common import Options

pytestmark = [pytest.mark.mpy, pytest.mark.usefixtures("rig_parts")]

ATTACKS = {
    "mqtt_anonymous",
    "mqtt_wrong_password",
    "mqtt_publish_other_meter",
    "mqtt_subscribe_other",
    "mqtt_join_headend_share",
    "tls_wrong_ca",
    "mqtt_clientid_takeover",
    "mqtt_oversize_payload",
    "uplink_forged_key",
    "uplink_unsigned",
    "uplink_replayed",
    "register_layout_forged",
    "downlink_forged_ack",
    "downlink_replayed",
    "config_set_dev_key",
    "time_set_future",
    "junk_flood",
}


def _show(out: dict[str, Any]) -> None:
    print(json.dumps(out, indent=1))


@pytest.mark.req("M20", "T02")
@pytest.mark.timeout(400)  # ~2 min on 2 idle cores
def test_m20_t02_security_every_attack_refused_nothing_lost_nothing_forged_stored() -> None:
    out = asyncio.run(security.run(Options(say=lambda s: None)))
    _show(out)
    assert set(out["attacks"]) == ATTACKS
    for name, a in out["attacks"].items():
        assert a["attempts"] > 0 and a["refused"] == a["attempts"], (name, a)
    assert out["attacks"]["junk_flood"]["attempts"] == security.FLOOD
    assert out["attempts"] == out["refused"] >= security.FLOOD + 30
    assert out["intervals_checked"] > 0 and out["intervals_lost"] == 0
    assert out["value_mismatch"] == 0 and out["forged_values_stored"] == 0
    assert out["flood_activity_rows"] < security.FLOOD // 4
    assert out["ok"]


@pytest.mark.req("M20")
@pytest.mark.timeout(200)
def test_m20_security_sees_the_dev_key_attack_work_on_a_site_that_runs_on_it() -> None:
    # a site on the all-zero key: the attacker's config_set is signed with the real key
    out = asyncio.run(security.attack(Options(say=lambda s: None), ("downlinks",), DEV_MASTER_KEY))
    _show(out)
    dev = out["attacks"]["config_set_dev_key"]
    assert dev["attempts"] == 1 and dev["refused"] == 0, dev
    assert out["attacks"]["downlink_forged_ack"]["refused"] == 2  # the others still refused
    assert out["ok"] is False
