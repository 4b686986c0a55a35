"""The site master key: made once, kept in an owner-only file, loaded checked.

Every meter key (and MQTT password) is derived from it, so the file is the
site's crown jewel: `create` writes 32 random bytes as hex with mode 0600 and
never overwrites; `load` refuses a file group or others may read, and a key
of the wrong size, with one line that says what to do. Nothing here puts key
material in a message.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from headend.config import DEV_MASTER_KEY, Config
from headend.errors import ConfigError
from headend.secretfile import read_private

KEY_LEN = 32


def create(path: Path) -> None:
    """Write a new random master key to ``path`` (0600). Refuses an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: refusing to overwrite a master key") from None
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(secrets.token_bytes(KEY_LEN).hex() + "\n")


def read(path: Path) -> bytes:
    """The key in ``path``. Raises ConfigError (missing, group/world-readable, malformed)."""
    text = read_private(path, "master key file")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_LEN:
        raise ConfigError(f"master key file {path}: expected {2 * KEY_LEN} hex digits")
    return key


def load(config: Config) -> bytes:
    """The master key of ``config``: its file when one is set, else ``master_key``."""
    if config.master_key_file:
        return read(Path(config.master_key_file))
    return bytes.fromhex(config.master_key)


def is_dev(key: bytes) -> bool:
    """True for the all-zero development key."""
    return key == bytes.fromhex(DEV_MASTER_KEY)


def fingerprint(key: bytes) -> str:
    """8 hex digits naming a key (to compare two, never to recover one)."""
    return hashlib.sha256(b"ami-key-fingerprint" + key).hexdigest()[:8]
