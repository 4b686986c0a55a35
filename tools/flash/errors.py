"""The flash tool's one exception root."""

from __future__ import annotations


class FlashError(Exception):
    """A step cannot be done as asked (a one-line message: what, where, what to do).

    The CLI prints it as ``error: …`` and exits 2; nothing after the failed step runs.
    """
