"""The mosquitto configuration of a site: mosquitto.conf, password file, ACLs.

What protocol/SPEC.md "MQTT" asks of the broker, written out:

- no anonymous client; one login per meter (its id in decimal, password
  `protocol.auth.mqtt_password` of its provisioned key), per head-end worker and
  per notification recipient (`mqtt_user_password(master, name)`);
- ACLs (``acl.json``, mosquitto's dynamic-security plugin: see `acls` for why
  not its acl_file): a meter publishes only ``ami/v1/<id>/up`` and reads only
  ``ami/v1/<id>/down``; a gateway (one connection carrying many meters, each
  still signing and sequencing its own frames: a concentrator, the fleet
  simulator's multiplexed mode) the same for exactly its meters, nothing
  else; a worker reads every ``up`` (so it may join the shared subscription
  ``$share/<group>/ami/v1/+/up``, which nobody else can) and the recipients' acks,
  and writes every ``down``, the notifications and the real-time topic;
  a recipient reads its notifications and writes its acks; a real-time
  reader (H04) reads the real-time topic of every meter, or of its set of
  meters only (T01), and writes nothing;
- the client id is the user name (`use_username_as_clientid`): nobody can
  knock another identity off the broker with its client id;
- packets over 8 KiB are refused (the largest frame is far smaller) and the
  per-client queues are bounded;
- a TLS 1.2+ listener; a plain one (same logins and ACLs) only when asked for.

The password file is mosquitto_passwd's ``$7$`` format (PBKDF2-HMAC-SHA512,
12-byte salt, base64): ``user:$7$<iterations>$<salt>$<hash>``, made here with
hashlib so no mosquitto_passwd run (and no password on its command line) is
needed. Every file is written 0600: the password file's hashes of 128-bit
random-looking passwords are not crackable, but nobody else needs them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from headend.errors import ConfigError
from headend.secretfile import write_private
from protocol.auth import meter_key, mqtt_password, mqtt_user_password

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's own default (PW_DEFAULT_ITERATIONS)
SALT_LEN = 12  # mosquitto's SALT_LEN
MAX_PACKET_SIZE = 8192  # SPEC "MQTT": 8 KiB, more than the largest frame
_PUBLISH_OVERHEAD = 16  # fixed header, topic length, packet id, properties length
MAX_QUEUED_MESSAGES = 1000  # per client, QoS 1 held for a slow or absent client
# QoS 1 in flight per client, each way; mosquitto sends it as the MQTT 5 Receive
# Maximum the head-end's publisher follows (bench live, 5,000 x 3: 20 -> 100 gave
# 1,731-1,793 -> 1,851-2,025 frames/s in 4 pairs; 400 was slower than 100 in 3)
MAX_INFLIGHT_MESSAGES = 100
METER_ID_MAX = 0xFFFFFFFF
UP = "ami/v1/{}/up"
DOWN = "ami/v1/{}/down"


def payload_limit(topic: str) -> int:
    """The largest payload the broker takes on ``topic`` (its packet limit less the header);
    a client that sends more is disconnected."""
    return MAX_PACKET_SIZE - _PUBLISH_OVERHEAD - len(topic.encode())


def password_hash(
    password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """The ``$7$`` hash mosquitto checks a password against."""
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(dk).decode()}"


def check_name(name: str, what: str) -> str:
    """A non-meter user name: no MQTT wildcard, separator or ACL-file syntax; not a meter id."""
    if (
        not name
        or name.isdigit()
        or any(c in name for c in "/+#:$%\x00")
        or any(c.isspace() for c in name)
        or len(name) > 64
    ):
        raise ConfigError(
            f"{what}: expected a name without spaces, '/', '+', '#', ':', '$', '%' that is "
            f"not a number (meters log in with their id), got {name!r}"
        )
    return name


def parse_meters(text: str) -> tuple[int, ...]:
    """``1001-1003,2000`` -> (1001, 1002, 1003, 2000), sorted, without repeats."""
    ids: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError as e:
            raise ConfigError(f"meters: expected ids or ranges like 1001-1003, got {part!r}") from e
        if not 0 <= a <= b <= METER_ID_MAX or b - a >= 1_000_000:
            raise ConfigError(f"meters: {part!r} is not a range of meter ids (0..2^32-1)")
        ids.update(range(a, b + 1))
    return tuple(sorted(ids))


def topic_pattern(template: str) -> str:
    """``ami/v1/data/{meter}`` -> ``ami/v1/data/+`` (the ACL's form of a per-meter topic)."""
    return template.replace("{meter}", "+")


@dataclass(frozen=True)
class Gateway:
    """One login that carries the topics of ``meters`` (and no other meter's)."""

    name: str
    meters: tuple[int, ...]


def _name_ids(text: str, what: str, example: str) -> tuple[str, str, tuple[int, ...]]:
    """``NAME[:IDS]`` -> (name, the separator, the ids as `parse_meters` reads them)."""
    name, sep, ids = text.partition(":")
    meters = parse_meters(ids)
    if sep and not meters:
        raise ConfigError(f"{what} {name!r}: no meter ids in {text!r} (expected {example})")
    return check_name(name, what), sep, meters


def parse_gateway(text: str) -> Gateway:
    """``NAME:IDS`` (ids as `parse_meters` reads them) -> Gateway."""
    example = "NAME:IDS like gw1:100001-101000"
    name, sep, meters = _name_ids(text, "gateway", example)
    if not sep:
        raise ConfigError(f"gateway: expected {example}, got {text!r}")
    return Gateway(name, meters)


@dataclass(frozen=True)
class Reader:
    """A real-time subscriber's login: the real-time topic of ``meters``, of every
    meter when empty."""

    name: str
    meters: tuple[int, ...] = ()


def parse_reader(text: str) -> Reader:
    """``NAME`` (every meter) or ``NAME:IDS`` -> Reader."""
    name, _, meters = _name_ids(text, "realtime reader", "NAME or NAME:IDS like acme:1001-1003")
    return Reader(name, meters)


@dataclass(frozen=True)
class Site:
    """Who may use the broker, and how.

    Attributes:
        meters: meter ids admitted (each logs in as its id).
        workers: head-end worker user names (each its own login and client id).
        recipients: notification recipients (`headend events routes`).
        observers: read-only logins that see every meter frame both ways (the
            HIL rig's sniffer; a site has none).
        gateways: logins that each carry several meters' topics (no meter in two).
        readers: real-time subscribers' logins (H04), each for all or some meters.
        notify_topic, realtime_topic: the head-end's settings of the same names.
    """

    meters: tuple[int, ...] = ()
    workers: tuple[str, ...] = ("headend",)
    recipients: tuple[str, ...] = ()
    observers: tuple[str, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    readers: tuple[Reader, ...] = ()
    notify_topic: str = "ami/v1/notify"
    realtime_topic: str = "ami/v1/data/{meter}"

    def __post_init__(self) -> None:
        for m in self.meters:
            if not 0 <= m <= METER_ID_MAX:
                raise ConfigError(f"meter id {m} out of range")
        for w in self.workers:
            check_name(w, "worker")
        for r in self.recipients:
            check_name(r, "recipient")
        for o in self.observers:
            check_name(o, "observer")
        carried: set[int] = set()
        for g in self.gateways:
            check_name(g.name, "gateway")
            for m in g.meters:
                if not 0 <= m <= METER_ID_MAX:
                    raise ConfigError(f"gateway {g.name}: meter id {m} out of range")
            if carried.intersection(g.meters):
                raise ConfigError(f"gateway {g.name}: a meter already carried by another gateway")
            carried.update(g.meters)
        for rd in self.readers:
            check_name(rd.name, "realtime reader")
            if any(not 0 <= m <= METER_ID_MAX for m in rd.meters):
                raise ConfigError(f"realtime reader {rd.name}: a meter id out of range")
        named = [*self.workers, *self.recipients, *self.observers, *self.gateway_names]
        named += [rd.name for rd in self.readers]
        if len(set(named)) != len(named):
            raise ConfigError(f"a name is given twice among {named}")

    @property
    def gateway_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.gateways)

    def max_queued(self) -> int:
        """The broker's per-client queue: a gateway's holds every one of its meters'
        downlinks (the head-end may send each of them one at once: a schedule)."""
        biggest = max((len(g.meters) for g in self.gateways), default=1)
        return max(MAX_QUEUED_MESSAGES, 2 * biggest)

    def logins(self, master: bytes) -> Iterable[tuple[str, str]]:
        """(user, password) of every identity, derived from the site master key."""
        users = (*self.workers, *self.recipients, *self.observers, *self.gateway_names)
        users += tuple(r.name for r in self.readers)
        for user in (*map(str, self.meters), *users):
            yield user, password_of(master, user)


def password_of(master: bytes, user: str) -> str:
    """The MQTT password of a login: a meter's (its decimal id) or a named user's."""
    if user.isdigit():
        return mqtt_password(meter_key(master, int(user), 0))
    return mqtt_user_password(master, user)


def password_file(site: Site, master: bytes) -> str:
    """The password file's text (mosquitto_passwd format)."""
    return "".join(f"{user}:{password_hash(pw)}\n" for user, pw in site.logins(master))


def _allow(kind: str, *topics: str) -> list[dict[str, object]]:
    return [{"acltype": kind, "topic": t, "allow": True} for t in topics]


def _role(name: str, acls: list[dict[str, object]]) -> dict[str, object]:
    return {"rolename": name, "acls": acls}


def _carry(meters: tuple[int, ...]) -> list[dict[str, object]]:
    """What a login that carries ``meters`` may do: read their downlinks, write their uplinks."""
    downs = [DOWN.format(m) for m in meters]
    return (
        _allow("subscribeLiteral", *downs)
        + _allow("publishClientReceive", *downs)
        + _allow("publishClientSend", *(UP.format(m) for m in meters))
    )


def acls(site: Site) -> dict[str, object]:
    """The ACLs, as mosquitto's dynamic-security plugin reads them (its JSON config).

    Why not mosquitto's ``acl_file``: in mosquitto 2.0 it never refuses a
    subscription, it only filters deliveries. An outsider could then join the
    head-end's shared subscription and be dealt its share of the uplinks, which
    the ACL then drops: the head-end never sees them. The plugin refuses the
    SUBSCRIBE itself. Logins stay in the password file (the plugin's clients
    carry no password, so it defers authentication to that file).

    Each identity: ``publishClientSend`` (may publish), ``subscribe*`` (may
    subscribe), ``publishClientReceive`` (is delivered); everything else denied.
    """
    notify = site.notify_topic
    up_all, down_all = UP.format("+"), DOWN.format("+")
    roles = [
        _role(
            "worker",
            _allow("subscribePattern", up_all, f"$share/+/{up_all}")
            + _allow("subscribePattern", f"{notify}/+/ack", f"$share/+/{notify}/+/ack")
            + _allow("publishClientReceive", up_all, f"{notify}/+/ack")
            + _allow(
                "publishClientSend", down_all, f"{notify}/+", topic_pattern(site.realtime_topic)
            ),
        ),
        _role(
            "observer",
            _allow("subscribePattern", up_all, down_all)
            + _allow("publishClientReceive", up_all, down_all),
        ),
    ]
    clients: list[dict[str, object]] = []

    def client(user: str, role: str) -> None:
        clients.append({"username": user, "roles": [{"rolename": role}]})

    for w in site.workers:
        client(w, "worker")
    for o in site.observers:
        client(o, "observer")
    for r in site.recipients:
        mine, ack = f"{notify}/{r}", f"{notify}/{r}/ack"
        roles.append(
            _role(
                f"recipient-{r}",
                _allow("subscribeLiteral", mine)
                + _allow("publishClientReceive", mine)
                + _allow("publishClientSend", ack),
            )
        )
        client(r, f"recipient-{r}")
    for rd in site.readers:
        topics = (
            [site.realtime_topic.format(meter=m) for m in rd.meters]
            if rd.meters
            else [topic_pattern(site.realtime_topic)]
        )
        kind = "subscribeLiteral" if rd.meters else "subscribePattern"
        acl = _allow(kind, *topics) + _allow("publishClientReceive", *topics)
        roles.append(_role(f"reader-{rd.name}", acl))
        client(rd.name, f"reader-{rd.name}")
    for m in site.meters:
        roles.append(_role(f"meter-{m}", _carry((m,))))
        client(str(m), f"meter-{m}")
    for g in site.gateways:
        roles.append(_role(f"gateway-{g.name}", _carry(g.meters)))
        client(g.name, f"gateway-{g.name}")
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


_DYNSEC = "mosquitto_dynamic_security.so"
_DYNSEC_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/opt/homebrew/lib",
    "/opt/homebrew/opt/mosquitto/lib",
    "/usr/local/opt/mosquitto/lib",
)


