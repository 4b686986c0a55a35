"""Files that hold secrets (keys, passwords): written 0600, refused when others can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from headend.errors import ConfigError

PRIVATE = 0o600


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``data`` to a 0600 file, replaced atomically (never readable by others)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE), "wb") as f:
        f.write(raw)
    os.replace(tmp, path)


def read_private(path: Path, what: str) -> str:
    """The stripped text of a secret file; ConfigError if unreadable or group/world-readable.

    The error names the file and its mode, never its content.
    """
    try:
        mode = path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigError(
                f"{what} {path} is open to group or others (mode {stat.S_IMODE(mode):04o}): "
                f"chmod 600 {path}"
            )
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path}: not text") from e
    if not text:
        raise ConfigError(f"{what} {path} is empty")
    return text
