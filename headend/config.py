"""Service configuration: documented defaults, a TOML file, env, then flags.

Precedence (last wins): the defaults below, `--config FILE` (TOML, the same
keys, in a `[headend]` table), environment variables `AMI_<KEY>` (upper-case),
command-line flags. Every key is documented on `Config`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from headend.errors import ConfigError

DEV_MASTER_KEY = "00" * 32


@dataclass(frozen=True)
class Config:
    """Every setting of the head-end, with its default.

    Attributes:
        broker: MQTT broker URL, ``mqtts://user@host:port`` (TLS; port default
            8883; user default: ``worker``). ``mqtt://host:port`` (plain, and
            anonymous without a user) only with ``insecure``.
        mqtt_password_file: a 0600 file holding this worker's MQTT password
            (refused if others can read it); else ``mqtt_password`` (env
            AMI_MQTT_PASSWORD, or the 0600 config file); else derived from the
            master key as the broker config derives it (SPEC "MQTT").
        mqtt_ca_file: the CA (PEM) that signed the broker's certificate (pinned;
            empty: the system's CAs).
        insecure: allow plain ``mqtt://`` (warned in the log).
        mqtt_max_queued: incoming messages held before the link stops reading
            from the broker (back-pressure: the broker queues, then the meters).
        database: store URL (``sqlite:///path`` or ``postgresql://…``).
        share_group: MQTT 5 shared-subscription group: workers with the same
            group share the meters' uplinks (``$share/<group>/ami/v1/+/up``).
        worker: this worker's MQTT client id (unique per process).
        session_expiry_s: how long the broker keeps a disconnected worker's
            session (its share of uplinks); a retired worker stops taking a share
            after this. Meters repeat unacknowledged uplinks, so nothing is lost.
        report_tz: IANA time zone for reports and exports.
        master_key: hex key from which each meter's key is derived
            (HMAC-SHA256(master, meter id)); the default is for development only.
        master_key_file: a file holding the master key (``headend keys init``
            makes one, 0600); when set it wins over ``master_key``, and a file
            group or others may read is refused.
        key_retry_s: an unanswered key_set (key rotation) is sent again after this.
        realtime_topic: where ingested data is published for real-time
            subscribers; ``{meter}`` is replaced by the meter id.
        realtime: publish it there (H04). Off where nobody reads the feed: its
            JSON and messages are about a third of a worker's CPU per uplink
            (docs/SCALE.md), and a quarter of the broker's.
        assign_at: local time (report_tz) of the evening placement of
            unscheduled meters into read groups.
        window_start, window_end: the nightly collection window.
        group_minutes: length of one read group.
        group_capacity: meters a read group can hold.
        schedule_ack_timeout_s: a schedule without ack after this is flagged and re-sent.
        ondemand_timeout_s: an on-demand read without a valid answer after this is retried.
        ondemand_retries: retries of an on-demand read before the requester and
            the operator are notified.
        serial: serial lines, each ``{url = "...", baud = 19200}``; meters are
            learned from the frames that arrive on a line.
        speed: simulated-clock speed factor (1 = real time); start instant
            ``clock_start`` (UTC s, 0 = now).
        clock_anchor: the wall-clock instant (epoch s) at which the clock reads
            ``clock_start`` (0 = when the service starts); boards and fleets
            started with the same three numbers read the same simulated time.
        poll_s: real seconds between the service's periodic checks (timeouts,
            queued jobs, pending schedules, due deliveries, evening assignment).
        notify_topic: MQTT topic prefix of recipients: a recipient ``r`` gets
            ``<notify_topic>/r`` and acknowledges on ``<notify_topic>/r/ack``.
        notify_retry_s: an unacknowledged delivery is re-sent after this.
        notify_max_attempts: deliveries are given up (logged) after this many sends.
        operator: the recipient that is told about failed reads (H06).
        daily_check_at: local time (report_tz) of the daily missing-data check (D02);
            no later than 08:00.
        recovery_days: days back (before the meter's current day) the check verifies
            and recovery reads name: what a meter still holds (M02: 45).
        recovery_attempts: recovery reads per missing meter-day (D03, D04: 3).
        recovery_retry_s: delay between two recovery reads of the same days.
        read_max_in_flight: on-demand and recovery reads out at once, every worker
            together (the throttle, H09, N05).
        read_rate_per_s: reads started per wall-clock second (a simulated clock's
            ``speed`` seconds), every worker together. 100: N05's 10 % of 5 million
            meters in 83 minutes (20 took 7 hours).
        trouble_at: local time (report_tz) of the daily trouble-report run (D06),
            after the nightly collection window.
        trouble_window_days: the window in which 5 missing days open a trouble
            report (D06).
        offschedule_retry_s, offschedule_attempts: recovery reads of a missed
            non-default schedule read (D07): this many, this far apart.
        rebalance_every_days, rebalance_at: the read-group rebalancing (H03) runs
            every this many days at this local time, over the days since the last run.
        rebalance_late_s: a scheduled read arriving later than this after its
            group's end is late (H03).
        rebalance_over_pct: a group with at least this share of meters late or
            missing is over-committed (H03).
        rebalance_move_pct: share of an over-committed group's meters moved (H03).
        lease_s: how long a worker holds a claimed timed run (the daily check, the
            daily and weekly jobs) and another worker's overdue read jobs stay its
            own; after it, a worker that died is taken over (service clock s).
        retention_days: interval data is kept this long, then dropped by whole
            months (PostgreSQL: month partitions); 0 keeps it forever.
        log_retention_days: activity (third-party and request) logs are kept this
            long; 0 keeps them forever. Never shorter than ``retention_days`` (T06).
        transport: how uplinks reach the workers: ``mqtt`` (MQTT 5 shared
            subscription on ``broker``) or ``nats`` (a NATS JetStream cluster whose
            MQTT listener the meters use; the workers share a durable work-queue
            stream of uplinks: headend/transport/nats.py).
        nats_url: the NATS servers, comma-separated (``nats://host:4222`` or
            ``tls://host:4222``; no password in it). The login is the broker's:
            user, password and CA as for ``broker``.
        nats_stream: the JetStream stream of uplinks (made if missing);
            ``nats_replicas`` copies of it (3 on a 3-node cluster).
        nats_ack_wait_s: an uplink a worker took but did not acknowledge (the
            worker died) goes to another worker after this.
        api_listen: ``HOST:PORT`` of the HTTP API (operator API, third-party
            portal); ``headend serve`` starts it too when set ("": not served).
        api_pki_dir: the `headend pki init` directory whose server certificate
            and key the API serves HTTPS with.
        api_insecure: serve the API over plain HTTP (no TLS; warned in the log as
            ``insecure:``; a lab only).
    """

    broker: str = "mqtts://127.0.0.1:8883"
    mqtt_password_file: str = ""
    mqtt_password: str = field(default="", repr=False)  # a secret: never printed
    mqtt_ca_file: str = ""
    insecure: bool = False
    mqtt_max_queued: int = 1000
    database: str = "sqlite:///var/headend.sqlite"
    share_group: str = "headend"
    session_expiry_s: int = 600
    worker: str = "headend-1"
    report_tz: str = "UTC"
    master_key: str = field(default=DEV_MASTER_KEY, repr=False)  # a secret: never printed
    master_key_file: str = ""
    key_retry_s: int = 300
    realtime_topic: str = "ami/v1/data/{meter}"
    realtime: bool = True
    assign_at: str = "20:00"
    window_start: str = "00:01"
    window_end: str = "08:00"
    group_minutes: int = 20
    group_capacity: int = 250_000
    schedule_ack_timeout_s: int = 900
    ondemand_timeout_s: int = 240
    ondemand_retries: int = 1
    serial: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    speed: float = 1.0
    clock_start: int = 0
    clock_anchor: float = 0.0
    poll_s: float = 1.0
    notify_topic: str = "ami/v1/notify"
    notify_retry_s: int = 60
    notify_max_attempts: int = 60
    operator: str = "operator"
    daily_check_at: str = "06:00"
    recovery_days: int = 45
    recovery_attempts: int = 3
    recovery_retry_s: int = 1800
    read_max_in_flight: int = 500
    read_rate_per_s: int = 100
    trouble_at: str = "08:30"
    trouble_window_days: int = 30
    offschedule_retry_s: int = 600
    offschedule_attempts: int = 3
    rebalance_every_days: int = 7
    rebalance_at: str = "09:00"
    rebalance_late_s: int = 600
    rebalance_over_pct: int = 10
    rebalance_move_pct: int = 10
    lease_s: int = 300
    retention_days: int = 0
    log_retention_days: int = 0
    transport: str = "mqtt"
    nats_url: str = "nats://127.0.0.1:4222"
    nats_stream: str = "AMI_UP"
    nats_replicas: int = 3
    nats_ack_wait_s: int = 30
    api_listen: str = ""
    api_pki_dir: str = "pki"
    api_insecure: bool = False

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.report_tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(f"report_tz: expected an IANA zone, got {self.report_tz!r}") from e
        for name in (
            "assign_at",
            "window_start",
            "window_end",
            "daily_check_at",
            "trouble_at",
            "rebalance_at",
        ):
            parse_hhmm(name, getattr(self, name))
        if parse_hhmm("daily_check_at", self.daily_check_at) > time(8, 0):
            raise ConfigError(
                f"daily_check_at: expected no later than 08:00 (D02), got {self.daily_check_at}"
            )
        try:
            key = bytes.fromhex(self.master_key)
        except ValueError:
            raise ConfigError("master_key: expected 64 hex digits") from None
        if len(key) != 32:
            raise ConfigError(f"master_key: expected 32 bytes, got {len(key)}")
        self.broker_url  # noqa: B018 - parses it: a bad URL is a ConfigError now
        for name in (
            "group_minutes",
            "group_capacity",
            "schedule_ack_timeout_s",
            "ondemand_timeout_s",
            "poll_s",
            "notify_retry_s",
            "notify_max_attempts",
            "session_expiry_s",
            "key_retry_s",
            "mqtt_max_queued",
            "recovery_days",
            "recovery_attempts",
            "recovery_retry_s",
            "read_max_in_flight",
            "read_rate_per_s",
            "offschedule_retry_s",
            "offschedule_attempts",
            "rebalance_every_days",
            "lease_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected > 0, got {getattr(self, name)}")
        if not 5 <= self.trouble_window_days <= 62:
            raise ConfigError(
                f"trouble_window_days: expected 5..62, got {self.trouble_window_days}"
            )
        for name in ("rebalance_over_pct", "rebalance_move_pct"):
            if not 1 <= getattr(self, name) <= 100:
                raise ConfigError(f"{name}: expected 1..100, got {getattr(self, name)}")
        check_retention(self.retention_days, self.log_retention_days)
        if self.rebalance_late_s < 0:
            raise ConfigError(f"rebalance_late_s: expected >= 0, got {self.rebalance_late_s}")
        if self.ondemand_retries < 0 or self.speed <= 0:
            raise ConfigError("ondemand_retries must be >= 0 and speed > 0")
        if self.clock_anchor < 0:
            raise ConfigError(f"clock_anchor: expected epoch s >= 0, got {self.clock_anchor}")
        if not self.notify_topic or "+" in self.notify_topic or "#" in self.notify_topic:
            raise ConfigError(f"notify_topic: expected a topic prefix, got {self.notify_topic!r}")
        for line in self.serial:
            if not isinstance(line.get("url"), str) or not line["url"]:
                raise ConfigError(f"serial: each line needs a url, got {line!r}")
            if line["url"].startswith(("loop://", "rfc2217://", "spy://")):
                # pyserial-asyncio needs a file descriptor to watch; these URLs have none
                raise ConfigError(
                    f"serial: {line['url']!r} cannot be used with asyncio; "
                    "use a device path or socket://host:port"
                )
            if not isinstance(line.get("baud", 19200), int):
                raise ConfigError(f"serial: baud must be an int, got {line!r}")
        if "{meter}" not in self.realtime_topic:
            raise ConfigError("realtime_topic: expected a topic with {meter} in it")
        if self.transport not in ("mqtt", "nats"):
            raise ConfigError(f"transport: expected mqtt or nats, got {self.transport!r}")
        self.nats_servers  # noqa: B018 - parses them: a bad URL is a ConfigError now
        if not self.nats_stream.isidentifier() or not 1 <= self.nats_replicas <= 5:
            raise ConfigError("nats_stream: expected a name (A-Z, 0-9, _); nats_replicas: 1..5")
        if self.nats_ack_wait_s <= 0:
            raise ConfigError(f"nats_ack_wait_s: expected > 0, got {self.nats_ack_wait_s}")

    @property
    def nats_servers(self) -> list[str]:
        """``nats_url`` split; ConfigError for a URL that is not nats:// or tls://, or
        that carries a login (it would show in process lists and logs)."""
        urls = [u.strip() for u in self.nats_url.split(",") if u.strip()]
        if not urls:
            raise ConfigError("nats_url: expected nats://host:port[,nats://host:port...]")
        for u in urls:
            scheme, sep, rest = u.partition("://")
            if not sep or scheme not in ("nats", "tls") or not rest or "/" in rest.rstrip("/"):
                raise ConfigError(
                    f"nats_url: expected nats://host:port or tls://host:port, got {u!r}"
                )
            if "@" in rest:
                raise ConfigError(
                    "nats_url: a login in the URL is refused (it would show in process lists "
                    "and logs): the worker logs in as for broker"
                )
        return urls

    @property
    def broker_url(self) -> BrokerUrl:
        return parse_broker(self.broker, self.insecure)

    @property
    def broker_host_port(self) -> tuple[str, int]:
        u = self.broker_url
        return u.host, u.port

    @property
    def mqtt_user(self) -> str | None:
        """The login: the URL's user, else the worker name; None: anonymous (insecure only)."""
        u = self.broker_url
        if u.user is not None:
            return u.user
        return None if not u.tls and self.insecure else self.worker

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.report_tz)


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtts://user@host:port`` taken apart (never a password: that is not in URLs)."""

    tls: bool
    host: str
    port: int
    user: str | None


def parse_broker(url: str, insecure: bool = False) -> BrokerUrl:
    """Parse the ``broker`` setting; ConfigError if unusable.

    A password in the URL is refused before anything quotes the URL, so no
    message ever carries it.
    """
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.rstrip("/").rpartition("@")
    if ":" in userinfo:
        raise ConfigError(
            "broker: a password in the URL is refused (it would show in process lists and "
            "logs): use mqtt_password_file or AMI_MQTT_PASSWORD"
        )
    if not sep or scheme not in ("mqtts", "mqtt"):
        raise ConfigError(f"broker: expected mqtts://user@host:port, got {url!r}")
    if scheme == "mqtt" and not insecure:
        raise ConfigError(
            f"broker: {url} is plain MQTT (no TLS): use mqtts://, "
            "or set insecure = true (--insecure) for a lab"
        )
    host, colon, port = hostport.rpartition(":")
    if not colon:
        host, port = hostport, ""
    if not host or "/" in host or (at and not userinfo):
        raise ConfigError(f"broker: expected mqtts://user@host:port, got {url!r}")
    try:
        number = int(port) if port else (8883 if scheme == "mqtts" else 1883)
    except ValueError as e:
        raise ConfigError(f"broker: bad port in {url!r}") from e
    if not 0 < number < 65536:
        raise ConfigError(f"broker: bad port in {url!r}")
    return BrokerUrl(scheme == "mqtts", host, number, userinfo if at else None)


def parse_hhmm(name: str, value: str) -> time:
    """`HH:MM` → time, or ConfigError naming the key."""
    try:
        hh, mm = value.split(":")
        return time(int(hh), int(mm))
    except ValueError as e:
        raise ConfigError(f"{name}: expected HH:MM, got {value!r}") from e


def _coerce(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Config)}[name]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind.startswith("tuple"):
            # serial lines: a list of tables, or (env, flags) URLs separated by commas
            items = raw.split(",") if isinstance(raw, str) else raw
            return tuple(
                {"url": i.strip()} if isinstance(i, str) else dict(i) for i in items if i != ""
            )
        return str(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: expected {kind}, got {raw!r}") from e


def load(
    path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> Config:
    """Build the config from defaults, a TOML file, env and explicit overrides.

    Raises:
        ConfigError: unknown keys, unreadable file, or bad values.
    """
    names = {f.name for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {path}: {e}") from e
        table = data.get("headend", data)
        unknown = set(table) - names
        if unknown:
            raise ConfigError(f"config file {path}: unknown keys {sorted(unknown)}")
        values.update({k: _coerce(k, v) for k, v in table.items()})
    environ: Mapping[str, str] = os.environ if env is None else env
    for name in names:
        if f"AMI_{name.upper()}" in environ:
            values[name] = _coerce(name, environ[f"AMI_{name.upper()}"])
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    return Config(**values)


def check_retention(keep_days: int, log_keep_days: int) -> None:
    """T06: logs are kept at least as long as interval data (0: forever). Raises ConfigError."""
    for name, v in (("retention_days", keep_days), ("log_retention_days", log_keep_days)):
        if v < 0:
            raise ConfigError(f"{name}: expected >= 0 (0: keep forever), got {v}")
    if log_keep_days and (not keep_days or log_keep_days < keep_days):
        data = f"{keep_days} days" if keep_days else "forever"
        raise ConfigError(
            f"log_retention_days: expected at least retention_days (T06: logs are kept "
            f"as long as interval data, {data}), got {log_keep_days}"
        )
