"""What every benchmark's command line shares: a refusal is one line on stderr.

A missing profile, a store that will not open, a broker that will not start:
the user gets `error: <what>` (library messages folded onto one line) and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

EXIT_REFUSED = 1


def refuse(e: BaseException | str) -> int:
    """Print `error: <e>` as one line on stderr; the exit status to return."""
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return EXIT_REFUSED
