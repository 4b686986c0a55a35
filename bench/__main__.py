"""Benchmarks that print figures: `python -m bench NAME [options]`.

wire         wire size and codec speed per meter-day (protocol)
ingest       head-end ingest rate into the store
flash-wear   flash erase counts and years of service (firmware store)
firmware-heap  firmware heap on the MicroPython binary
heap-map     where the firmware's heap goes, per module (quick, no broker)
"""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "wire": "bench.wire",
    "ingest": "bench.ingest",
    "flash-wear": "bench.flash_wear",
    "firmware-heap": "bench.firmware_heap",
    "heap-map": "bench.heap_map",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print(__doc__, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"unknown benchmark {argv[0]!r}; choose one of {', '.join(BENCHES)}",
                file=sys.stderr,
            )
            return 2
        return 0
    module = importlib.import_module(BENCHES[argv[0]])
    rc: int = module.main(argv[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
