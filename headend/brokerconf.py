"""The mosquitto configuration of a site: mosquitto.conf, password file, ACL file.

What protocol/SPEC.md "MQTT" asks of the broker, written out:

- no anonymous client; one login per meter (its id in decimal, password
  `protocol.auth.mqtt_password` of its provisioned key), per head-end worker and
  per notification recipient (`mqtt_user_password(master, name)`);
- ACLs: a meter publishes only ``ami/v1/<id>/up`` and reads only
  ``ami/v1/<id>/down``; a worker reads every ``up`` (so it may join the shared
  subscription ``$share/<group>/ami/v1/+/up``, which nobody else can) and the
  recipients' acks, and writes every ``down``, the notifications and the
  real-time topic; a recipient reads its notifications and writes its acks;
- the client id is the user name (`use_username_as_clientid`): nobody can
  knock another identity off the broker with its client id;
- packets over 8 KiB are refused (the largest frame is far smaller) and the
  per-client queues are bounded;
- a TLS 1.2+ listener; a plain listener only when asked for (`plain_port`).

The password file is mosquitto_passwd's ``$7$`` format (PBKDF2-HMAC-SHA512,
12-byte salt, base64): ``user:$7$<iterations>$<salt>$<hash>``, made here with
hashlib so no mosquitto_passwd run (and no password on its command line) is
needed. Every file is written 0600: the password file's hashes of 128-bit
random-looking passwords are not crackable, but nobody else needs them.
"""

from __future__ import annotations

import base64
import hashlib
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
MAX_QUEUED_MESSAGES = 1000  # per client, QoS 1 held for a slow or absent client
MAX_INFLIGHT_MESSAGES = 20
METER_ID_MAX = 0xFFFFFFFF
UP = "ami/v1/{}/up"
DOWN = "ami/v1/{}/down"


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


def _topic_prefix(template: str) -> str:
    """``ami/v1/data/{meter}`` -> ``ami/v1/data/+`` (the ACL's form of a per-meter topic)."""
    return template.replace("{meter}", "+")


@dataclass(frozen=True)
class Site:
    """Who may use the broker, and how.

    Attributes:
        meters: meter ids admitted (each logs in as its id).
        workers: head-end worker user names (each its own login and client id).
        recipients: notification recipients (`headend events routes`).
        notify_topic, realtime_topic: the head-end's settings of the same names.
    """

    meters: tuple[int, ...] = ()
    workers: tuple[str, ...] = ("headend",)
    recipients: tuple[str, ...] = ()
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
        both = set(self.workers) & set(self.recipients)
        if both:
            raise ConfigError(f"{sorted(both)} named both a worker and a recipient")

    def logins(self, master: bytes) -> Iterable[tuple[str, str]]:
        """(user, password) of every identity, derived from the site master key."""
        for user in (*map(str, self.meters), *self.workers, *self.recipients):
            yield user, password_of(master, user)


def password_of(master: bytes, user: str) -> str:
    """The MQTT password of a login: a meter's (its decimal id) or a named user's."""
    if user.isdigit():
        return mqtt_password(meter_key(master, int(user), 0))
    return mqtt_user_password(master, user)


def password_file(site: Site, master: bytes) -> str:
    """The password file's text (mosquitto_passwd format)."""
    return "".join(f"{user}:{password_hash(pw)}\n" for user, pw in site.logins(master))


def acl_file(site: Site) -> str:
    """The ACL file's text: each identity its topics, nothing else (mosquitto denies the rest)."""
    out = ["# written by `headend broker config`: what each login may read and write", ""]
    notify = site.notify_topic
    for w in site.workers:
        out += [
            f"user {w}",
            f"topic read {UP.format('+')}",
            f"topic write {DOWN.format('+')}",
            f"topic write {notify}/+",
            f"topic read {notify}/+/ack",
            f"topic write {_topic_prefix(site.realtime_topic)}",
            "",
        ]
    for r in site.recipients:
        out += [f"user {r}", f"topic read {notify}/{r}", f"topic write {notify}/{r}/ack", ""]
    for m in site.meters:
        out += [f"user {m}", f"topic write {UP.format(m)}", f"topic read {DOWN.format(m)}", ""]
    return "\n".join(out)


@dataclass(frozen=True)
class Listener:
    """Where the broker listens. TLS unless ``ca`` is None (a plain listener).

    ``anonymous``: a plain loopback listener that admits clients without a login
    and without ACLs, for firmware that cannot log in yet; asked for explicitly.
    """

    port: int
    host: str = "127.0.0.1"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    anonymous: bool = False

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
        object.__setattr__(self, "acl", self.dir / "acl")


def mosquitto_conf(
    files: BrokerFiles | None,
    listeners: Iterable[Listener],
    run_as: str | None = None,
    log_path: Path | None = None,
    persistence_dir: Path | None = None,
) -> str:
    """mosquitto.conf's text. ``run_as``: mosquitto's ``user`` (who reads these 0600 files).

    ``files`` None: an anonymous broker without ACLs (tests that ask for it only).
    """
    user = run_as or pwd.getpwuid(os.getuid()).pw_name
    listeners = list(listeners)
    out = ['# written by `headend broker config` (protocol/SPEC.md "MQTT")', f"user {user}"]
    secure: list[str] = []
    if files is None:
        out.append("allow_anonymous true")
    else:
        secure = [
            "allow_anonymous false",
            f"password_file {files.passwd}",
            f"acl_file {files.acl}",
        ]
    # an anonymous listener needs settings of its own; otherwise they are global
    per_listener = files is not None and any(li.anonymous for li in listeners)
    if files is not None:
        out.append(f"per_listener_settings {'true' if per_listener else 'false'}")
        if not per_listener:
            out += secure
    out += [
        f"max_packet_size {MAX_PACKET_SIZE}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
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
        if listener.anonymous:
            out.append("allow_anonymous true")
        elif files is not None:  # a listener's setting in mosquitto 2.0
            out += (secure if per_listener else []) + ["use_username_as_clientid true"]
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
    """Write mosquitto.conf, passwd and acl (all 0600) into ``directory``."""
    files = BrokerFiles(directory.resolve())
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(files.passwd, password_file(site, master))
        write_private(files.acl, acl_file(site))
        conf = mosquitto_conf(files, listeners, run_as, log_path, persistence_dir)
        write_private(files.conf, conf)
    except OSError as e:
        raise ConfigError(f"{directory}: cannot write the broker configuration: {e}") from e
    return files
