# MQTT 3.1.1 client for the meter (MicroPython asyncio; also runs on CPython).
#
# QoS 1 publish and subscribe, keepalive, persistent session (clean session
# off, so the broker keeps our subscription and queued downlinks while we are
# away), reconnect with exponential backoff and jitter. Packet building and
# parsing are pure functions; `Client` is the small asyncio shell around them.
# Delivery: an outgoing QoS 1 message stays in `inflight` until its _PUBACK and
# is re-sent with DUP after every reconnect; an incoming QoS 1 message is
# PUBACKed only after the handler returned, so a crash in between makes the
# broker send it again (at least once; the protocol's seq makes it idempotent).
import asyncio
import struct

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_CONNECT = const(1)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBSCRIBE = const(8)
_SUBACK = const(9)
_PINGREQ = const(12)
_PINGRESP = const(13)
_DISCONNECT = const(14)

_MAX_PACKET = const(8192)  # a frame is at most 4133 bytes; anything bigger is refused
_BACKOFF_MS = const(500)  # the first reconnect delay, doubling per attempt
_BACKOFF_CAP_MS = const(60000)


class MQTTError(Exception):
    """A broker refused us, sent a malformed packet, or the link failed."""


# ---- packets (pure) ----


def remaining_length(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">H", len(s)) + s


def _packet(flags, body):
    return bytes([flags]) + remaining_length(len(body)) + body


def connect_packet(client_id, keepalive_s):
    # protocol level 4 (3.1.1), connect flags 0: clean session off (the broker
    # keeps our subscription and queue), no will, no user name or password
    var = _str("MQTT") + bytes([4, 0]) + struct.pack(">H", keepalive_s)
    return _packet(_CONNECT << 4, var + _str(client_id))


def publish_packet(topic, payload, pid, dup=False):
    """A QoS 1 PUBLISH (the only QoS the meter sends)."""
    flags = (_PUBLISH << 4) | 0x02 | (0x08 if dup else 0)
    return _packet(flags, _str(topic) + struct.pack(">H", pid) + payload)


def puback_packet(pid):
    return _packet(_PUBACK << 4, struct.pack(">H", pid))


def subscribe_packet(pid, subscriptions):
    """SUBSCRIBE to each topic in `subscriptions` with QoS 1."""
    body = struct.pack(">H", pid)
    for t in subscriptions:
        body += _str(t) + bytes([1])
    return _packet((_SUBSCRIBE << 4) | 0x02, body)


def parse_publish(flags, body):
    """(topic, payload, qos, pid, dup) of a _PUBLISH body."""
    if len(body) < 2:
        raise MQTTError("PUBLISH too short")
    tlen = struct.unpack_from(">H", body, 0)[0]
    qos = (flags >> 1) & 3
    pos = 2 + tlen
    pid = 0
    if qos:
        if len(body) < pos + 2:
            raise MQTTError("PUBLISH without packet id")
        pid = struct.unpack_from(">H", body, pos)[0]
        pos += 2
    if pos > len(body) or qos == 3:
        raise MQTTError("PUBLISH malformed")
    return bytes(body[2 : 2 + tlen]).decode(), bytes(body[pos:]), qos, pid, bool(flags & 0x08)


async def read_packet(reader):
    """(type, flags, body) of the next packet; MQTTError on a closed or bad stream."""
    head = await reader.readexactly(1)
    n = 0
    shift = 0
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    else:
        raise MQTTError("bad remaining length")
    if n > _MAX_PACKET:
        raise MQTTError("packet too large: %d" % n)
    body = await reader.readexactly(n) if n else b""
    return head[0] >> 4, head[0] & 0x0F, body


def backoff_ms(attempt, rand):
    """Delay before reconnect attempt `attempt` (0-based), `rand` 0..65535:
    exponential, capped, with full jitter in its upper half so a fleet does not
    reconnect in step."""
    d = _BACKOFF_MS << attempt if attempt < 16 else _BACKOFF_CAP_MS
    if d > _BACKOFF_CAP_MS:
        d = _BACKOFF_CAP_MS
    return d // 2 + (d // 2) * rand // 65536


# ---- client (asyncio shell) ----


async def _sleep_ms(t):
    if hasattr(asyncio, "sleep_ms"):  # MicroPython: no float needed
        await asyncio.sleep_ms(t)
    else:
        await asyncio.sleep(t / 1000)


class _Flag:
    """asyncio.Event's is_set/set/clear/wait (wait polls every 20 ms): only
    tests wait on it, and asyncio.Event would load asyncio.event (~1 KB heap)."""

    def __init__(self):
        self.on = False

    def is_set(self):
        return self.on

    def set(self):
        self.on = True

    def clear(self):
        self.on = False

    async def wait(self):
        while not self.on:
            await _sleep_ms(20)
        return True


