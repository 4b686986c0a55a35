"""The probe's one exception root and its named failures (each a clear one-liner)."""

from __future__ import annotations


class ProbeError(Exception):
    """Root of every probe failure; the message is what the operator reads."""


class PortError(ProbeError):
    """The port cannot be opened (a wrong device or URL: a usage error)."""


class LinkLost(ProbeError):
    """The port failed while in use (unplugged, the far end closed)."""


class NoAnswer(ProbeError):
    """The meter did not answer in time (not in front of the head, wrong address...)."""


class LockedOut(ProbeError):
    """The meter's optical port is locked after too many wrong keys."""


class WrongKey(ProbeError):
    """The meter refused the probe key (auth_failed), or its frames do not verify under it."""


class Noisy(ProbeError):
    """The link lost frames and retries did not get a whole download through."""


class KeyFileError(ProbeError):
    """The probe key file is missing, open to others, or not a probe key file."""