def dynsec_plugin() -> Path:
    """mosquitto's dynamic-security plugin ($AMI_MOSQUITTO_DYNSEC, else where packages put it)."""
    override = os.environ.get("AMI_MOSQUITTO_DYNSEC")
    for d in ([override] if override else []) + [f"{d}/{_DYNSEC}" for d in _DYNSEC_DIRS]:
        if Path(d).is_file():
            return Path(d)
    raise ConfigError(
        f"mosquitto's {_DYNSEC} not found (it comes with mosquitto >= 2.0; "
        "set AMI_MOSQUITTO_DYNSEC to its path)"
    )


@dataclass(frozen=True)
class Listener:
    """Where the broker listens. TLS unless ``ca`` is None (a plain listener)."""

    port: int
    host: str = "127.0.0.1"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def lines(self) -> list[str]:
        out = [f"listener {self.port} {self.host}"]
        if self.ca is not None:
            out += [
                f"cafile {self.ca}",
                f"certfile {self.cert}",
                f"keyfile {self.key}",
                "tls_version tlsv1.2",  # the minimum (mosquitto >= 2.0): 1.2 and 1.3
                "require_certificate false",  # clients log in with passwords
            ]
        return out


@dataclass(frozen=True)
class BrokerFiles:
    """The paths of one generated configuration."""

    dir: Path
    conf: Path = field(init=False)
    passwd: Path = field(init=False)
    acl: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "conf", self.dir / "mosquitto.conf")
        object.__setattr__(self, "passwd", self.dir / "passwd")
        object.__setattr__(self, "acl", self.dir / "acl.json")


