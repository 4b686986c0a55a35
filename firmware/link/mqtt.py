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
try:
    import asyncio
except ImportError:  # older MicroPython
    import uasyncio as asyncio

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


def _packet(ptype_flags, body):
    return bytes([ptype_flags]) + remaining_length(len(body)) + body


def connect_packet(client_id, keepalive, clean=False, user=None, password=None):
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if user is not None:
        flags |= 0x80
        payload += _str(user)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    var = _str("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive)
    return _packet(_CONNECT << 4, var + payload)


def publish_packet(topic, payload, qos=1, pid=0, dup=False, retain=False):
    flags = (_PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (1 if retain else 0)
    var = _str(topic)
    if qos:
        var += struct.pack(">H", pid)
    return _packet(flags, var + payload)


def puback_packet(pid):
    return _packet(_PUBACK << 4, struct.pack(">H", pid))


def subscribe_packet(pid, topics, qos=1):
    body = struct.pack(">H", pid)
    for t in topics:
        body += _str(t) + bytes([qos])
    return _packet((_SUBSCRIBE << 4) | 0x02, body)


def pingreq_packet():
    return bytes([_PINGREQ << 4, 0])


def disconnect_packet():
    return bytes([_DISCONNECT << 4, 0])


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


def backoff_ms(attempt, rand16, base_ms=500, cap_ms=60000):
    """Delay before reconnect attempt `attempt` (0-based): exponential, capped,
    with full jitter in its upper half so a fleet does not reconnect in step."""
    d = base_ms << attempt if attempt < 16 else cap_ms
    if d > cap_ms:
        d = cap_ms
    return d // 2 + (d // 2) * rand16 // 65536


# ---- client (asyncio shell) ----


async def _sleep_ms(ms):
    if hasattr(asyncio, "sleep_ms"):  # MicroPython: no float needed
        await asyncio.sleep_ms(ms)
    else:
        await asyncio.sleep(ms / 1000)


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
        self._pid = 0
        self._writer = None
        self.connected = _Flag()
        self._stop = False
        self.connects = 0
        self.failures = 0

    def _next_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid

    async def publish(self, topic, payload, qos=1):
        """Queue a message; it is sent now if connected, else on reconnect.
        Returns the packet id (0 for QoS 0)."""
        pid = 0
        if qos:
            pid = self._next_pid()
            self.inflight[pid] = (topic, payload)
            self._order.append(pid)
        w = self._writer
        if w is not None:
            try:
                w.write(publish_packet(topic, payload, qos, pid))
                await w.drain()
            except OSError:
                pass  # the reader task notices and reconnects; inflight keeps it
        return pid

    async def wait_acked(self, pid, timeout_s=None):
        """True once `pid` has been PUBACKed (False on timeout)."""

        async def wait():
            while pid in self.inflight:
                await _sleep_ms(20)

        if timeout_s is None:
            await wait()
            return True
        try:
            await asyncio.wait_for(wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def _session(self):
        reader, writer = await self._open(self.host, self.port)
        try:
            writer.write(connect_packet(self.client_id, self.keepalive_s, clean=False))
            await writer.drain()
            ptype, _f, body = await read_packet(reader)
            if ptype != _CONNACK or len(body) != 2 or body[1] != 0:
                raise MQTTError("CONNACK refused: %r" % (body,))
            session_present = body[0] & 1
            if self.subscriptions and not session_present:
                writer.write(subscribe_packet(self._next_pid(), self.subscriptions))
            for pid in self._order:  # resend in order what the broker never acked
                topic, payload = self.inflight[pid]
                writer.write(publish_packet(topic, payload, 1, pid, dup=True))
            await writer.drain()
            self._writer = writer
            self.connects += 1
            self.connected.set()
            self._rx = True
            self._silent = False
            pinger = asyncio.create_task(self._pinger(writer, asyncio.current_task()))
            try:
                while True:
                    ptype, flags, body = await read_packet(reader)
                    self._rx = True
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
                if not self._silent:
                    raise  # stop() or the app: not a link failure
                t = asyncio.current_task()
                if hasattr(t, "uncancel"):  # CPython >= 3.11 counts cancellations
                    t.uncancel()
                raise MQTTError("broker silent for over 1.5 keepalive periods")
            finally:
                pinger.cancel()
        finally:
            self._writer = None
            self.connected.clear()
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:  # the socket may already be gone; nothing to save
                pass

    async def _pinger(self, writer, session):
        # PINGREQ every 3/4 keepalive; the broker answers every one, so two
        # periods without any packet mean the link is dead: cancel the session
        # (a task of its own per read, as wait_for makes, costs heap)
        idle = 0
        while True:
            await asyncio.sleep(self.keepalive_s * 3 // 4 or 1)
            idle = 0 if self._rx else idle + 1
            self._rx = False
            if idle >= 2:
                self._silent = True
                session.cancel()
                return
            writer.write(pingreq_packet())
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
        w = self._writer
        if w is not None:
            try:
                w.write(disconnect_packet())
                await w.drain()
                w.close()
            except OSError:
                pass
