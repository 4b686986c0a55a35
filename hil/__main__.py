"""The HIL rig: `python -m hil COMMAND`.

demo     one meter end to end on real parts (MicroPython, mosquitto, SQLite)
"""

from __future__ import annotations

import sys

COMMANDS = {"demo": "hil.demo"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    import importlib

    rc: int = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
