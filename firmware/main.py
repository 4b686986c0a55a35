# The meter app: picks the HAL, wires it to the meter core, runs the tasks.
#
#   micropython firmware/main.py [FLASH_DIR]     virtual board (hal/unix.py)
#   on the ESP32: main.py runs at boot           (hal/esp32.py)
#
# Tasks: tick (every tick_ms: drain energy, core.tick, send what is due),
# pulses (drain the counters between ticks), mqtt (the link client:
# ami/v1/<id>/down -> core.receive -> replies on ami/v1/<id>/up), serial
# (HDLC-framed frames on the optical/serial port, same conversations) and,
# on the virtual board, control (line commands for the HIL supervisor).
# Only this file and hal/ read clocks. Nothing unacknowledged is forgotten:
# the core re-sends until the head-end's application ack; the link only has
# to carry frames (QoS 1) while it is up.
import gc
import sys

try:
    import asyncio
except ImportError:  # older MicroPython
    import uasyncio as asyncio

from link import mqtt
from meter import hdlc, store
from meter import meter as core

_MAX_INFLIGHT = 8  # frames handed to MQTT and not yet PUBACKed


def pick_hal():
    """hal.unix on the unix port (and CPython), hal.esp32 on the board."""
    if sys.platform in ("linux", "darwin"):
        from hal import unix

        return unix
    from hal import esp32

    return esp32


