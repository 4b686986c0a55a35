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
# to carry frames (QoS 1) while it is up. Few tasks and methods on purpose:
# each costs heap (firmware README, "Heap").
import asyncio
import gc
import sys

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from link import mqtt
from meter import store
from meter import meter as core

_MAX_INFLIGHT = const(8)  # frames handed to MQTT and not yet PUBACKed


class App:
    def __init__(self, board):
        self.b = board
        ident = core.Ident(board.meter_id, board.key, **board.ident())
        self.m = core.Meter(store.Store(board.flash), ident, board.rand, board.set_clock)
        self.client = None
        self.task = None  # the MQTT client's
        self.serial_writers = []
        self.peak = 0
        self.steady = 0  # 0: not sampled yet
        self.errors = 0
        # the uplink topic; the downlink's is "...down" (literals under 11
        # characters are interned names, not heap strings: README, "Heap")
        self.topic = "ami/v1/%d/" % board.meter_id + "up"

    # -- links ------------------------------------------------------------------

    def online(self, mqtt=False):
        """The uplink can carry frames now (mqtt: the MQTT link is up)."""
        c = self.client
        up = c is not None and c.connected.is_set() and not self.b.link_forced_down
        if mqtt or self.b.uplink == "mqtt":
            return up
        if self.b.uplink == "uart":
            return bool(self.serial_writers)
        return up or bool(self.serial_writers)

    async def send(self, frames, writer=None):
        """Frames out: to `writer` (a serial reply), else the uplink(s)."""
        up = self.b.uplink
        if writer is None and up != "uart" and self.online(True):
            # bounded: a frame the link cannot take now is re-sent by the core
            await self.client.publish_all(self.topic, frames, _MAX_INFLIGHT)
        for w in (writer,) if writer is not None else self.serial_writers if up != "mqtt" else ():
            try:
                for raw in frames:
                    w.write(core.cold("hdlc").frame(raw))
                await w.drain()
            except OSError:
                pass

    async def receive(self, topic, raw, writer=None):
        """A frame in, from MQTT or (writer) a serial line: the core's replies
        go back the way it came."""
        ms = self.b.now_ms()
        try:
            out = self.m.receive(raw, ms // 1000, ms)
        except Exception as e:  # a core bug must not stop the meter
            self.errors += 1
            sys.print_exception(e)
            return
        if writer is not None:
            await self.send(out, writer)
        elif not self.b.link_forced_down:
            await self.client.publish_all(self.topic, out)

    async def mqtt(self, on):
        """Start (on) or stop the MQTT link client."""
        b = self.b
        c = self.client
        if on and b.broker is not None and c is None:
            self.client = mqtt.Client(
                str(b.meter_id),  # the client id is the login (SPEC "MQTT")
                b.broker[0],
                b.broker[1],
                subscriptions=("ami/v1/%d/" % b.meter_id + "down",),
                handler=self.receive,
                keepalive_s=b.keepalive_s,
                rand=b.rand,
                user=b.mqtt_user,
                password=b.mqtt_password,
                tls=b.tls,
            )
            self.task = asyncio.create_task(self.client.run())
        elif not on and c is not None:
            await c.stop()
            self.task.cancel()
            self.client = self.task = None

    async def serve_serial(self, reader, writer):
        """One optical/serial connection: HDLC frames in, replies out."""
        de = core.cold("hdlc").Deframer()
        buf = bytearray(256)
        self.serial_writers.append(writer)
        try:
            while True:
                n = await reader.readinto(buf)
                if not n:
                    break
                for raw in de.feed(memoryview(buf)[:n]):
                    await self.receive(None, raw, writer)
        except OSError:
            pass
        finally:
            self.serial_writers.remove(writer)
            try:
                writer.close()
            except OSError:
                pass

    # -- tasks ------------------------------------------------------------------

    async def pulses(self):
        """Drain the pulse counters (after a wake-up, and before each tick)."""
        while True:
            await self.b.pulse_wait()
            c = self.b.drain()
            if c:
                self.m.add(c)

    async def run(self):
        """Boot, start the links and the other tasks, then tick every tick_ms."""
        b = self.b
        self.m.boot(b.now())
        print("meter %d booted at %d (%s)" % (b.meter_id, b.now(), b.NAME))
        await self.mqtt(True)
        asyncio.create_task(self.pulses())
        await b.serial_ports(self.serve_serial)
        if b.control_port:
            await asyncio.start_server(self.control, "127.0.0.1", b.control_port)
        print("ready")
        probe = getattr(b, "heap_probe", False)
        if probe:  # the peak includes a read part being built (reads.frame)
            self.m.probe = self.sample
        while True:
            c = b.drain()
            if c:
                self.m.add(c)
            ms = b.now_ms()
            try:
                frames = self.m.tick(ms // 1000, self.online(), ms)
            except Exception as e:
                self.errors += 1
                sys.print_exception(e)
                frames = []
            if not frames and not self.m.reads:
                core.drop_cold()  # idle: the codec's functions leave the heap
            if probe:
                self.sample(frames)
            if frames:
                await self.send(frames)
            frames = None
            await asyncio.sleep_ms(b.tick_ms)

    def sample(self, live=None):
        """Heap in use after a collection; `live` (e.g. frames in flight) is kept."""
        gc.collect()
        a = gc.mem_alloc()
        if a > self.peak:
            self.peak = a
        if not live:
            self.steady = (self.steady * 7 + a) // 8 if self.steady else a
        return a

    async def control(self, reader, writer):
        """Line commands of the virtual board (UNIX.md), one reply line each."""
        import json

        b = self.b
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                parts = line.decode().split()
                cmd = parts[0] if parts else ""
                arg = parts[1] if len(parts) > 1 else ""
                reply = "ok"
                if cmd == "status":
                    st = self.m.status()
                    st["now"] = b.now()
                    st["online"] = self.online()
                    st["mqtt"] = self.online(True)
                    st["errors"] = self.errors
                    reply = json.dumps(st)
                elif cmd == "qstrs":  # the interned-name pools, to the console
                    __import__("micropython").qstr_info()
                elif cmd == "heap":
                    a = self.sample()
                    f = gc.mem_free()
                    reply = json.dumps(
                        {"alloc": a, "free": f, "peak": self.peak, "steady": self.steady}
                    )
                elif cmd == "step":
                    b.anchor(b.now_ms() + int(arg) * 1000)
                elif cmd == "drift":
                    b.anchor(b.now_ms(), drift=int(arg))
                elif cmd == "speed":
                    b.anchor(b.now_ms(), speed=int(arg))
                elif cmd == "link":
                    b.link_forced_down = arg == "down"
                    await self.mqtt(arg != "down")
                elif cmd == "tamper":
                    self.m.tamper(b.now())
                elif cmd == "off":  # graceful power-down (a kill -9 is the hard cut)
                    sys.exit(0)
                else:
                    reply = "error %r" % cmd  # an unknown command
                writer.write((reply + "\n").encode())
                await writer.drain()
        except OSError:
            pass
        writer.close()


def main(argv):
    if sys.platform == "esp32":
        from hal import esp32 as hal
    else:  # the unix port: the virtual board
        from hal import unix as hal
    board = hal.Board(argv[1] if len(argv) > 1 else hal.DEFAULT_DIR)
    asyncio.run(App(board).run())


if __name__ == "__main__":
    main(sys.argv)
