"""D12, M20: `headend keys probe-key` and `headend upload` on both backends.

The download frames here are built with the protocol's codec and signed with
K_op, as the meter signs them (the probe-to-board path is proven end to end in
tests/tools/test_m18_probe_board.py); this file is about what the head-end
accepts, stores and refuses.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from headend.cli import main
from headend.core import Core
from headend.store import Source, open_store
from protocol import download as dl
from protocol.auth import meter_key, probe_key
from protocol.frame import encode
from tests.headend.conftest import ctx_of, open_at
from tests.support.signed import MASTER, T0, SimMeter, deliver

pytestmark = pytest.mark.req("D12", "M20")

MID = 7301
OP = 12
DAY = 86400


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _register(url: str, store_at: list[Any]) -> None:
    core = Core(ctx_of(open_at(url, store_at)))
    m = SimMeter(MID, channels=4)
    deliver(core, MID, m.frame("register", m.register_body()))


def _frames(k_op: bytes, days: int = 2) -> list[bytes]:
    """download_data parts as the meter sends them: signed with K_op, fresh counters."""
    n = days * 96
    block = {
        "start": T0,
        "interval_s": 900,
        "flags": [0] * (n - 3) + [1, 1, 0],
        "channels": [[(i * 7 + c) % 50 for i in range(n)] for c in range(4)],
    }
    sections: list[list[dict[str, Any]]] = [
        [
            {"tag": "clock", "body": {"time": T0 + n * 900 + 60}},
            {"tag": "registers", "body": {"at": T0 + n * 900, "values": [9000, 10, 300, 0]}},
            {"tag": "midnight", "body": {"day": T0 + DAY, "values": [5000, 5, 150, 0]}},
            {"tag": "intervals", "body": block},
        ],
        [
            {"tag": "events", "body": [{"code": 9, "time": T0 + n * 900 + 30, "data": OP}]},
            {"tag": "schedules", "body": []},
            {"tag": "config", "body": [{"key": 1, "value": 900}]},
        ],
    ]
    return [
        encode(
            {
                "type": "download_data",
                "seq": 40 + part,
                "meter_id": MID,
                "timestamp": T0 + n * 900 + 60,
                "auth": {"counter": 500 + part, "mac": b""},
                "body": {"part": part, "parts": len(sections), "sections": secs},
            },
            key=k_op,
        )
        for part, secs in enumerate(sections)
    ]


def _issue(capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "op12.key"
    code, out, err = run(
        capsys, "keys", "probe-key", str(MID), "--operator", str(OP), "-o", str(path),
        "--database", url,
    )  # fmt: skip
    assert code == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc: dict[str, Any] = json.loads(path.read_text())
    assert doc["probe_key"] not in out  # the path is printed, never the key
    return doc


def _file(tmp_path: Path, k_op: bytes, frames: list[bytes], name: str = "dl.json") -> Path:
    doc = dl.build(
        meter=MID, operator=OP, key_version=0, downloaded_at="2024-04-03T00:01:00Z",
        tool="ami-probe test", frames=frames, k_op=k_op,
    )  # fmt: skip
    path = tmp_path / name
    path.write_text(dl.dumps(doc))
    return path


def test_d12_m20_probe_key_is_k_op_of_the_current_key_0600_recorded_and_logged(
    capsys: pytest.CaptureFixture[str], backend: str, tmp_path: Path, store_at: list[Any]
) -> None:
    _register(backend, store_at)
    doc = _issue(capsys, backend, tmp_path)
    want = probe_key(meter_key(MASTER, MID), OP)
    assert doc == {"meter": MID, "operator": OP, "key_version": 0, "probe_key": want.hex()}
    code, out, _ = run(capsys, "log", "--meter", str(MID), "--database", backend)
    assert code == 0 and "probe_key_issued" in out and want.hex() not in out
    code, _, err = run(
        capsys, "keys", "probe-key", "999", "--operator", "1", "-o", str(tmp_path / "x"),
        "--database", backend,
    )  # fmt: skip
    assert code == 2 and "999" in err and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:
        main(
            ["keys", "probe-key", str(MID), "--operator", "70000", "-o", "k", "--database", backend]
        )
    assert e.value.code == 2


def test_d12_upload_stores_manual_data_once_and_a_second_upload_changes_nothing(
    capsys: pytest.CaptureFixture[str], backend: str, tmp_path: Path, store_at: list[Any]
) -> None:
    _register(backend, store_at)
    k_op = bytes.fromhex(_issue(capsys, backend, tmp_path)["probe_key"])
    path = _file(tmp_path, k_op, _frames(k_op))
    code, out, err = run(capsys, "upload", str(path), "--database", backend, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert (res["intervals"], res["intervals_new"]) == (192, 192)
    assert (res["registers_new"], res["events_new"]) == (1, 1)
    store = open_at(backend, store_at)
    ivs = store.intervals(MID, 0, T0, T0 + 2 * DAY)
    assert len(ivs) == 192 and {iv.source for iv in ivs} == {Source.MANUAL_UPLOAD}
    assert [iv.value for iv in ivs[:3]] == [0, 7, 14]
    assert store.midnight_registers(MID, T0, T0 + 2 * DAY)[0].source == Source.MANUAL_UPLOAD
    before = store.stats()
    code, out, _ = run(capsys, "upload", str(path), "--database", backend, "--json")
    again = json.loads(out)
    assert code == 0 and (again["intervals_new"], again["registers_new"], again["events_new"]) == (
        0,
        0,
        0,
    )
    assert open_at(backend, store_at).stats() == before
    code, out, _ = run(capsys, "log", "--meter", str(MID), "--database", backend)
    assert out.count("manual_upload") == 2


@pytest.mark.parametrize("how", ["value", "file_field", "frame_dropped", "other_key"])
def test_d12_a_tampered_upload_is_refused_and_nothing_is_stored(
    capsys: pytest.CaptureFixture[str],
    sqlite_url: str,
    tmp_path: Path,
    store_at: list[Any],
    how: str,
) -> None:
    _register(sqlite_url, store_at)
    k_op = bytes.fromhex(_issue(capsys, sqlite_url, tmp_path)["probe_key"])
    frames = _frames(k_op)
    path = _file(tmp_path, k_op, frames)
    doc = json.loads(path.read_text())
    if how == "value":  # one byte of the data changed, file MAC recomputed by the forger
        raw = bytearray(frames[0])
        raw[60] ^= 0x01
        doc["frames"][0] = bytes(raw).hex()
        doc["mac"] = dl.file_mac(k_op, doc)
    elif how == "file_field":
        doc["downloaded_at"] = "2030-01-01T00:00:00Z"
    elif how == "frame_dropped":
        doc["frames"] = doc["frames"][1:]
        doc["mac"] = dl.file_mac(k_op, doc)
    else:  # signed with another operator's key, claiming operator 12
        other = probe_key(meter_key(MASTER, MID), OP + 1)
        doc = dl.build(**{**_meta(doc), "frames": _frames(other), "k_op": other})
    path.write_text(json.dumps(doc))
    before = open_at(sqlite_url, store_at).stats()
    code, _, err = run(capsys, "upload", str(path), "--database", sqlite_url)
    assert code == 1 and "refused" in err and "nothing stored" in err and len(err.splitlines()) == 1
    assert open_at(sqlite_url, store_at).stats() == before
    code, out, _ = run(capsys, "log", "--meter", str(MID), "--database", sqlite_url)
    assert "upload_refused" in out


def _meta(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("meter", "operator", "key_version", "downloaded_at", "tool")
    return {k: doc[k] for k in keys}


def test_d12_upload_needs_an_issued_key_a_known_meter_and_a_download_file(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, tmp_path: Path, store_at: list[Any]
) -> None:
    _register(sqlite_url, store_at)
    k_op = probe_key(meter_key(MASTER, MID), OP)  # right key, never issued
    path = _file(tmp_path, k_op, _frames(k_op))
    code, _, err = run(capsys, "upload", str(path), "--database", sqlite_url)
    assert code == 1 and "no probe key was issued to operator 12" in err
    assert open_store(sqlite_url).stats().intervals == 0
    doc = json.loads(path.read_text())
    doc["meter"] = 4242
    path.write_text(json.dumps(doc))
    code, _, err = run(capsys, "upload", str(path), "--database", sqlite_url)
    assert code == 2 and "4242" in err
    junk = tmp_path / "junk.json"
    junk.write_text('{"format": "csv"}')
    code, _, err = run(capsys, "upload", str(junk), "--database", sqlite_url)
    assert code == 2 and "not a download file" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "upload", str(tmp_path / "none.json"), "--database", sqlite_url)
    assert code == 2 and "none.json" in err