class App:
    def __init__(self, board):
        self.b = board
        ident = core.Ident(board.meter_id, board.key, **board.ident())
        self.m = core.Meter(store.Store(board.flash), ident, board.rand, board.set_clock)
        self.client = None
        self.client_task = None
        self.serial_writers = []
        self.peak = 0
        self.steady = 0
        self.samples = 0
        self.errors = 0
        self.probe = bool(getattr(board, "cfg", {}).get("heap_probe", False))
        mid = board.meter_id
        self.up_topic = "ami/v1/%d/up" % mid
        self.down_topic = "ami/v1/%d/down" % mid

    # -- links ------------------------------------------------------------------

    def mqtt_up(self):
        c = self.client
        return c is not None and c.connected.is_set() and not self.b.link_forced_down

    def online(self):
        up = self.b.uplink
        if up == "mqtt":
            return self.mqtt_up()
        if up == "uart":
            return bool(self.serial_writers)
        return self.mqtt_up() or bool(self.serial_writers)

    async def send_up(self, frames):
        if not frames:
            return
        up = self.b.uplink
        if up in ("mqtt", "both") and self.mqtt_up():
            for raw in frames:
                # bounded: a frame the link cannot take now is re-sent by the core
                if len(self.client.inflight) < _MAX_INFLIGHT:
                    await self.client.publish(self.up_topic, raw)
        if up in ("uart", "both"):
            for w in self.serial_writers:
                await self._serial_write(w, frames)

    async def _serial_write(self, w, frames):
        try:
            for raw in frames:
                w.write(hdlc.frame(raw))
            await w.drain()
        except OSError:
            pass

    def _receive(self, raw):
        b = self.b
        ms = b.now_ms()
        try:
            return self.m.receive(raw, ms // 1000, ms)
        except Exception as e:  # a core bug must not stop the meter
            self.errors += 1
            sys.print_exception(e)
            return []

    async def _on_mqtt(self, topic, payload):
        out = self._receive(payload)
        if out and not self.b.link_forced_down:
            for raw in out:
                await self.client.publish(self.up_topic, raw)

    def start_mqtt(self):
        if self.b.broker is None or self.client_task is not None:
            return
        host, port = self.b.broker
        self.client = mqtt.Client(
            "meter-%d" % self.b.meter_id,
            host,
            port,
            subscriptions=(self.down_topic,),
            handler=self._on_mqtt,
            keepalive_s=self.b.keepalive_s,
            rand=lambda: self.b.rand() & 0xFFFF,
        )
        self.client_task = asyncio.create_task(self.client.run())

    async def stop_mqtt(self):
        c = self.client
        if c is not None:
            await c.stop()
        if self.client_task is not None:
            self.client_task.cancel()
        self.client = None
        self.client_task = None

    async def serve_serial(self, reader, writer):
        """One optical/serial connection: HDLC frames in, replies out."""
        de = hdlc.Deframer()
        buf = bytearray(256)
        self.serial_writers.append(writer)
        try:
            while True:
                n = await _readinto(reader, buf)
                if not n:
                    break
                for raw in de.feed(memoryview(buf)[:n]):
                    out = self._receive(raw)
                    if out:
                        await self._serial_write(writer, out)
        except OSError:
            pass
        finally:
            self.serial_writers.remove(writer)
            try:
                writer.close()
            except OSError:
                pass

    # -- tasks ------------------------------------------------------------------

    def _drain(self):
        c = self.b.drain()
        if c:
            self.m.add(c)

    async def tick_loop(self):
        b = self.b
        while True:
            self._drain()
            ms = b.now_ms()
            try:
                frames = self.m.tick(ms // 1000, self.online(), ms)
            except Exception as e:
                self.errors += 1
                sys.print_exception(e)
                frames = []
            if self.probe:
                self.sample(frames)
            await self.send_up(frames)
            frames = None
            await asyncio.sleep_ms(b.tick_ms)

    async def pulses(self):
        while True:
            await self.b.pulse_wait()
            self._drain()

    def sample(self, live=None):
        """Heap in use after a collection; `live` (e.g. frames in flight) is kept."""
        gc.collect()
        a = gc.mem_alloc()
        if a > self.peak:
            self.peak = a
        if not live:
            self.steady = a if not self.samples else (self.steady * 7 + a) // 8
            self.samples += 1
        return a

    async def control(self, reader, writer):
        """Line commands of the virtual board (UNIX.md)."""
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                reply = await self.command(line.decode().strip())
                writer.write((reply + "\n").encode())
                await writer.drain()
        except OSError:
            pass
        writer.close()

    async def command(self, line):
        import json

        b = self.b
        parts = line.split()
        cmd = parts[0] if parts else ""
        arg = parts[1] if len(parts) > 1 else ""
        if cmd == "status":
            st = self.m.status()
            st["now"] = b.now()
            st["online"] = self.online()
            st["mqtt"] = self.mqtt_up()
            st["errors"] = self.errors
            return json.dumps(st)
        if cmd == "heap":
            a = self.sample()
            return json.dumps(
                {"alloc": a, "free": gc.mem_free(), "peak": self.peak, "steady": self.steady}
            )
        if cmd == "step":
            b.step(int(arg))
            return "ok"
        if cmd == "drift":
            b.set_drift(int(arg))
            return "ok"
        if cmd == "speed":
            b.set_speed(int(arg))
            return "ok"
        if cmd == "link":
            if arg == "down":
                b.link_forced_down = True
                await self.stop_mqtt()
            else:
                b.link_forced_down = False
                self.start_mqtt()
            return "ok"
        if cmd == "tamper":
            self.m.tamper(b.now())
            return "ok"
        if cmd == "off":  # graceful power-down (a kill -9 is the hard cut)
            sys.exit(0)
        return "error unknown command %r" % cmd


async def _readinto(reader, buf):
    # StreamReader.readinto exists on MicroPython; CPython's reader has read()
    if hasattr(reader, "readinto"):
        return await reader.readinto(buf)
    data = await reader.read(len(buf))
    buf[: len(data)] = data
    return len(data)


async def run(board):
    app = App(board)
    app.m.boot(board.now())
    print("meter %d booted at %d (%s)" % (board.meter_id, board.now(), board.NAME))
    app.start_mqtt()
    tasks = [asyncio.create_task(app.tick_loop()), asyncio.create_task(app.pulses())]
    await board.serial_ports(app.serve_serial)
    if getattr(board, "control_port", 0):
        await asyncio.start_server(app.control, "127.0.0.1", board.control_port)
    print("ready")
    await asyncio.gather(*tasks)


def main(argv):
    hal = pick_hal()
    board = hal.Board(argv[1] if len(argv) > 1 else hal.DEFAULT_DIR)
    asyncio.run(run(board))


if __name__ == "__main__":
    main(sys.argv)
