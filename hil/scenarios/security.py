"""security: every attack of issue 11 against a running rig (M20, T02; nothing acked is lost).

The rig runs as a site does: the generated broker (TLS, one login per meter
and per head-end worker, ACLs), a random site master key (not the all-zero
development key), 2 virtual boards (1001, 1002) with an hourly read. The
attacker holds what a network attacker could hold: no login at all, a stolen
meter login for an id without a board (`OUTSIDER`), a second head-end worker
login (`ROGUE`: broker access for downlinks), meter 1001's own login while
its board is offline (a compromised meter credential) and the rig's
privileged sniffer's captures (to replay) -- never a meter key.

Each attack counts ``attempts`` and ``refused`` from what can be observed:
the broker's refusal of a login, a message that does not reach the
privileged sniffer (or the attacker) before a positive control sent after it
does, the head-end's rejection count rising by one per refused frame, a
board's nack naming the forged frame, and, at the end, the store: every
interval on the boards' flash held with the same value (0 lost), no forged
value held, the layout of 1001 unchanged. An attack whose positive control
fails (the attempt could have come to nothing anyway) counts as not refused.

  mqtt_anonymous            connect without a login
  mqtt_wrong_password       meter, worker and outsider ids with a wrong password
  mqtt_publish_other_meter  the outsider publishes to 1001's and 1002's up topics
  mqtt_subscribe_other      the outsider subscribes to 1001's / every meter's downlinks
  mqtt_join_headend_share   the outsider joins the head-end's shared subscription
  tls_wrong_ca              a client pinning another CA, or none (plain MQTT to TLS)
  mqtt_clientid_takeover    other logins with the head-end's client id
  mqtt_oversize_payload     2 MB publishes (the broker drops packets over 8 KiB)
  uplink_forged_key         1001's intervals with forged values under wrong keys
  uplink_unsigned           1001's intervals and an event without a MAC
  uplink_replayed           1001's captured signed uplinks published again
  register_layout_forged    a register changing 1001's layout, wrong key / unsigned
  downlink_forged_ack       read_ack (upto a day ahead) and event_ack, wrong key
  downlink_replayed         a captured signed downlink published again
  config_set_dev_key        multiplier 1000 signed with the all-zero master key's meter key
  time_set_future           a time_set past 2^32 s under a wrong key
  junk_flood                N junk frames: all counted, activity rows stay bounded

Ends with one JSON line: attempts, refused, attacks {name: {attempts, refused,
what}}, intervals_lost, forged_values_stored, ok. Defaults: 600x, flood 1000.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from headend.api import Headend, Kind, ScheduleSpec, meter_key, pki
from hil.rig import Rig, Seen
from hil.scenarios.attacker import (
    PASSWORD_ENV,
    Endpoint,
    Session,
    forge,
    intervals_body,
    junk,
    session,
    tls_handshake,
    try_login,
)
from hil.scenarios.common import T0, Options, Progress, compare_image
from hil.wait import WaitTimeout, wait_until

H = 3600
OUTSIDER = 1009  # a meter login without a board: a stolen credential
ROGUE = "hil-headend-2"  # a second head-end worker login
VICTIM = 1001  # its board goes offline while its credential is abused
TARGET = 1002  # receives the forged downlinks
FORGED_WH = 999_999  # a value no board records in 15 minutes
FLOOD = 1000
OVERSIZE = 10 * 2**20  # issue 11: 100 such payloads took the head-end to 233 MB RSS
OVERSIZE_TRIES = 10
RSS_BOUND_MB = 20.0  # held by the head-end (or the sniffer), they would add 100 MB
WAIT_S = 30.0  # real seconds for anything the rig does within a few simulated minutes
REFUSED_KINDS = (str(Kind.BAD_FRAME), str(Kind.REJECTED), str(Kind.UNKNOWN_METER))
NACK_AUTH, NACK_REPLAY = 3, 4
EV_CLOCK_ADJUSTED, EV_CONFIG_CHANGED, EV_AUTH_FAILED = 3, 8, 13
CFG_MULTIPLIER = 4


@dataclass
class Attack:
    """One attack's tally: attempts, those refused, and what was observed."""

    attempts: int = 0
    refused: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, refused: bool, note: str) -> None:
        self.attempts += 1
        self.refused += bool(refused)
        self.notes.append(note)

    def out(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "refused": self.refused, "what": "; ".join(self.notes)}


