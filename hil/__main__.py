"""The HIL rig: `python -m hil COMMAND [options]` (each command has --help).

board      run one virtual board: the real firmware on the MicroPython binary
run        drive a real board on a serial port through a scenario
scenario   run a scenario against broker + head-end + virtual boards
fleet      many simulated meters in one process against the head-end
demo       the main job end to end (what `make demo` runs)
stack      broker + `headend serve` + virtual boards, up until Ctrl-C (`make run`)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "board": "hil.board",
    "run": "hil.realboard",
    "scenario": "hil.scenario",
    "fleet": "hil.fleet",
    "demo": "hil.demo",
    "stack": "hil.stack",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        print(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    rc: int = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
