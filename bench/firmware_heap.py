"""Heap of the real firmware on the MicroPython binary (`python -m bench firmware-heap`).

Runs firmware/main.py with hal/unix under `-X heapsize=…` for 2 simulated days
against a private mosquitto, secure as a site runs it (TLS with the CA
pinned, the meter's login and ACL; `--insecure`: plain and anonymous, to see
what TLS costs), with a fake head-end that verifies every uplink's signature
(`refused` counts those that fail), registers the meter, acks reads and
events, answers time syncs, signs every downlink, and sends a read_request
every 6 simulated hours (in turn: the previous day, on demand
since midnight, a 45-day period: everything held); the control port injects
a tamper event every 8 hours. Once a simulated day has passed, a small probe
on the optical port (IEC 62056-21) takes a readout and then the full
authenticated download (mode E binary mode, K_op): `optical` reports what it
got, `optical_peak_bytes` the heap with a download part live,
`download_heap_bytes` the heap between parts, after the drain (both after a
collection; they come out equal: the last part's buffers stay reachable from
the optical coroutine until the next part replaces them). The
firmware samples gc.mem_alloc() after gc.collect() (`heap_probe`): at idle
ticks (steady), with the tick's frames still live, and while a read part is
being built, its frame and columns live (peak); the bench also polls the
control port's `heap` command.
`memory_errors` counts the MemoryErrors the firmware logged (each one a
frame not sent); `reads` how many requests were answered with every part.
With any, the run is repeated at --retry-kb and the first one kept as
`at_requested_heap`; with none, the requested heap's run is the headline.

Code placement (--code):
  romfs         (default) the firmware is a ROMFS image (tools/fwimage.py:
                .mpy, run in place), mounted from a bytes buffer; that buffer
                stands in for the ESP32's memory-mapped ROMFS partition, so
                the heap is 100 KB plus the image and the image is subtracted
                from every figure.
  romfs-strict  the same, but the image counts against the 100 KB.
  mpy           .mpy files imported into the heap (what `mpremote cp` of .mpy gives).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import refuse
from hil.broker import BrokerError, free_port, running_broker
from hil.loadprofile import DEFAULT_CSV, ProfileError
from hil.loadprofile import read as read_profile
from tools.fwimage import ImageError, build_image, compile_tree, tool_path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
KEY = bytes(range(32))
MID = 4711
T0 = 1772323200  # 2026-03-01T00:00:00Z
TARGET = 48 * 1024
_HEAD = "bench-head"  # the fake head-end's MQTT login
CSV = DEFAULT_CSV


def build(tmp: Path, code: str) -> tuple[Path, int]:
    """Firmware as a ROMFS image (or a .mpy tree); returns (path, image bytes)."""
    if code == "mpy":
        src = tmp / "src"
        compile_tree(src, "unix")
        return src, 0
    img = tmp / "fw.romfs"
    img.write_bytes(build_image("unix"))
    return img, img.stat().st_size


def _launcher(path: Path, code: str, board_dir: Path) -> str:
    if code == "mpy":
        mount = f"sys.path.insert(0, {str(path)!r})\n"
    else:
        mount = (
            "import vfs\n"
            f"img = open({str(path)!r}, 'rb').read()\n"
            "vfs.mount(vfs.VfsRom(img), '/rom')\n"
            "sys.path.insert(0, '/rom')\n"
        )
    mods = (
        "link.loop link.mqtt meter.errors meter.crc meter.auth meter.blocks meter.wire "
        "meter.ring meter.config_log meter.store meter.timeutil meter.recorder meter.events "
        "meter.clock meter.schedules meter.reads meter.meter hal.unix main"
    )
    return (
        "import gc, sys\n"
        + mount
        + "gc.collect()\n"
        + "print('base', gc.mem_alloc())\n"
        + f"for m in {mods!r}.split():\n"
        + "    gc.collect(); a = gc.mem_alloc(); __import__(m); gc.collect()\n"
        + "    print('import', m, gc.mem_alloc() - a)\n"
        + "import main\n"
        + f"main.main(['main', {str(board_dir)!r}])\n"
    )


async def _control(port: int, cmd: str) -> str:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(cmd.encode() + b"\n")
    await w.drain()
    line = await asyncio.wait_for(r.readline(), 10)
    w.close()
    return line.decode().strip()


async def _optical(port: int, got: dict[str, Any]) -> dict[str, Any]:
    """A minimal probe: a mode C readout, then mode E and the full download
    (`got`: how far it came, for the report if it fails)."""
    from protocol.auth import download_mac, probe_key, verify_frame
    from protocol.frame import decode, encode
    from protocol.hdlc import Deframer, stuff

    r, w = await asyncio.open_connection("127.0.0.1", port)
    buf = b""

    async def until(end: bytes, extra: int = 0) -> bytes:
        nonlocal buf
        while (i := buf.find(end)) < 0 or len(buf) < i + len(end) + extra:
            chunk = await asyncio.wait_for(r.read(4096), 30)
            if not chunk:
                raise OSError("the optical port closed")
            buf += chunk
        got, buf = buf[: i + len(end) + extra], buf[i + len(end) + extra :]
        return got

    try:
        got["stage"] = "sign-on"
        w.write(b"/?!\r\n")
        await until(b"\r\n")
        got["stage"] = "readout"
        w.write(b"\x06060\r\n")  # readout at 19,200
        block = await until(b"\x03", 1)
        got["stage"] = "sign-on for binary mode"
        bcc = 0
        for c in block[1:-1]:
            bcc ^= c
        lines = block.count(b"\r\n") - 1
        t0 = time.monotonic()
        w.write(b"/?!\r\n")
        await until(b"\r\n")
        w.write(b"\x06262\r\n")  # binary mode at 19,200
        kop = probe_key(KEY, 1)
        head = {"seq": 1, "meter_id": MID, "timestamp": T0, "auth": None}
        w.write(stuff(encode(dict(head, type="download_open", body={"operator": 1}))))
        de = Deframer()
        frames: list[bytes] = []
        nbytes = 0

        async def frame() -> dict[str, Any]:
            nonlocal buf, nbytes
            while not frames:
                chunk = buf or await asyncio.wait_for(r.read(8192), 30)
                if not chunk:
                    raise OSError("the optical port closed")
                buf = b""
                nbytes += len(chunk)
                frames.extend(de.feed(chunk))
            raw = frames.pop(0)
            verify_frame(raw, kop)
            return decode(raw)

        got["stage"] = "challenge"
        nonce = (await frame())["body"]["nonce"]
        got["stage"] = "download"
        mac = download_mac(kop, nonce, 1)
        body = {"operator": 1, "mac": mac}
        w.write(stuff(encode(dict(head, seq=2, type="download_auth", body=body))))
        parts = [await frame()]
        while len(parts) < parts[0]["body"]["parts"]:
            parts.append(await frame())
            got["parts"] = len(parts)
        intervals = sum(
            len(s["body"]["flags"])
            for f in parts
            for s in f["body"]["sections"]
            if s["tag"] == "intervals"
        )
        return {
            "readout_bcc_ok": block[-1] == bcc,
            "readout_lines": lines,
            "download_parts": len(parts),
            "download_bytes": nbytes,
            "download_intervals": intervals,
            "download_wall_seconds": round(time.monotonic() - t0, 2),
        }
    finally:
        w.close()


async def _head_end(broker: Any, stop: asyncio.Event, stats: dict[str, int]) -> None:
    import ssl

    import aiomqtt

    from protocol.auth import verify_frame
    from protocol.errors import ProtocolError
    from protocol.frame import decode, encode

    seq = 0
    counter = 0
    up_counter = 0

    def frame(mtype: str, body: dict[str, Any]) -> bytes:
        nonlocal seq, counter
        seq += 1
        counter += 1
        a = {"counter": counter, "mac": b""}
        f = {"type": mtype, "seq": seq, "meter_id": MID, "timestamp": T0, "auth": a}
        return encode(dict(f, body=body), key=KEY)

    down = f"ami/v1/{MID}/down"
    login: dict[str, Any] = {}
    if broker.ca is not None:
        login = {
            "username": _HEAD,
            "password": broker.password(_HEAD),
            "tls_context": ssl.create_default_context(cafile=str(broker.ca)),
        }
    async with aiomqtt.Client(broker.host, broker.port, identifier=_HEAD, **login) as client:
        await client.subscribe(f"ami/v1/{MID}/up", qos=1)
        last_req = 0
        parts: dict[int, set[int]] = {}  # request seq -> parts received

        async def serve() -> None:
            nonlocal last_req
            nonlocal up_counter
            async for msg in client.messages:
                raw = bytes(msg.payload)
                f = decode(raw)
                try:
                    up_counter = verify_frame(raw, KEY, up_counter)
                except ProtocolError:  # (an MQTT-level DUP re-send carries an old counter)
                    stats["refused"] = stats.get("refused", 0) + 1
                    continue
                t, body = f["type"], f["body"]
                stats[t] = stats.get(t, 0) + 1
                if t == "nack":  # e.g. nack_7_5: a read_request not held
                    k = f"nack_{body['nacked_type']}_{body['reason']}"
                    stats[k] = stats.get(k, 0) + 1
                if t == "register":
                    await client.publish(down, frame("register_ack", {"status": 0}), qos=1)
                elif t == "event":
                    await client.publish(down, frame("event_ack", {"acked_seq": f["seq"]}), qos=1)
                elif t == "read_response":
                    ack = frame("read_ack", {"acked_seq": f["seq"], "upto": 0})
                    await client.publish(down, ack, qos=1)
                elif t == "time_sync_request":
                    t2 = body["t1_ms"] + 25_000  # 25 s off: the meter steps
                    r = {"t1_ms": body["t1_ms"], "t2_ms": t2, "t3_ms": t2 + 2}
                    await client.publish(down, frame("time_sync_response", r), qos=1)
                if t == "read_response" and body["request_seq"] in parts:
                    got = parts[body["request_seq"]]
                    got.add(body["part"])
                    if len(got) == body["parts"]:
                        stats["reads_complete"] = stats.get("reads_complete", 0) + 1
                        del parts[body["request_seq"]]
                if f["timestamp"] - last_req >= 6 * 3600:
                    last_req = ts = f["timestamp"]
                    day = ts - ts % 86400
                    kind = stats.get("read_request", 0) % 3
                    if kind == 0:  # the previous day
                        req = {"mode": 0, "start": day - 86400, "end": day, "what": 15}
                    elif kind == 1:  # on demand, since midnight
                        req = {"mode": 2, "start": 0, "end": 0, "what": 15}
                    else:  # 45 days: everything held
                        req = {"mode": 0, "start": ts - 45 * 86400, "end": ts, "what": 15}
                    stats["read_request"] = stats.get("read_request", 0) + 1
                    parts[seq + 1] = set()
                    await client.publish(down, frame("read_request", req), qos=1)

        task = asyncio.create_task(serve())
        await stop.wait()
        task.cancel()


async def _run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    path, image = build(tmp, args.code)
    board = tmp / "board"
    board.mkdir()
    ctl = free_port()
    optical_port = free_port()
    heap = args.heap_kb * 1024 + (image if args.code == "romfs" else 0)
    stats: dict[str, int] = {}
    with running_broker(insecure=args.insecure, meters=(MID,), workers=(_HEAD,)) as broker:
        br: dict[str, Any] = {"host": broker.host, "port": broker.port, "keepalive_s": 30}
        if broker.ca is not None:  # the login and TLS, as hil.board writes them
            br["user"] = str(MID)
            br["password"] = broker.password(MID)
            br["tls"] = {"ca": str(broker.ca), "server_name": broker.server_name}
        cfg = {
            "meter_id": MID,
            "key": KEY.hex(),
            "broker": br,
            "clock": {"sim_start": T0, "speed": args.speed},
            "control_port": ctl,
            "optical_port": optical_port,
            "tick_ms": 50,
            "heap_probe": True,
            # the reference household: real reads (the default path is the
            # repo's, which a ROMFS image does not know)
            "energy": {"csv": str(CSV)},
        }
        (board / "board.json").write_text(json.dumps(cfg))
        env = dict(os.environ, MICROPYPATH=".frozen")
        proc = subprocess.Popen(
            [
                tool_path("micropython"),
                "-X",
                f"heapsize={heap}",
                "-c",
                _launcher(path, args.code, board),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        assert proc.stdout is not None
        base = 0
        imports: dict[str, int] = {}
        lines: list[str] = []
        ready = False
        while True:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if line.startswith("base "):
                base = int(line.split()[1])
            if line.startswith("import "):
                _, mod, n = line.split()
                imports[mod] = int(n)
            if line.strip() == "ready":
                ready = True
                break
        polled: list[int] = []
        sim_end = T0 + args.days * 86400
        now = T0
        stop = asyncio.Event()
        head = asyncio.create_task(_head_end(broker, stop, stats))
        last_tamper = T0
        optical: dict[str, Any] = {}
        t_start = time.monotonic()
        while ready and proc.poll() is None and now < sim_end:
            await asyncio.sleep(1.0)
            try:
                st = json.loads(await _control(ctl, "status"))
                h = json.loads(await _control(ctl, "heap"))
            except (TimeoutError, OSError, ValueError):
                break
            now = st["now"]
            polled.append(h["alloc"])
            if now - last_tamper >= 8 * 3600:
                last_tamper = now
                await _control(ctl, "tamper")
            if not optical and now - T0 >= 86400:
                got: dict[str, Any] = {}
                try:
                    optical = await _optical(optical_port, got)
                except (TimeoutError, OSError, ValueError) as e:
                    optical = dict(got, error=repr(e))
        final: dict[str, Any] = {}
        status: dict[str, Any] = {}
        if proc.poll() is None:
            try:
                final = json.loads(await _control(ctl, "heap"))
                await _control(ctl, "qstrs")  # the pools, once, to the console
                status = json.loads(await _control(ctl, "status"))
            except (TimeoutError, OSError, ValueError):
                pass  # the firmware died (MemoryError): reported below
        stop.set()
        await asyncio.gather(head, return_exceptions=True)
        elapsed = time.monotonic() - t_start
        proc.kill()
        rest = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
        proc.wait()
    out_text = "".join(lines) + rest
    pools = [ln for ln in out_text.splitlines() if ln.startswith("qstr pool:")]
    memory_errors = sum(1 for ln in out_text.splitlines() if ln.startswith("MemoryError"))
    memory_error = memory_errors > 0 or "MemoryError" in out_text
    sub = image if args.code != "mpy" else 0  # the image buffer is the "flash"
    peak = max([final.get("peak", 0), *polled]) - sub if polled or final else None
    steady = final.get("steady", 0) - sub if final else None
    return {
        "bench": "firmware-heap",
        "interpreter": "micropython unix port (64-bit: objects about 1.6-2x the ESP32's)",
        "code": args.code,
        "mqtt": "plain, anonymous (--insecure)" if args.insecure else "TLS, CA pinned, login",
        "code_placement": {
            "romfs": "ROMFS image of .mpy run in place; image excluded (flash on the board)",
            "romfs-strict": "ROMFS image of .mpy run in place; image inside the heap",
            "mpy": ".mpy files imported into the heap",
        }[args.code],
        "heapsize_bytes": heap,
        "image_bytes": image,
        "baseline_bytes": base - sub if base else None,
        "simulated_days": round((now - T0) / 86400, 2),
        "wall_seconds": round(elapsed, 1),
        "peak_heap_bytes": peak,
        "steady_heap_bytes": steady,
        "target_steady_bytes": TARGET,
        "optical_peak_bytes": final["optical_peak"] - sub if final.get("optical_peak") else None,
        "download_heap_bytes": final["download_heap"] - sub if final.get("download_heap") else None,
        "optical": optical,
        "meets_target": steady is not None and steady <= TARGET and not memory_error,
        "memory_error": memory_error,
        "memory_errors": memory_errors,
        "firmware_errors": status.get("errors"),
        "registers_at_end": status.get("registers"),  # energy counted (Wh, varh)
        "reads": {
            "requested": stats.pop("read_request", 0),
            "complete": stats.pop("reads_complete", 0),
        },
        "qstr_pool": pools[-1][len("qstr pool: ") :] if pools else None,
        "import_heap_bytes": sum(imports.values()),
        "import_heap_by_module": imports,
        "uplinks": stats,
        "log_tail": out_text[-600:] if (memory_error or not ready or "error" in optical) else "",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench firmware-heap", description=__doc__)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--heap-kb", type=int, default=100)
    parser.add_argument("--speed", type=int, default=3600, help="simulated s per real s")
    parser.add_argument("--code", choices=("romfs", "romfs-strict", "mpy"), default="romfs")
    parser.add_argument(
        "--insecure", action="store_true", help="plain, anonymous MQTT (what TLS costs: compare)"
    )
    parser.add_argument(
        "--retry-kb", type=int, default=256, help="on MemoryError, measure again with this heap"
    )
    args = parser.parse_args(argv)
    if min(args.days, args.heap_kb, args.speed) < 1 or args.retry_kb < 0:
        parser.error("--days, --heap-kb and --speed must be >= 1, --retry-kb >= 0")
    try:
        read_profile(CSV)  # the board refuses a CSV it cannot use: say so here, in one line
        tool_path("micropython")
        out = _measure(args)
        if out["memory_error"] and args.retry_kb:
            # the real figures, from a run with room: what the firmware actually needs
            first = out
            args.heap_kb = args.retry_kb
            out = _measure(args)
            out["at_requested_heap"] = {
                "heapsize_bytes": first["heapsize_bytes"],
                "memory_error": True,
                "memory_errors": first["memory_errors"],
                "peak_heap_bytes": first["peak_heap_bytes"],
                "reads": first["reads"],
                "log_tail": first["log_tail"],
            }
    except (ProfileError, ImageError, BrokerError) as e:
        return refuse(e)
    print(json.dumps(out))
    return 0


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ami-heap-") as tmp:
        return asyncio.run(_run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
