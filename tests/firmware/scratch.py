# Scratch files of a test's own, on CPython and on MicroPython (which has no
# tempfile module): a random name under $TMPDIR (or /tmp), removed afterwards,
# so two runs at once (or a file left by a killed run) never meet.
import os


class Scratch:
    """``with Scratch("nor") as path:`` a fresh path; it and ``path + ".erase"``
    (the NOR model's erase counts) are removed on the way out."""

    def __init__(self, name):
        base = (os.getenv("TMPDIR") or "/tmp").rstrip("/")
        tag = int.from_bytes(os.urandom(4), "big")  # (no os.getpid on MicroPython)
        self.path = "%s/ami-test-%s-%08x.bin" % (base, name, tag)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        for p in (self.path, self.path + ".erase"):
            try:
                os.remove(p)
            except OSError:
                pass
        return False