async def within(probe: Callable[[], Any], timeout: float) -> Any:
    """What ``probe`` returns once truthy, or None when ``timeout`` real seconds ran out."""
    try:
        return await wait_until(probe, timeout, "an attack's outcome", 0.02)
    except WaitTimeout:
        return None


def rss_mb() -> float:
    """This process's resident set (the head-end runs in it), MB."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Security:
    """The rig, the attacker's access to it, and the tally of every attack."""

    def __init__(self, rig: Rig, seed: int) -> None:
        assert rig.broker is not None and rig.config is not None and rig.sniffer is not None
        self.rig = rig
        self.broker = rig.broker
        self.sniffer = rig.sniffer
        self.worker = rig.config.worker
        self.ep = Endpoint(rig.broker.host, rig.broker.port, rig.broker.ca)
        self.rnd = random.Random(seed)
        self.attacks: dict[str, Attack] = {}
        self.seq = 0xA000  # seqs of forged frames: easy to find in nacks
        self.last_downlink_attack = 0.0
        self.forged_starts: list[int] = []
        self.facts: dict[str, Any] = {}

    # -- helpers --------------------------------------------------------------------------------

    def attack(self, name: str) -> Attack:
        return self.attacks.setdefault(name, Attack())

    def login(self, user: str | int) -> tuple[str, str]:
        return str(user), self.broker.password(user)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def now(self) -> int:
        return int(self.rig.now())

    def taken_over(self, client_id: str | int) -> int:
        """How often the broker closed a session of ``client_id`` for a newcomer (its log)."""
        return self.broker.log().count(f"Client {client_id} already connected")

    def sniffed(self, payload: bytes) -> bool:
        return any(s.raw == payload for s in self.sniffer.seen)

    def frames(self, pred: Callable[[Seen], bool]) -> list[Seen]:
        return [s for s in self.sniffer.seen if pred(s)]

    async def rejected(self) -> int:
        """Uplinks the head-end has refused so far (its own count)."""
        svc = self.rig.service
        assert svc is not None
        return await svc.call(lambda core: core.rejections.total)

    async def refused_rows(self, since_ms: int) -> int:
        def q(he: Headend) -> int:
            return len(he.activity(None, REFUSED_KINDS, since_ms, limit=1_000_000))

        return await self.rig.call(q)

    async def rejected_by(self, publish: Callable[[], Awaitable[int]]) -> tuple[int, int]:
        """(frames ``publish`` sent, how far the head-end's refusal count rose: awaited
        until it rose by as many, or WAIT_S)."""
        before = await self.rejected()
        n = await publish()

        async def counted() -> bool:
            return await self.rejected() - before >= n

        await within(counted, WAIT_S)
        return n, await self.rejected() - before

    # -- MQTT: logins, ACLs, TLS ----------------------------------------------------------------

    async def logins(self) -> None:
        """Anonymous and wrong-password logins."""
        a = self.attack("mqtt_anonymous")
        control = await try_login(self.ep, *self.login(OUTSIDER))
        ok = control is None
        for ident in (None, self.worker):
            why = await try_login(self.ep, None, None, identifier=ident)
            a.add(ok and why is not None, f"anonymous{' as ' + ident if ident else ''}: {why}")
        plain = getattr(self.broker, "plain_port", None)  # a loopback listener without TLS
        if plain is not None:
            why = await try_login(Endpoint(self.ep.host, plain, None), None, None, ca=None)
            a.add(ok and why is not None, f"anonymous on the plain port {plain}: {why}")
        if not ok:
            a.notes.append(f"control login {OUTSIDER} refused too: {control}")
        b = self.attack("mqtt_wrong_password")
        for user in (str(VICTIM), self.worker, str(OUTSIDER)):
            kicked = self.taken_over(user)
            why = await try_login(self.ep, user, secrets.token_hex(16))
            kicked = self.taken_over(user) - kicked  # a refused login must not end a session
            b.add(
                ok and why is not None and not kicked,
                f"{user}: {why}" + (f", and {user}'s session CLOSED" if kicked else ""),
            )

    async def publish_other(self) -> None:
        """Publish to other meters' up topics."""
        a = self.attack("mqtt_publish_other_meter")
        key = self.rnd.randbytes(32)
        t = self.now()

        def marker(mid: int) -> bytes:
            body = {"events": [{"code": 11, "time": t, "data": self.next_seq()}]}
            return forge("event", mid, body, key=key, seq=self.seq, timestamp=t, counter=t)

        async with session(self.ep, *self.login(OUTSIDER)) as s:
            sent = {mid: marker(mid) for mid in self.rig.meter_ids}
            answers = {mid: await s.publish(f"ami/v1/{mid}/up", p) for mid, p in sent.items()}
            control = marker(OUTSIDER)
            await s.publish(f"ami/v1/{OUTSIDER}/up", control)
            arrived = await within(lambda: self.sniffed(control), WAIT_S)
        for mid, p in sent.items():
            seen = self.sniffed(p)
            a.add(
                bool(arrived) and not seen,
                f"{OUTSIDER} -> ami/v1/{mid}/up: broker {answers[mid] or 'took it'}, "
                f"{'ARRIVED' if seen else 'never arrived'}",
            )
        a.notes.append(f"control to its own up topic {'arrived' if arrived else 'LOST'}")

    async def _control_down(self, s: Session, rogue: Session) -> bool:
        """A message to the outsider's own down topic, from the rogue worker: it arrives
        after everything the broker routed to the outsider before it."""
        ping = self.rnd.randbytes(24)
        await rogue.publish(f"ami/v1/{OUTSIDER}/down", ping)
        return bool(await within(lambda: any(p == ping for _, p in s.got), WAIT_S))

    async def _traffic(self, up: bool, n: int) -> int:
        """Wait until the boards and the head-end exchanged ``n`` more frames one way."""
        mids = set(self.rig.meter_ids)

        def count() -> int:
            return len(self.frames(lambda s: s.up == up and s.meter_id in mids))

        start = count()
        await within(lambda: count() >= start + n, 4 * WAIT_S)
        return count() - start

    async def subscribe_other(self) -> None:
        """Subscribe to other meters' downlinks."""
        filters = (f"ami/v1/{VICTIM}/down", "ami/v1/+/down", "ami/v1/#")
        await self._eavesdrop("mqtt_subscribe_other", filters, False, 3)

    async def join_share(self) -> None:
        """Join the head-end's shared subscription."""
        assert self.rig.config is not None
        filters = (
            "$share/headend/ami/v1/+/up",
            f"$share/{self.rig.config.share_group}/ami/v1/+/up",
            "ami/v1/+/up",
        )
        await self._eavesdrop("mqtt_join_headend_share", filters, True, 4)

    async def _eavesdrop(self, name: str, filters: tuple[str, ...], up: bool, n: int) -> None:
        """The outsider subscribes to ``filters`` while the boards and the head-end
        exchange ``n`` frames (``up``: uplinks, else downlinks); then the control
        message to its own down topic. Refused: none of those frames reached it."""
        a = self.attack(name)
        async with (
            session(self.ep, *self.login(ROGUE)) as rogue,
            session(self.ep, *self.login(OUTSIDER)) as s,
        ):
            for f in filters:
                await s.subscribe(f)
            await s.subscribe(f"ami/v1/{OUTSIDER}/down")
            seen = await self._traffic(up, n)
            control = await self._control_down(s, rogue)
        stolen = [t for t, _ in s.got if not t.startswith(f"ami/v1/{OUTSIDER}/")]
        for f in filters:
            a.add(control and seen >= n and not stolen, f"{f}: broker {s.suback[f]}")
        a.notes.append(
            f"{seen} {'uplinks' if up else 'downlinks'} of the boards meanwhile, "
            f"{len(stolen)} reached the outsider; control to its own down topic "
            + ("arrived" if control else "LOST")
        )

    async def wrong_ca(self) -> None:
        """TLS with the wrong CA or server name, plain MQTT to the TLS port."""
        a = self.attack("tls_wrong_ca")
        ca, name = self.ep.ca, self.broker.server_name
        if ca is None:
            a.add(False, "the broker speaks no TLS (--insecure)")
            return
        control = await tls_handshake(self.ep, ca, name)
        ok = control is None
        paths = ssl.get_default_verify_paths()
        system = Path(paths.cafile or paths.openssl_cafile)
        why = await tls_handshake(self.ep, system, name)
        a.add(ok and why is not None, f"the system's CAs pinned: {why}")
        other = await self.other_ca()
        why = await tls_handshake(self.ep, other, name)
        a.add(ok and why is not None, f"another site's CA pinned: {why}")
        why = await tls_handshake(self.ep, ca, "broker.example.org")
        a.add(ok and why is not None, f"the right CA, another server name: {why}")
        plain = Endpoint(self.ep.host, self.ep.port, None)
        why = await try_login(plain, *self.login(OUTSIDER), ca=None)
        a.add(ok and why is not None, f"plain MQTT to the TLS port: {why}")
        if not ok:
            a.notes.append(f"control handshake with the right CA and name failed: {control}")

    async def other_ca(self) -> Path:
        """The CA of another site (a broker's PKI made in the rig's dir, never started)."""
        d = self.rig.dir / "other-site"
        pki.init(d)
        return pki.Pki(d).ca

    async def takeover(self) -> None:
        """Other logins with the head-end's client id."""
        a = self.attack("mqtt_clientid_takeover")
        svc = self.rig.service
        assert svc is not None
        mqtt = svc.mqtt
        reconnects = mqtt.reconnects
        tries: list[tuple[str, str | None, str | None]] = [
            (f"{OUTSIDER}'s login", *self.login(OUTSIDER)),
            (f"{ROGUE}'s login", *self.login(ROGUE)),
            ("no login", None, None),
            (f"{self.worker} with a wrong password", self.worker, secrets.token_hex(16)),
        ]
        for what, user, pw in tries:
            before = (mqtt.reconnects, self.taken_over(self.worker))
            try:
                async with session(self.ep, user, pw, identifier=self.worker):
                    await self._traffic(True, 1)  # held while the head-end works
                    how = "admitted"
            except aiomqtt.MqttError as e:
                how = f"refused ({e})"
            after = (mqtt.reconnects, self.taken_over(self.worker))
            kept = after == before and mqtt.connected.is_set()
            a.add(
                kept,
                f"{what} as client id {self.worker}: {how}, head-end "
                + ("kept its session" if kept else "KNOCKED OFF"),
            )
        served = await self._traffic(False, 2)
        a.notes.append(
            f"head-end reconnects {mqtt.reconnects - reconnects}, then answered {served} "
            "frames of the boards"
        )
        if served < 2:
            a.refused = 0

    async def oversize(self) -> None:
        """Oversize payloads (the broker drops packets over 8 KiB)."""
        a = self.attack("mqtt_oversize_payload")
        bad0 = self.sniffer.bad
        rss0 = rss_mb()
        dropped = f"Client {OUTSIDER} disconnected due to oversize packet"
        drops0 = self.broker.log().count(dropped)
        user, password = self.login(OUTSIDER)
        ep = self.ep
        # in a process of its own: this one's growth is then the head-end's (and sniffer's)
        argv = ["oversize", "--host", ep.host, "--port", str(ep.port), "--user", user]
        argv += ["--topic", f"ami/v1/{OUTSIDER}/up", "--count", str(OVERSIZE_TRIES)]
        argv += ["--size", str(OVERSIZE)] + (["--ca", str(ep.ca)] if ep.ca else [])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hil.scenarios.attacker",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, PASSWORD_ENV: password},
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), 60 + 5 * OVERSIZE_TRIES)
        answers: list[str] = json.loads(stdout) if proc.returncode == 0 else []
        t = self.now()
        control = forge(
            "event", OUTSIDER, {"events": []}, key=None, seq=self.next_seq(), timestamp=t
        )
        async with session(ep, user, password) as s:
            await s.publish(f"ami/v1/{OUTSIDER}/up", control)
        arrived = await within(lambda: self.sniffed(control), WAIT_S)
        grew = rss_mb() - rss0
        got = self.sniffer.bad - bad0 + len(self.frames(lambda s: len(s.raw) > 8192))
        drops = self.broker.log().count(dropped) - drops0
        for i, _ in enumerate(answers):
            a.add(i < drops and bool(arrived) and got == 0 and grew < RSS_BOUND_MB, "")
        a.notes = [
            f"{len(answers)} x {OVERSIZE // 2**20} MB from another process: publisher saw "
            + ", ".join(sorted(set(answers)))
            + f"; broker log: {drops} x {dropped!r}; {got} reached the sniffer; control "
            f"{'arrived' if arrived else 'LOST'}; head-end process RSS {grew:+.1f} MB "
            f"(bound {RSS_BOUND_MB:g})"
        ]
        if proc.returncode != 0:
            a.add(False, f"the attacker process failed (exit {proc.returncode})")
        self.facts["oversize_rss_growth_mb"] = round(grew, 1)

    # -- frames up: a compromised meter login without the key -----------------------------------

    async def uplinks(self) -> None:
        """Forged, unsigned, replayed uplinks and a forged register as 1001 (board offline)."""
        rig = self.rig
        board = rig.board(VICTIM)
        captured = [s.raw for s in self.frames(lambda s: s.up and s.meter_id == VICTIM)][-3:]
        layout = (await rig.call(lambda he: he.meter(VICTIM))).channels
        last = await board.last_closed()
        assert last is not None, "the board has closed intervals by now"
        await board.link(False)

        async def offline() -> bool:
            return not (await board.status()).get("mqtt")

        await rig.eventually(offline, WAIT_S, f"board {VICTIM} offline", every=0.05)
        step = 900
        start = last + step
        values = [FORGED_WH] * 8
        self.forged_starts = [start + i * step for i in range(len(values))]
        t = self.now()
        dev_key = meter_key(bytes(32), VICTIM)

        def data(key: bytes | None) -> bytes:
            return forge(
                "read_response",
                VICTIM,
                intervals_body(start, step, values),
                key=key,
                seq=self.next_seq(),
                timestamp=t,
                counter=2**31,
            )

        register = {
            "fw_version": "ami-fw 6.6.6",
            "interval_s": step,
            "capacity_days": 45,
            "utc_offset_min": 0,
            "meter_multiplier": 1000,
            "channels": [{"kind": 1, "unit": 1, "multiplier": 1000, "scaler": 0}],
        }

        def reg(key: bytes | None) -> bytes:
            return forge(
                "register",
                VICTIM,
                register,
                key=key,
                seq=self.next_seq(),
                timestamp=t,
                counter=2**31,
            )

        unsigned_event = forge(
            "event",
            VICTIM,
            {"events": [{"code": 2, "time": t, "data": 0}]},
            key=None,
            seq=self.next_seq(),
            timestamp=t,
        )
        plan = {
            "uplink_forged_key": [
                ("random key", data(self.rnd.randbytes(32))),
                ("all-zero master's key", data(dev_key)),
            ],
            "uplink_unsigned": [("intervals", data(None)), ("event", unsigned_event)],
            "uplink_replayed": [(f"captured frame {i + 1}", raw) for i, raw in enumerate(captured)],
            "register_layout_forged": [
                ("random key", reg(self.rnd.randbytes(32))),
                ("unsigned", reg(None)),
            ],
        }
        sent_seqs = {struct.unpack_from(">H", raw, 3)[0] for fs in plan.values() for _, raw in fs}
        t0 = rig.now()

        def answers() -> list[Seen]:
            """Downlinks to the victim answering one of the frames sent here."""
            return [
                d
                for d in self.frames(lambda d: not d.up and d.meter_id == VICTIM and d.sim >= t0)
                if d.type == "register_ack"
                or sent_seqs & {d.fields["body"].get(k) for k in ("acked_seq", "nacked_seq")}
            ]

        async with session(self.ep, *self.login(VICTIM)) as s:
            for name, frames in plan.items():
                a = self.attack(name)
                for what, raw in frames:

                    async def one(raw: bytes = raw) -> int:
                        return 0 if await s.publish(f"ami/v1/{VICTIM}/up", raw) else 1

                    n, counted = await self.rejected_by(one)
                    a.add(
                        n == 1 and counted >= 1,
                        f"{what}: {'refused and counted' if counted else 'NOT counted'}"
                        if n
                        else f"{what}: publish failed",
                    )
        answered = len(answers())
        layout_after = (await rig.call(lambda he: he.meter(VICTIM))).channels
        reg_a = self.attack("register_layout_forged")
        reg_a.notes.append(f"layout {'unchanged' if layout_after == layout else 'CHANGED'}")
        if layout_after != layout:
            reg_a.refused = 0
        for name in plan:
            self.attack(name).notes.append(f"head-end answered {answered} of them")
            if answered:
                self.attack(name).refused = 0
        await board.link(True)
        self.facts["victim_back_online"] = self.now()

    # -- frames down: a second worker login without the key -------------------------------------

    async def _down(self, rogue: Session, raw: bytes, seq: int, reason: int) -> str:
        """Publish one downlink to TARGET; what the board answered (its nack)."""
        # the board nacks (and logs event 13) at most once a simulated minute
        await self.rig.until(self.last_downlink_attack + 70)
        t0 = self.rig.now()
        self.last_downlink_attack = t0
        await rogue.publish(f"ami/v1/{TARGET}/down", raw)

        def nack() -> Seen | None:
            for s in self.frames(lambda s: s.up and s.meter_id == TARGET and s.type == "nack"):
                b = s.fields["body"]
                if s.sim >= t0 and b["nacked_seq"] == seq:
                    return s
            return None

        got = await within(nack, WAIT_S)
        if got is None:
            return "no nack"
        # the board's minute starts when it answered, which a busy machine makes later than t0
        self.last_downlink_attack = max(t0, got.sim)
        r = got.fields["body"]["reason"]
        return f"nack reason {r}" + ("" if r == reason else f" (expected {reason})")

    async def downlinks(self) -> None:
        """Forged and replayed downlinks to 1002 as a second worker."""
        board = self.rig.board(TARGET)
        img0 = board.read_flash()
        key = self.rnd.randbytes(32)
        t = self.now()
        reads = self.frames(lambda s: s.up and s.meter_id == TARGET and s.type == "read_response")
        last_read = reads[-1].fields["seq"] if reads else 0
        captured = self.frames(lambda s: not s.up and s.meter_id == TARGET)
        dev_key = meter_key(bytes(32), TARGET)
        async with session(self.ep, *self.login(ROGUE)) as rogue:

            async def forged(name: str, mtype: str, body: dict[str, Any], k: bytes) -> str:
                seq = self.next_seq()
                raw = forge(
                    mtype,
                    TARGET,
                    body,
                    key=k,
                    seq=seq,
                    timestamp=self.now(),
                    counter=self.now() + 30,
                )
                got = await self._down(rogue, raw, seq, NACK_AUTH)
                self.attack(name).add(got == f"nack reason {NACK_AUTH}", f"{mtype}: {got}")
                return got

            await forged(
                "downlink_forged_ack", "read_ack", {"acked_seq": last_read, "upto": t + 86_400}, key
            )
            await forged("downlink_forged_ack", "event_ack", {"acked_seq": 0xFFFF}, key)
            a = self.attack("downlink_replayed")
            for s in captured[-2:]:
                got = await self._down(rogue, s.raw, s.fields["seq"], NACK_REPLAY)
                a.add(got == f"nack reason {NACK_REPLAY}", f"captured {s.type}: {got}")
            if not captured:
                a.add(False, "nothing captured to replay")
            await forged(
                "config_set_dev_key",
                "config_set",
                {"items": [{"key": CFG_MULTIPLIER, "value": 1000}]},
                dev_key,
            )
            await forged("time_set_future", "time_set", {"utc_ms": (2**32 + 86_400) * 1000}, key)
        st = await board.status()
        img = board.read_flash()

        def new(code: int, data: int | None = None) -> int:
            def n(im: Any) -> int:
                return sum(1 for _, _, d in im.event_codes(code) if data is None or d == data)

            return n(img) - n(img0)

        acks = self.frames(
            lambda s: (
                s.up
                and s.meter_id == TARGET
                and s.type == "config_ack"
                and s.fields["body"]["acked_seq"] >= 0xA000
            )
        )
        changed = new(EV_CONFIG_CHANGED, CFG_MULTIPLIER)
        c = self.attack("config_set_dev_key")
        c.notes.append(f"config_changed events {changed}, config_acks {len(acks)}")
        if changed or acks:
            c.refused = 0
        off = abs(int(st["now"]) - self.now())
        ts = self.attack("time_set_future")
        ts.notes.append(
            f"board clock off by {off} s, clock_adjusted events {new(EV_CLOCK_ADJUSTED)}"
        )
        if off > 300 or new(EV_CLOCK_ADJUSTED):
            ts.refused = 0
        self.facts["target_auth_failed_events"] = new(EV_AUTH_FAILED)

    # -- the outcome ---------------------------------------------------------------------------

    async def outcome(self, since: int) -> dict[str, Any]:
        """The tally, then the store against the boards' flash once the hourly reads
        delivered everything closed an hour before now (no period read: a forged ack
        that made a meter skip data would show as intervals lost)."""
        rig = self.rig
        back = self.facts.get("victim_back_online", rig.now())
        await rig.until(max(back, rig.now()) + 2 * H)
        cutoff = (self.now() // H - 1) * H

        async def compared() -> list[dict[str, int]]:
            return [
                await compare_image(rig, b.meter_id, b.read_flash(), since, cutoff)
                for b in rig.board_list
            ]

        async def delivered() -> list[dict[str, int]] | None:
            cmps = await compared()
            return cmps if all(c["headend_missing"] == 0 for c in cmps) else None

        cmps = await within(delivered, 120) or await compared()
        held = await rig.stored_intervals(VICTIM, since, cutoff + H)
        forged = sum(1 for t in self.forged_starts if t in held and held[t].value == FORGED_WH)
        attacks = {k: v.out() for k, v in self.attacks.items()}
        out: dict[str, Any] = {
            "attempts": sum(a["attempts"] for a in attacks.values()),
            "refused": sum(a["refused"] for a in attacks.values()),
            "attacks": attacks,
            "intervals_checked": sum(c["on_flash"] for c in cmps),
            "intervals_lost": sum(c["headend_missing"] for c in cmps),
            "value_mismatch": sum(c["value_mismatch"] for c in cmps),
            "forged_values_stored": forged,
            **self.facts,
        }
        out["ok"] = bool(
            out["attempts"] == out["refused"]
            and all(a["attempts"] for a in attacks.values())
            and out["intervals_checked"] > 0
            and out["intervals_lost"] == 0
            and out["value_mismatch"] == 0
            and forged == 0
        )
        return out

    # -- abuse -----------------------------------------------------------------------------------

    async def flood(self, n: int = FLOOD) -> None:
        """A junk flood: every frame counted, activity rows bounded."""
        a = self.attack("junk_flood")
        since_ms = self.rig.clock.now_ms()
        t0 = self.rig.now()
        rss0 = rss_mb()
        async with session(self.ep, *self.login(OUTSIDER)) as s:

            async def publish() -> int:
                sent = 0
                for _ in range(n):
                    raw = junk(self.rnd, OUTSIDER, self.now())
                    sent += await s.publish(f"ami/v1/{OUTSIDER}/up", raw) is None
                return sent

            sent, counted = await self.rejected_by(publish)
        # the counts are written once a simulated minute: let two pass
        await self.rig.until(self.rig.now() + 150)
        rows = await self.refused_rows(since_ms)
        minutes = (self.rig.now() - t0) / 60
        bound = int(8 * (minutes + 2))
        bounded = rows <= bound and rows < max(1, sent // 4)
        a.attempts = n
        a.refused = min(counted, sent) if bounded and sent == n else 0
        a.notes.append(
            f"{sent} junk frames published, {counted} counted as refused; {rows} activity rows "
            f"over {minutes:.0f} simulated min (bound {bound}); RSS {rss_mb() - rss0:+.1f} MB"
        )
        self.facts["flood_activity_rows"] = rows


STEPS = (
    "logins",
    "publish_other",
    "subscribe_other",
    "join_share",
    "wrong_ca",
    "takeover",
    "oversize",
    "uplinks",
    "downlinks",
    "flood",
)


async def run(opts: Options) -> dict[str, Any]:
    """Every attack against a rig with a fresh random site master key."""
    return await attack(opts, STEPS, secrets.token_hex(32))


async def attack(opts: Options, steps: tuple[str, ...], master_key: str) -> dict[str, Any]:
    """The ``steps`` (names of `Security` methods, in order) against a rig on
    ``master_key``, then the store checked against the boards' flash."""
    speed = int(opts.pick("speed", 600))
    sim_start = T0 + 10 * H
    async with Rig(
        boards=2,
        speed=speed,
        sim_start=sim_start,
        headend={"master_key": master_key},
        board_options=opts.board,
        keep=opts.keep,
        say=opts.say,
        insecure=opts.insecure,  # the attacks then show what a plain broker lets through
    ) as rig:
        p = Progress(rig, opts.say)
        assert rig.broker is not None
        rig.broker.admit(meters=(OUTSIDER,), workers=(ROGUE,))
        await rig.wait_registered()

        async def recording() -> bool:
            return all([await b.last_closed() is not None for b in rig.board_list])

        await rig.eventually(recording, 120, "boards recording", every=0.2)
        now_ms = rig.clock.now_ms()
        for m in rig.meter_ids:
            spec = ScheduleSpec(m, 1, period_s=H, offset_s=0, start=int(rig.now()) + 60, end=0)

            def put(he: Headend, s: ScheduleSpec = spec) -> None:
                he.set_schedule(s, "security", now_ms)

            await rig.call(put)
        sec = Security(rig, opts.seed)
        for name in steps:
            step: Callable[[], Awaitable[None]] = getattr(sec, name)
            p(f"attack: {(step.__doc__ or name).splitlines()[0]}")
            await step()
        p("the boards' data: waiting for the hourly reads to deliver everything")
        out: dict[str, Any] = {"scenario": "security", "speed": speed, "boards": len(rig.meter_ids)}
        out.update(await sec.outcome(sim_start))
        return out
