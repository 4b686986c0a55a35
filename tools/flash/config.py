"""`provision`: one meter's config, with its key derived from the site master key.

A config directory (0700, every file 0600) holds

* ``board.json``: what `hal/esp32.py` or `hal/unix.py` reads at boot (meter id,
  broker, interval, channels). For an ESP32 it holds no secret: the key, the
  MQTT password, the CA and the Wi-Fi credentials are in ``secrets.json``,
  which `deploy` writes into NVS (namespace ``ami``) and never copies to the
  board's file system. For the virtual board they are where `hal/unix.py`
  reads them: ``board.json`` (``key``, ``broker.password``) and ``ca.pem``;
* ``provision.json``: the target and the files `deploy` copies.

The meter key is `protocol.auth.meter_key(master, id, 0)`, the MQTT password
`protocol.auth.mqtt_password` of it (SPEC "MQTT"), as the head-end derives them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from headend.errors import ConfigError
from headend.secretfile import read_private, write_private
from protocol.auth import meter_key, mqtt_password
from protocol.codes import ChannelKind, Unit
from tools.flash.errors import FlashError

TARGETS = ("esp32", "unix")
INTERVALS = (300, 600, 900, 1800, 3600)  # the firmware's nominal lengths (firmware/README)
WIFI_KEY_ENV = "AMI_WIFI_KEY"
PROVISION = "provision.json"
SECRETS = "secrets.json"  # ESP32: to NVS, never to the board's file system
CA_FILE = "ca.pem"
NVS_CA_MAX = 2048  # hal/esp32.py reads the CA blob into this many bytes
KEEPALIVE_S = 60


class ProvisionError(FlashError):
    """Bad provisioning input (one line, never a secret)."""


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """``mqtts://host:port`` (TLS, the CA pinned) or ``mqtt://host:port`` (plain)."""
        try:
            u = urlsplit(url)
            port = u.port
        except ValueError:
            port = None
            u = urlsplit("")
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname or port is None:
            raise ProvisionError(f"--broker {url!r}: expected mqtts://host:port (or mqtt://)")
        if u.username or u.password or u.path not in ("", "/") or u.query:
            raise ProvisionError(
                f"--broker {url!r}: only mqtts://host:port (the login is the meter's own)"
            )
        return cls(u.hostname, port, u.scheme == "mqtts")


def parse_channels(text: str) -> list[list[int]]:
    """``Wh:1,Wh:1,varh:1,varh:1`` (unit:multiplier per channel, in ChannelKind order)
    as the meter's channel tuples [kind, unit, multiplier, scaler]."""
    units = {u.symbol.lower(): u for u in Unit}
    out: list[list[int]] = []
    parts = text.split(",")
    if not 1 <= len(parts) <= len(ChannelKind):
        raise ProvisionError(f"--channels {text!r}: 1 to {len(ChannelKind)} channels")
    for kind, part in zip(ChannelKind, parts, strict=False):
        unit, _, mult = part.strip().partition(":")
        if unit.lower() not in units:
            raise ProvisionError(
                f"--channels: unknown unit {unit!r} (one of {', '.join(u.symbol for u in Unit)})"
            )
        if not mult.isdigit() or not 1 <= int(mult) <= 0xFFFF:
            raise ProvisionError(f"--channels: multiplier of {part!r}: expected 1..65535")
        out.append([int(kind), int(units[unit.lower()]), int(mult), 0])
    return out


def read_master_key(path: Path) -> bytes:
    """The site master key from an owner-only file holding 64 hex digits."""
    try:
        text = read_private(path, "--master-key-file")
        key = bytes.fromhex(text)
    except ConfigError as e:
        raise ProvisionError(str(e)) from None
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ProvisionError(f"--master-key-file {path}: expected 64 hex digits")
    return key


def read_wifi_key(path: Path | None) -> str | None:
    """The Wi-Fi key from an owner-only file, else the environment, else None."""
    if path is not None:
        try:
            return read_private(path, "--wifi-key-file")
        except ConfigError as e:
            raise ProvisionError(str(e)) from None
    return os.environ.get(WIFI_KEY_ENV) or None


