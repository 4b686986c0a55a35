# MQTT 3.1.1 client for the meter (link/loop on MicroPython; asyncio on CPython).
#
# QoS 1 publish and subscribe, keepalive, persistent session (clean session
# off, so the broker keeps our subscription and queued downlinks while we are
# away), reconnect with exponential backoff and jitter; a login (user name and
# password) and TLS with the CA pinned and the server name checked (SPEC
# "MQTT": the `ssl` module, on the unix port and the ESP32 alike). Packet building and
# parsing are pure functions; `Client` is the small asyncio shell around them.
# Delivery: an outgoing QoS 1 message stays in `inflight` until its PUBACK and
# is re-sent with DUP after every reconnect; an incoming QoS 1 message is
# PUBACKed only after the handler returned, so a crash in between makes the
# broker send it again (at least once; the protocol's seq makes it idempotent).
# Lean on purpose (it is measured with the firmware, `bench firmware-heap`):
# one coroutine per connection reads every packet (a frame per nested
# coroutine costs heap), no asyncio.Event. A refusing broker or a malformed
# packet is a ValueError naming the packet and the value; the session ends as
# on a link failure. Why a session failed (a refused login, a certificate that
# does not verify) is printed once per change of reason, the board's log.
import sys
from collections import OrderedDict  # a plain dict keeps no order on MicroPython

if sys.implementation.name == "micropython":
    from link import loop as asyncio  # asyncio's subset, lighter (README "Heap")
else:  # CPython: the tests and tools
    import asyncio

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
    return len(s).to_bytes(2, "big") + s


def _packet(flags, body):
    return bytes([flags]) + remaining_length(len(body)) + body


