# The meter app: picks the HAL, wires it to the meter core, runs the tasks.
#
#   micropython firmware/main.py [FLASH_DIR]     virtual board (hal/unix.py)
#   on the ESP32: main.py runs at boot           (hal/esp32.py)
#
# Tasks: tick (every tick_ms: drain energy, core.tick, send what is due),
# pulses (drain the counters between ticks), mqtt (the link client:
# ami/v1/<id>/down -> core.receive -> replies on ami/v1/<id>/up), serial
# (HDLC-framed frames on the serial port, same conversations), optical (the
# IEC 62056-21 port: readout, binary mode, the probe's download) and, on the
# virtual board, control (line commands for the HIL supervisor).
# Only this file and hal/ read clocks. Nothing unacknowledged is forgotten:
# the core re-sends until the head-end's application ack; the link only has
# to carry frames (QoS 1) while it is up. Few tasks and methods on purpose:
# each costs heap (firmware README, "Heap").
import gc
import sys
import time

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from link import loop as asyncio  # asyncio's subset, lighter (README "Heap")
from link import mqtt
from meter import store
from meter import meter as core

_MAX_INFLIGHT = const(8)  # frames handed to MQTT and not yet PUBACKed
_TR_MS = const(200)  # IEC 62056-21: the meter answers 200 ms after the request at the earliest
_SIGN_ON_BAUD = const(300)
_OPTICAL_FRAME = const(300)  # the probe's frames are short (download_auth: 53 bytes)
_CHAR_MS = const(1500)  # optical.feed's timeouts: how long to wait for a byte
_BINARY_IDLE_MS = const(5000)
_BINARY = const(2)  # optical link state: binary mode


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
        self.ctl = 0  # control connections open: the bench's instrument, not the meter's state
        self.errors = 0
        # optical dialogues in progress (the cold modules stay), and with
        # heap_probe the heap with a download part live and between parts
        self.optical = [0, 0, 0]
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

    async def serve_optical(self, reader, writer):
        """The optical port (SPEC "Optical port", meter/optical.py): IEC
        62056-21 sign-on and readout; in binary mode HDLC frames, and the
        probe's download part by part, the tick task running in between."""
        b = self.b
        op = self.optical
        link = core.cold("optical").new()
        buf = bytearray(64)
        mv = memoryview(buf)
        de = None
        rate = _SIGN_ON_BAUD
        busy = False
        try:
            while True:
                st = link[0]
                wait = _BINARY_IDLE_MS if st == _BINARY else _CHAR_MS if st or link[1] else 0
                n = -1
                if wait:  # a timeout (wait_for's task) only while a dialogue runs
                    n = await asyncio.wait_for_ms(reader.readinto(buf), wait)
                    if n is None:
                        n = -1  # timed out
                else:
                    n = await reader.readinto(buf)
                if not n:
                    break  # the probe closed the link
                out, new = core.cold("optical").feed(
                    link, mv[:n] if n > 0 else None, time.ticks_ms(), self.m, b.now()
                )
                if out:
                    await asyncio.sleep_ms(_TR_MS)
                if new:
                    rate = new
                    b.set_baud(writer, rate, 8 if link[0] == _BINARY else 7)
                if out:
                    writer.write(out)
                    await writer.drain()
                    # on the wire only after its 10 bits a byte (a UART's drain
                    # returns with them in its FIFO): then the baud may change
                    # and the timers run
                    await asyncio.sleep_ms(len(out) * 10000 // rate)
                    link[2] = time.ticks_ms()
                out = None
                if link[0] != _BINARY:
                    de = None
                elif n > 0:
                    if de is None:  # binary mode from this chunk on: what came
                        # after the option select is a frame already (the
                        # deframer drops the IEC bytes: no flag among them)
                        de = core.cold("hdlc").Deframer(_OPTICAL_FRAME)
                    for raw in de.feed(mv[:n]):
                        ms = b.now_ms()
                        try:
                            for f in core.cold("optical").receive(
                                self.m, link, raw, ms // 1000, ms
                            ):
                                writer.write(core.cold("hdlc").frame(f))
                            while True:  # a granted download: every part
                                await writer.drain()  # the tick task runs between parts
                                if self.m.probe is not None:
                                    a = self.sample(1)
                                    op[2] = a if a > op[2] else op[2]
                                f = core.cold("optical").part(self.m, link, b.now())
                                if f is None:
                                    break
                                writer.write(core.cold("hdlc").frame(f))
                                if self.m.probe is not None:
                                    a = self.sample(1)  # with a part live
                                    op[1] = a if a > op[1] else op[1]
                                f = None
                        except OSError:
                            raise  # the link dropped: ended below, nothing kept
                        except Exception as e:  # a core bug must not stop the meter
                            link[7] = -1  # the download ends
                            self.errors += 1
                            sys.print_exception(e)
                    link[2] = time.ticks_ms()
                if not link[0] and rate != _SIGN_ON_BAUD:
                    rate = _SIGN_ON_BAUD
                    b.set_baud(writer, rate, 7)
                if busy != bool(link[0]):
                    busy = not busy
                    op[0] += 1 if busy else -1
        except OSError:
            pass
        finally:
            if busy:
                op[0] -= 1
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
        await b.serial_ports(self.serve_serial, self.serve_optical)
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
            busy = self.optical[0]
            if not frames and not self.m.reads and not busy:
                core.drop_cold()  # idle: the codec's functions leave the heap
            if probe:
                self.sample(frames or busy)
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
        if not live and not self.ctl:
            self.steady = (self.steady * 7 + a) // 8 if self.steady else a
        return a

    async def control(self, reader, writer):
        """Line commands of the virtual board (UNIX.md), one reply line each."""
        import json

        b = self.b
        self.ctl += 1
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
                        {
                            "alloc": a,
                            "free": f,
                            "peak": self.peak,
                            "steady": self.steady,
                            "optical_peak": self.optical[1],
                            "download_heap": self.optical[2],
                        }
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
        finally:
            self.ctl -= 1
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