def read_ca(path: Path) -> bytes:
    """The broker's CA as PEM (the first certificate of the file)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as e:
        raise ProvisionError(f"--ca-file {path}: {e.strerror or e}") from None
    except ValueError:
        raise ProvisionError(f"--ca-file {path}: not a PEM certificate") from None
    return cert.public_bytes(Encoding.PEM)


@dataclass(frozen=True)
class Request:
    """What `provision` was asked (validated by `write`)."""

    target: str
    meter_id: int
    master_key_file: Path
    broker: str
    server_name: str | None = None
    ca_file: Path | None = None
    wifi_ssid: str | None = None
    wifi_key_file: Path | None = None
    channels: str | None = None
    interval_s: int = 900


def build(req: Request) -> tuple[dict[str, Any], dict[str, str], bytes | None]:
    """(board.json, the secrets, the CA PEM) for `req` (ProvisionError)."""
    if req.target not in TARGETS:
        raise ProvisionError(f"--target {req.target!r}: one of {', '.join(TARGETS)}")
    if not 0 <= req.meter_id <= 0xFFFFFFFF:
        raise ProvisionError(f"--meter-id {req.meter_id}: expected 0..4294967295")
    if req.interval_s not in INTERVALS:
        raise ProvisionError(
            f"--interval-s {req.interval_s}: one of {', '.join(map(str, INTERVALS))}"
        )
    broker = Broker.parse(req.broker)
    if broker.tls and req.ca_file is None:
        raise ProvisionError("--broker mqtts://: give --ca-file (the meter pins the broker's CA)")
    if not broker.tls and req.ca_file is not None:
        raise ProvisionError("--ca-file: only with an mqtts:// broker")
    wifi_key = read_wifi_key(req.wifi_key_file)
    if req.target == "unix" and (req.wifi_ssid or req.wifi_key_file):
        raise ProvisionError("--wifi-*: the virtual board (--target unix) has no Wi-Fi")
    if wifi_key and not req.wifi_ssid:
        raise ProvisionError("a Wi-Fi key without --wifi-ssid")
    if req.wifi_ssid is not None and not 1 <= len(req.wifi_ssid.encode()) <= 32:
        raise ProvisionError("--wifi-ssid: 1 to 32 bytes")
    if wifi_key is not None and not 8 <= len(wifi_key.encode()) <= 63:
        raise ProvisionError("the Wi-Fi key: 8 to 63 characters (WPA2)")
    ca = read_ca(req.ca_file) if req.ca_file is not None else None
    key = meter_key(read_master_key(req.master_key_file), req.meter_id, 0)
    password = mqtt_password(key)
    # NVS blob name -> its bytes in hex (hal/esp32.py reads the password as ASCII)
    secrets = {"key": key.hex(), "mqtt_pw": password.encode().hex()}
    br: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": KEEPALIVE_S,
        "user": str(req.meter_id),
    }
    if broker.tls:
        br["tls"] = {"server_name": req.server_name or broker.host}
    cfg: dict[str, Any] = {"meter_id": req.meter_id, "broker": br, "interval_s": req.interval_s}
    if req.channels is not None:
        cfg["channels"] = parse_channels(req.channels)
    if req.target == "unix":  # where hal/unix.py reads them (UNIX.md)
        cfg["key"] = key.hex()
        br["password"] = password
        if broker.tls:
            br["tls"]["ca"] = CA_FILE
    else:
        cfg["pins"] = {
            "pulses": [25, 26, 27, 14],
            "uart": {"id": 2, "tx": 17, "rx": 16, "baud": 19200},
        }
        if ca is not None:
            der = x509.load_pem_x509_certificate(ca).public_bytes(Encoding.DER)
            if len(der) > NVS_CA_MAX:
                raise ProvisionError(f"--ca-file: {len(der)} bytes of DER, NVS holds {NVS_CA_MAX}")
            secrets["ca"] = der.hex()
        if req.wifi_ssid:
            secrets["wifi_ssid"] = req.wifi_ssid.encode().hex()
            if wifi_key:
                secrets["wifi_key"] = wifi_key.encode().hex()
    return cfg, secrets, ca


def write(req: Request, out: Path) -> list[Path]:
    """Write the config directory `out` (0700, files 0600); the files written."""
    cfg, secrets, ca = build(req)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        out.chmod(0o700)
        board_files = ["board.json"]
        write_private(out / "board.json", json.dumps(cfg, indent=1) + "\n")
        written = [out / "board.json"]
        if req.target == "unix" and ca is not None:
            write_private(out / CA_FILE, ca)
            board_files.append(CA_FILE)
            written.append(out / CA_FILE)
        (out / SECRETS).unlink(missing_ok=True)
        if req.target == "esp32":
            write_private(out / SECRETS, json.dumps(secrets, indent=1) + "\n")
            written.append(out / SECRETS)
        meta = {"target": req.target, "meter_id": req.meter_id, "files": board_files}
        write_private(out / PROVISION, json.dumps(meta, indent=1) + "\n")
        written.append(out / PROVISION)
    except OSError as e:
        raise ProvisionError(f"-o {out}: {e.strerror or e}") from None
    return written


@dataclass(frozen=True)
class Config:
    """A provisioned config directory, as `deploy` reads it."""

    path: Path
    target: str
    meter_id: int
    files: list[str]  # copied to the board's file system
    secrets: dict[str, str]  # ESP32: NVS blob name -> hex value (empty for the virtual board)


def load(path: Path) -> Config:
    """The config directory `path` (ProvisionError); its secret files must be 0600."""
    try:
        meta = json.loads((path / PROVISION).read_text())
        target, mid, files = meta["target"], int(meta["meter_id"]), [str(f) for f in meta["files"]]
        if target not in TARGETS or any("/" in f or f.startswith(".") for f in files):
            raise ValueError("target or files")
    except OSError as e:
        raise ProvisionError(f"--config {path}: {e.strerror or e} (provision first)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ProvisionError(f"--config {path}: {PROVISION} is not a provisioned config") from e
    secrets: dict[str, str] = {}
    try:
        for name in files:  # hold the key (virtual board): owner-only, as written
            read_private(path / name, "--config file")
        if target == "esp32":
            secrets = {
                str(k): str(v)
                for k, v in json.loads(read_private(path / SECRETS, "--config secrets")).items()
            }
    except ConfigError as e:
        raise ProvisionError(str(e)) from None
    except (ValueError, AttributeError) as e:
        raise ProvisionError(f"--config {path}: {SECRETS} is unreadable") from e
    return Config(path, target, mid, files, secrets)