def mosquitto_conf(
    files: BrokerFiles | None,
    listeners: Iterable[Listener],
    run_as: str | None = None,
    log_path: Path | None = None,
    persistence_dir: Path | None = None,
    max_queued: int = MAX_QUEUED_MESSAGES,
) -> str:
    """mosquitto.conf's text. ``run_as``: mosquitto's ``user`` (who reads these 0600 files);
    ``max_queued``: QoS 1 messages held per client (`Site.max_queued`).

    ``files`` None: an anonymous broker without ACLs (tests that ask for it only).
    """
    user = run_as or pwd.getpwuid(os.getuid()).pw_name
    out = ['# written by `headend broker config` (protocol/SPEC.md "MQTT")', f"user {user}"]
    if files is None:
        out.append("allow_anonymous true")
    else:
        out += [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {files.passwd}",
            f"plugin {dynsec_plugin()}",
            f"plugin_opt_config_file {files.acl}",
        ]
    out += [
        f"max_packet_size {MAX_PACKET_SIZE}",
        f"max_queued_messages {max_queued}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "connection_messages true",
        # Nagle's algorithm would hold a small reply for the peer's delayed ACK (~40 ms)
        "set_tcp_nodelay true",
    ]
    if persistence_dir is None:
        out.append("persistence false")
    else:
        out += ["persistence true", f"persistence_location {persistence_dir}/"]
    if log_path is not None:
        out.append(f"log_dest file {log_path}")
        out += [f"log_type {t}" for t in ("error", "warning", "notice", "information")]
    for listener in listeners:
        out += ["", *listener.lines()]
        if files is not None:  # a listener's setting in mosquitto 2.0
            out.append("use_username_as_clientid true")
    return "\n".join(out) + "\n"


def write(
    directory: Path,
    site: Site,
    master: bytes,
    listeners: Iterable[Listener],
    run_as: str | None = None,
    log_path: Path | None = None,
    persistence_dir: Path | None = None,
) -> BrokerFiles:
    """Write mosquitto.conf, passwd and acl.json (all 0600) into ``directory``."""
    files = BrokerFiles(directory.resolve())
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(files.passwd, password_file(site, master))
        write_private(files.acl, json.dumps(acls(site), indent=1) + "\n")
        conf = mosquitto_conf(
            files, listeners, run_as, log_path, persistence_dir, site.max_queued()
        )
        write_private(files.conf, conf)
    except OSError as e:
        raise ConfigError(f"{directory}: cannot write the broker configuration: {e}") from e
    return files