def connect_packet(client_id, keepalive_s, user=None, password=None):
    # protocol level 4 (3.1.1), connect flags: clean session off (the broker
    # keeps our subscription and queue), no will; user name and password if given
    flags = (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    var = _str("MQTT") + bytes([4, flags]) + keepalive_s.to_bytes(2, "big")
    body = var + _str(client_id)
    if user is not None:
        body += _str(user)
    if password is not None:
        body += _str(password)
    return _packet(_CONNECT << 4, body)


def tls_context(cafile=None, cadata=None):
    """A TLS client context that trusts only the given CA (a PEM or DER file,
    or its bytes): certificate required; the server name is checked at the
    handshake (open_connection's server_hostname)."""
    try:
        import tls  # MicroPython's C module: its `ssl` wrapper would cost 1 KB of heap
    except ImportError:  # CPython
        import ssl as tls

    if cadata is None:
        with open(cafile, "rb") as f:
            cadata = f.read()
    if cadata[:5] == b"-----":
        # MicroPython's mbedtls is built without PEM: the first certificate as DER
        from binascii import a2b_base64

        lines = cadata.split(b"\n")
        end = 1
        while end < len(lines) and not lines[end].startswith(b"-----"):
            end += 1
        cadata = a2b_base64(b"".join(lines[1:end]))
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    if hasattr(ctx, "check_hostname"):  # CPython (checks the name by default)
        ctx.load_verify_locations(cadata=cadata)
    else:  # MicroPython: positional only
        ctx.load_verify_locations(cadata)
    return ctx


def publish_packet(topic, payload, pid, dup):
    """A QoS 1 PUBLISH (the only QoS the meter sends)."""
    flags = (_PUBLISH << 4) | 0x02 | (0x08 if dup else 0)
    return _packet(flags, _str(topic) + pid.to_bytes(2, "big") + payload)


def puback_packet(pid):
    return _packet(_PUBACK << 4, pid.to_bytes(2, "big"))


def subscribe_packet(pid, subscriptions):
    """SUBSCRIBE to each topic in `subscriptions` with QoS 1."""
    body = pid.to_bytes(2, "big")
    for t in subscriptions:
        body += _str(t) + bytes([1])
    return _packet((_SUBSCRIBE << 4) | 0x02, body)


def parse_publish(flags, body):
    """(topic, payload, qos, pid, dup) of a PUBLISH body."""
    t = 2 + int.from_bytes(body[:2], "big")  # the topic's end
    qos = (flags >> 1) & 3
    pos = t + 2 if qos else t  # the payload's start, after the packet id
    if len(body) < 2 or pos > len(body) or qos == 3:
        raise ValueError("PUBLISH", body)
    pid = int.from_bytes(body[t:pos], "big")  # 0 at QoS 0 (no packet id)
    return bytes(body[2:t]).decode(), bytes(body[pos:]), qos, pid, bool(flags & 0x08)


def backoff_ms(attempt, rand):
    """Delay before reconnect attempt `attempt` (0-based), `rand`'s low 16 bits
    the jitter: exponential, capped, with full jitter in its upper half so a
    fleet does not reconnect in step."""
    d = _BACKOFF_MS << attempt if attempt < 16 else _BACKOFF_CAP_MS
    if d > _BACKOFF_CAP_MS:
        d = _BACKOFF_CAP_MS
    return d // 2 + (d // 2) * (rand & 0xFFFF) // 65536


# ---- client (asyncio shell) ----


class Client:
    """Args: client_id, host, port, subscriptions (topics, QoS 1), handler
    (async callable (topic, payload) for incoming messages), keepalive_s, rand
    (callable -> int, its low 16 bits jitter the reconnect delay; default: no
    jitter), user and password (the login; None: anonymous), tls (None: plain;
    else (cafile, cadata, server_name): the CA pinned, one of cafile/cadata).
    `connected.is_set()` while a session is up, as on an asyncio.Event;
    `error` says why the last session failed (None once connected)."""

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        subscriptions=(),
        handler=None,
        keepalive_s=60,
        rand=None,
        user=None,
        password=None,
        tls=None,
    ):
        self.client_id = client_id
        self.user = user
        self._password = password  # never printed
        self.tls = tls
        self.error = None
        self.host = host
        self.port = port
        self.subscriptions = tuple(subscriptions)
        self.handler = handler
        self.keepalive_s = keepalive_s
        self._rand = rand
        self.inflight = OrderedDict()  # pid -> (topic, payload), in send order: not yet PUBACKed
        self.pid = 0  # the last packet id handed out
        self.writer = None  # the session's stream while connected
        # the client answers `connected.is_set()` itself (an asyncio.Event would
        # load asyncio.event, ~1 KB heap)
        self.connected = self
        self._stop = False

    def is_set(self):
        """A session is up (CONNACK received): `connected.is_set()`."""
        return self.writer is not None

    def _next_pid(self):
        while True:
            self.pid = self.pid % 65535 + 1
            if self.pid not in self.inflight:
                return self.pid

    async def publish(self, topic, payload):
        """Queue a QoS 1 message; it is sent now if connected, else on
        reconnect. Returns its packet id (gone from `inflight` once PUBACKed)."""
        return await self.publish_all(topic, (payload,), 0)

    async def publish_all(self, topic, payloads, limit=0):
        """publish() each payload, all written before the first await (limit:
        while fewer are in flight, 0 = no limit): a handler run meanwhile cannot
        slip its own between them, so signed frames leave in counter order.
        Returns the last packet id."""
        w = self.writer
        pid = 0
        for payload in payloads:
            if limit and len(self.inflight) >= limit:
                break
            pid = self._next_pid()
            self.inflight[pid] = (topic, payload)
            if w is not None:
                try:
                    w.write(publish_packet(topic, payload, pid, False))
                except OSError:
                    w = None  # the session notices and reconnects; inflight keeps it
        if w is not None:
            try:
                await w.drain()
            except OSError:
                pass
        return pid

    async def run(self):
        """Connect, serve, and reconnect with backoff until `stop()`."""
        attempt = 0
        while not self._stop:
            writer = pinger = None  # pinger: the session's, once CONNACKed
            try:
                t = self.tls
                if t:
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=tls_context(t[0], t[1]), server_hostname=t[2]
                    )
                else:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(
                    connect_packet(self.client_id, self.keepalive_s, self.user, self._password)
                )
                await writer.drain()
                self.idle = 0  # keepalive periods since the last packet (_pinger)
                while True:
                    # a packet: type and flags, remaining length (7 bits a byte,
                    # at most 4 bytes), body
                    head = (await reader.readexactly(1))[0]
                    n = shift = 0
                    while True:
                        b = (await reader.readexactly(1))[0]
                        n |= (b & 0x7F) << shift
                        shift += 7
                        if not b & 0x80:
                            break
                        if shift == 28:
                            raise ValueError("length")
                    if n > _MAX_PACKET:
                        raise ValueError("length", n)
                    body = await reader.readexactly(n) if n else b""
                    self.idle = 0
                    ptype = head >> 4
                    if pinger is None:  # the session's first packet
                        if ptype != _CONNACK or len(body) != 2 or body[1] != 0:
                            # 4 bad user name or password, 5 not authorised: retried
                            raise ValueError("CONNACK", body[1] if len(body) == 2 else body)
                        if self.subscriptions and not body[0] & 1:  # no session present
                            writer.write(subscribe_packet(self._next_pid(), self.subscriptions))
                        for pid in self.inflight:  # resend in order what the broker never acked
                            topic, payload = self.inflight[pid]
                            writer.write(publish_packet(topic, payload, pid, True))
                        await writer.drain()
                        self.writer = writer
                        self.error = None
                        attempt = 0
                        pinger = asyncio.create_task(self._pinger(writer, asyncio.current_task()))
                    elif ptype == _PUBLISH:
                        topic, payload, qos, pid, _dup = parse_publish(head & 0x0F, body)
                        if self.handler is not None:
                            await self.handler(topic, payload)
                        if qos == 1:
                            writer.write(puback_packet(pid))
                            await writer.drain()
                    elif ptype == _PUBACK and len(body) == 2:
                        self.inflight.pop(int.from_bytes(body, "big"), None)
                    elif ptype != _SUBACK and ptype != _PINGRESP:
                        raise ValueError("type", ptype)
            except asyncio.CancelledError:
                if pinger is None or self.idle <= 2:
                    raise  # stop() or the app: not a link failure
                # the pinger's: the broker was silent for over 1.5 keepalive periods
                task = asyncio.current_task()
                if hasattr(task, "uncancel"):  # CPython >= 3.11 counts cancellations
                    task.uncancel()
            except (OSError, ValueError, EOFError, asyncio.TimeoutError) as e:
                # the link failed: reconnect. Say why once (a refused login, a
                # certificate that does not verify): the board's log
                why = repr(e)
                if why != self.error and not self._stop:
                    self.error = why
                    print("mqtt:", why)
            finally:
                if pinger is not None:
                    pinger.cancel()
                self.writer = None
                if writer is not None:
                    try:
                        writer.close()
                        await writer.wait_closed()
                    except Exception:  # the socket may already be gone; nothing to save
                        pass
            if self._stop:
                break
            ms = backoff_ms(attempt, self._rand() if self._rand else 32768)
            if hasattr(asyncio, "sleep_ms"):  # MicroPython: no float needed
                await asyncio.sleep_ms(ms)
            else:
                await asyncio.sleep(ms / 1000)
            attempt += 1

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
