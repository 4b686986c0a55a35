"""Secrets out of every line the head-end writes: logs, CLI errors.

`redact` replaces what looks like a secret, wherever it sits in a text: the
password of a URL or DSN (``postgresql://user:pw@host``, ``password=pw``),
64-hex-digit keys and 32-hex-digit MQTT passwords (longer hex runs too).
`RedactingFormatter` applies it to whole formatted records (tracebacks
included); `install` puts it on every handler of a logger.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s/:@]*:)[^\s@]*@", re.I)
_KW_PASSWORD = re.compile(r"(?P<head>\bpass(?:word)?\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.I)
_HEX = re.compile(r"(?<![0-9a-f])[0-9a-f]{32,}(?![0-9a-f])", re.I)


def redact(text: str) -> str:
    """``text`` with URL/DSN passwords, keys and MQTT passwords replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _KW_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)
    return _HEX.sub(MASK, text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose every output line went through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def install(logger: logging.Logger, fmt: str | None = None) -> None:
    """Make every handler of ``logger`` redact (keeping its format, or ``fmt``)."""
    for h in logger.handlers:
        old = h.formatter
        if fmt is None and old is not None:
            h.setFormatter(RedactingFormatter(old._fmt, old.datefmt))
        else:
            h.setFormatter(RedactingFormatter(fmt))