class Client:
    """Args: client_id, host, port, subscriptions (topics, QoS 1), handler
    (async callable (topic, payload) for incoming messages), keepalive_s, rand
    (callable -> int 0..65535 for jitter), connect (async (host, port) ->
    (reader, writer); default asyncio.open_connection, a seam for tests)."""

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        subscriptions=(),
        handler=None,
        keepalive_s=60,
        rand=None,
        connect=None,
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.subscriptions = tuple(subscriptions)
        self.handler = handler
        self.keepalive_s = keepalive_s
        self._rand = rand or (lambda: 32768)
        self._open = connect or asyncio.open_connection
        self.inflight = {}  # pid -> (topic, payload): sent, not yet PUBACKed
        self._order = []  # pids in send order, for in-order resend
        self.pid = 0  # the last packet id handed out
        self.writer = None  # the session's stream while connected
        self.connected = _Flag()
        self._stop = False
        self.failures = 0

    def _next_pid(self):
        while True:
            self.pid = self.pid % 65535 + 1
            if self.pid not in self.inflight:
                return self.pid

    async def publish(self, topic, payload):
        """Queue a QoS 1 message; it is sent now if connected, else on
        reconnect. Returns its packet id (gone from `inflight` once PUBACKed)."""
        pid = self._next_pid()
        self.inflight[pid] = (topic, payload)
        self._order.append(pid)
        w = self.writer
        if w is not None:
            try:
                w.write(publish_packet(topic, payload, pid))
                await w.drain()
            except OSError:
                pass  # the reader task notices and reconnects; inflight keeps it
        return pid

    async def _session(self):
        reader, writer = await self._open(self.host, self.port)
        try:
            writer.write(connect_packet(self.client_id, self.keepalive_s))
            await writer.drain()
            ptype, _f, body = await read_packet(reader)
            if ptype != _CONNACK or len(body) != 2 or body[1] != 0:
                raise MQTTError("CONNACK refused: %r" % (body,))
            session_present = body[0] & 1
            if self.subscriptions and not session_present:
                writer.write(subscribe_packet(self._next_pid(), self.subscriptions))
            for pid in self._order:  # resend in order what the broker never acked
                topic, payload = self.inflight[pid]
                writer.write(publish_packet(topic, payload, pid, dup=True))
            await writer.drain()
            self.writer = writer
            self.connected.set()
            self.idle = 0  # keepalive periods since the last packet (_pinger)
            pinger = asyncio.create_task(self._pinger(writer, asyncio.current_task()))
            try:
                while True:
                    ptype, flags, body = await read_packet(reader)
                    self.idle = 0
                    if ptype == _PUBLISH:
                        topic, payload, qos, pid, _dup = parse_publish(flags, body)
                        if self.handler is not None:
                            await self.handler(topic, payload)
                        if qos == 1:
                            writer.write(puback_packet(pid))
                            await writer.drain()
                    elif ptype == _PUBACK and len(body) == 2:
                        pid = struct.unpack(">H", body)[0]
                        if self.inflight.pop(pid, None) is not None:
                            self._order.remove(pid)
                    elif ptype not in (_SUBACK, _PINGRESP):
                        raise MQTTError("unexpected packet type %d" % ptype)
            except asyncio.CancelledError:
                if self.idle <= 2:
                    raise  # stop() or the app: not a link failure
                t = asyncio.current_task()
                if hasattr(t, "uncancel"):  # CPython >= 3.11 counts cancellations
                    t.uncancel()
                raise MQTTError("broker silent for over 1.5 keepalive periods")
            finally:
                pinger.cancel()
        finally:
            self.writer = None
            self.connected.clear()
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:  # the socket may already be gone; nothing to save
                pass

    async def _pinger(self, writer, task):
        # PINGREQ every 3/4 keepalive; the broker answers every one, so two
        # whole periods without any packet (`idle` past 2: the session zeroes
        # it on each) mean the link is dead: cancel the session's `task` (a
        # task of its own per read, as wait_for makes, costs heap)
        while True:
            await asyncio.sleep(self.keepalive_s * 3 // 4 or 1)
            self.idle += 1
            if self.idle > 2:
                task.cancel()
                return
            writer.write(bytes([_PINGREQ << 4, 0]))
            await writer.drain()

    async def run(self):
        """Connect, serve, and reconnect with backoff until `stop()`."""
        attempt = 0
        while not self._stop:
            try:
                await self._session()
                attempt = 0
            except (OSError, MQTTError, EOFError, asyncio.TimeoutError):
                self.failures += 1
            if self._stop:
                break
            await _sleep_ms(backoff_ms(attempt, self._rand()))
            attempt += 1

    async def stop(self):
        self._stop = True
        w = self.writer
        if w is not None:
            try:
                w.write(bytes([_DISCONNECT << 4, 0]))
                await w.drain()
                w.close()
            except OSError:
                pass
