"""What an attacker on the broker's network can do: try logins, publish, listen, forge frames.

The security scenario (hil/scenarios/security.py) builds its attacks from these:
`try_login` says what the broker answered to a login, `Session` is one MQTT
connection that publishes and records everything it receives (and the
broker's answer to each subscription), `forge` builds a frame signed with
whatever key the attacker has (or none), `junk` makes flood material.
Nothing here knows a secret the attacker would not have: the caller passes
the credentials of the identity the attack stands for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from protocol.frame import encode

CONNECT_TIMEOUT_S = 5.0
PUBLISH_TIMEOUT_S = 5.0
PASSWORD_ENV = "AMI_MQTT_PASSWORD"  # the `oversize` command's password: never in argv
_quiet = logging.getLogger("hil.attacker")  # paho's complaints about links the broker cut
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True)
class Endpoint:
    """Where the broker listens and the CA a client pins (None: plain MQTT)."""

    host: str
    port: int
    ca: Path | None


def tls_context(ca: Path | None) -> ssl.SSLContext | None:
    """A client context pinning ``ca``, the server name checked (None: plain)."""
    if ca is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _client(
    ep: Endpoint,
    user: str | None,
    password: str | None,
    identifier: str | None,
    ca: Path | None,
    protocol: int = 5,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        ep.host,
        ep.port,
        username=user,
        password=password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311,
        tls_context=tls_context(ca),
        timeout=CONNECT_TIMEOUT_S,
        logger=_quiet,
    )


async def try_login(
    ep: Endpoint,
    user: str | None,
    password: str | None,
    identifier: str | None = None,
    ca: Path | None | bool = True,
) -> str | None:
    """None if the broker admitted the login, else what refused it (one line).

    ``ca``: True pins the endpoint's CA; a path pins that one instead.
    """
    pinned = ep.ca if ca is True else (ca or None)
    try:
        async with _client(ep, user, password, identifier, pinned):
            return None
    except aiomqtt.MqttError as e:
        return str(e) or type(e).__name__
    except (OSError, TimeoutError) as e:  # TLS or socket failures paho does not wrap
        return f"{type(e).__name__}: {e}"


async def tls_handshake(ep: Endpoint, ca: Path, server_name: str) -> str | None:
    """None if a TLS handshake pinning ``ca`` and checking ``server_name`` succeeds,
    else why it failed (paho leaks the socket of a failed handshake: asyncio's own)."""
    try:
        _, w = await asyncio.wait_for(
            asyncio.open_connection(
                ep.host, ep.port, ssl=tls_context(ca), server_hostname=server_name
            ),
            CONNECT_TIMEOUT_S,
        )
    except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
        return f"{type(e).__name__}: {e}"
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return None


def _answer(codes: Any) -> str:
    """A SUBACK's reason codes as text ("Granted QoS 1", "Not authorized", ...)."""
    return ", ".join(str(c) for c in codes) if isinstance(codes, list | tuple) else str(codes)


@dataclass
class Session:
    """One logged-in MQTT connection that records every message it receives."""

    client: aiomqtt.Client
    got: list[tuple[str, bytes]] = field(default_factory=list)
    suback: dict[str, str] = field(default_factory=dict)

    async def subscribe(self, topic: str) -> str:
        """Subscribe (QoS 1); the broker's answer, also kept in ``suback``."""
        try:
            codes = await self.client.subscribe(topic, qos=1, timeout=PUBLISH_TIMEOUT_S)
            self.suback[topic] = _answer(codes)
        except aiomqtt.MqttError as e:
            self.suback[topic] = f"refused: {e}"
        return self.suback[topic]

    async def publish(self, topic: str, payload: bytes) -> str | None:
        """Publish at QoS 1; None when the broker took it, else the error."""
        try:
            await self.client.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as e:
            return str(e) or type(e).__name__
        return None

    def received(self, topic_part: str = "") -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.got if topic_part in t]

    async def _listen(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in self.client.messages:
                if isinstance(m.payload, bytes | bytearray):
                    self.got.append((str(m.topic), bytes(m.payload)))


@contextlib.asynccontextmanager
async def session(
    ep: Endpoint,
    user: str | None,
    password: str | None,
    identifier: str | None = None,
    protocol: int = 5,
) -> AsyncIterator[Session]:
    """A logged-in connection (raises aiomqtt.MqttError if refused), listening while open.

    ``protocol`` 4 (MQTT 3.1.1): the broker announces no packet size limit, so the
    client sends whatever it is given (the oversize attack).
    """
    async with _client(ep, user, password, identifier, ep.ca, protocol) as c:
        s = Session(c)
        task = asyncio.create_task(s._listen())
        try:
            yield s
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def forge(
    mtype: str,
    meter_id: int,
    body: dict[str, Any],
    *,
    key: bytes | None,
    seq: int,
    timestamp: int,
    counter: int = 0,
) -> bytes:
    """A frame as an attacker builds it: signed with ``key`` (any 32 bytes) or unsigned."""
    fields = {
        "type": mtype,
        "seq": seq & 0xFFFF,
        "meter_id": meter_id,
        "timestamp": timestamp,
        "auth": None if key is None else {"counter": counter},
        "body": body,
    }
    return encode(fields, key)


def intervals_body(
    start: int, interval_s: int, values: list[int], channels: int = 4
) -> dict[str, Any]:
    """A scheduled read_response body carrying ``values`` on every channel from ``start``."""
    block = {
        "start": start,
        "interval_s": interval_s,
        "flags": [0] * len(values),
        "channels": [list(values) for _ in range(channels)],
    }
    return {
        "request_seq": 0,
        "kind": 0,
        "part": 0,
        "parts": 1,
        "sections": [{"tag": "intervals", "body": block}],
    }


def junk(rnd: random.Random, meter_id: int, timestamp: int) -> bytes:
    """One frame of a flood: random bytes, an unsigned or wrongly signed event, or
    a frame naming another meter than its topic, chosen at random."""
    kind = rnd.randrange(4)
    if kind == 0:
        return rnd.randbytes(rnd.randrange(1, 300))
    body = {"events": [{"code": 11, "time": timestamp, "data": rnd.getrandbits(32)}]}
    key = None if kind == 1 else rnd.randbytes(32)
    mid = meter_id if kind != 3 else rnd.getrandbits(32)
    return forge(
        "event",
        mid,
        body,
        key=key,
        seq=rnd.getrandbits(16),
        timestamp=timestamp,
        counter=rnd.getrandbits(32),
    )


async def oversize(
    ep: Endpoint, user: str, password: str, topic: str, count: int, size: int, timeout: float
) -> list[str]:
    """Publish ``count`` payloads of ``size`` bytes (MQTT 3.1.1, a connection each):
    what the publisher saw of each ("taken" if the broker acknowledged it)."""
    big = random.randbytes(size)
    answers = []
    for _ in range(count):
        try:
            async with session(ep, user, password, protocol=4) as s:
                await s.client.publish(topic, big, qos=1, timeout=timeout)
                answers.append("taken")
        except aiomqtt.MqttError as e:
            answers.append(f"link closed ({e})" if str(e) else "link closed")
    return answers


def main(argv: list[str]) -> int:
    """`python -m hil.scenarios.attacker oversize ...`: the oversize attack in a process
    of its own, so the head-end's process measures only what reached it."""
    p = argparse.ArgumentParser(prog="python -m hil.scenarios.attacker")
    p.add_argument("what", choices=("oversize",))
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", type=Path)
    p.add_argument("--user", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--size", type=int, default=10 * 2**20)
    p.add_argument("--timeout", type=float, default=1.0)
    a = p.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV, "")
    ep = Endpoint(a.host, a.port, a.ca)
    out = asyncio.run(oversize(ep, a.user, password, a.topic, a.count, a.size, a.timeout))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
